/**
 * The NBD protocol's numbers (NetworkBlockDevice/nbd doc/proto.md), in its
 * own names. Every field on the wire is big-endian.
 */

/** "NBDMAGIC": the first 8 bytes a server sends. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle negotiation, and the start of every client option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** The start of every option reply. */
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
/** The first 4 bytes of every transmission request a client sends. */
export const REQUEST_MAGIC = 0x25609513;
/** The first 4 bytes of a simple reply (a 16-byte header, then the data of a read). */
export const SIMPLE_REPLY_MAGIC = 0x67446698;
/** The first 4 bytes of each chunk of a structured reply (negotiated with OPT_STRUCTURED_REPLY). */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server, 16 bits) and client flags (32 bits).
/** Handshake flag (server, 16 bits): the server speaks fixed newstyle negotiation. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
/** Handshake flag (server, 16 bits): the server can omit the 124 zero bytes after an OPT_EXPORT_NAME reply. */
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flag (32 bits): the client accepts fixed newstyle negotiation; a server requires it. */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
/** Client flag (32 bits): the client asks the server to omit the 124 zero bytes after OPT_EXPORT_NAME. */
export const FLAG_C_NO_ZEROES = 1 << 1;

// Options.
/** Option 1: select an export by name and end negotiation, with no way to report an error. */
export const OPT_EXPORT_NAME = 1;
/** Option 2: the client ends negotiation and will close the connection. */
export const OPT_ABORT = 2;
/** Option 3: list the exports, one REP_SERVER reply each, then REP_ACK. */
export const OPT_LIST = 3;
/** Option 5: upgrade to TLS; this server does not offer TLS and answers it with REP_ERR_UNSUP. */
export const OPT_STARTTLS = 5;
/** Option 6: describe an export (size, flags, block sizes) without selecting it. */
export const OPT_INFO = 6;
/** Option 7: describe an export like OPT_INFO, then select it and enter transmission. */
export const OPT_GO = 7;
/** Option 8: switch replies to structured chunks, which sparse reads and block status need. */
export const OPT_STRUCTURED_REPLY = 8;
/** Option 9: list the metadata contexts (such as base:allocation) that match the queries sent. */
export const OPT_LIST_META_CONTEXT = 9;
/** Option 10: choose the metadata contexts CMD_BLOCK_STATUS will report on. */
export const OPT_SET_META_CONTEXT = 10;

// Option reply types; errors have bit 31 set.
/** Option reply 1: the option succeeded; the last reply to it. */
export const REP_ACK = 1;
/** Option reply 2: one export of an OPT_LIST answer (name length, name, description). */
export const REP_SERVER = 2;
/** Option reply 3: one piece of export information (an INFO_* type and its payload) for OPT_INFO or OPT_GO. */
export const REP_INFO = 3;
/** Option reply 4: one metadata context (its 32-bit id and its name). */
export const REP_META_CONTEXT = 4;
/** Option error (bit 31 set): the server does not know or implement this option. */
export const REP_ERR_UNSUP = 2 ** 31 + 1;
/** Option error (bit 31 set): the server understood the option but refuses it by policy. */
export const REP_ERR_POLICY = 2 ** 31 + 2;
/** Option error (bit 31 set): the option's data is malformed or its length is wrong. */
export const REP_ERR_INVALID = 2 ** 31 + 3;
/** Option error (bit 31 set): no export has the name asked for. */
export const REP_ERR_UNKNOWN = 2 ** 31 + 6;
/** Option error (bit 31 set): the request or its answer exceeds what the peer accepts. */
export const REP_ERR_TOO_BIG = 2 ** 31 + 9;

// NBD_REP_INFO types.
/** REP_INFO type 0: the export's size in bytes (64 bits) and its transmission flags (16 bits). */
export const INFO_EXPORT = 0;
/** REP_INFO type 1: the export's canonical name. */
export const INFO_NAME = 1;
/** REP_INFO type 2: a human-readable description of the export. */
export const INFO_DESCRIPTION = 2;
/** REP_INFO type 3: the minimum, preferred and maximum block sizes, in bytes (32 bits each). */
export const INFO_BLOCK_SIZE = 3;

// Transmission flags (16 bits).
/** Transmission flag (16 bits): always set, so a client knows the other flags are meaningful. */
export const FLAG_HAS_FLAGS = 1 << 0;
/** Transmission flag: the export refuses writes, trims and write-zeroes with EPERM. */
export const FLAG_READ_ONLY = 1 << 1;
/** Transmission flag: the export accepts CMD_FLUSH. */
export const FLAG_SEND_FLUSH = 1 << 2;
/** Transmission flag: the export honours CMD_FLAG_FUA on writes. */
export const FLAG_SEND_FUA = 1 << 3;
/** Transmission flag: the export accepts CMD_TRIM (discard). */
export const FLAG_SEND_TRIM = 1 << 5;
/** Transmission flag: the export accepts CMD_WRITE_ZEROES. */
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
/** Transmission flag: the export honours CMD_FLAG_DF (a read answered in one chunk). */
export const FLAG_SEND_DF = 1 << 7;
/** Transmission flag: several connections to the export see each other's flushed writes. */
export const FLAG_CAN_MULTI_CONN = 1 << 8;
/** Transmission flag: the export accepts CMD_CACHE. */
export const FLAG_SEND_CACHE = 1 << 10;
/** Transmission flag: the export honours CMD_FLAG_FAST_ZERO on write-zeroes. */
export const FLAG_SEND_FAST_ZERO = 1 << 11;

// Commands and their flags.
/** Command 0: read `length` bytes at `offset`. */
export const CMD_READ = 0;
/** Command 1: write the `length` bytes that follow the request at `offset`. */
export const CMD_WRITE = 1;
/** Command 2: disconnect after the requests in flight are answered; it has no reply. */
export const CMD_DISC = 2;
/** Command 3: make every completed write durable before replying. */
export const CMD_FLUSH = 3;
/** Command 4: discard a range; later reads of it may return anything until it is written. */
export const CMD_TRIM = 4;
/** Command 5: a hint to load a range into a cache; the data is not returned. */
export const CMD_CACHE = 5;
/** Command 6: make a range read as zeroes, unmapping it unless CMD_FLAG_NO_HOLE is set. */
export const CMD_WRITE_ZEROES = 6;
/** Command 7: report the state of a range in each selected metadata context. */
export const CMD_BLOCK_STATUS = 7;
/** Command flag: the write is durable before the reply (force unit access). */
export const CMD_FLAG_FUA = 1 << 0;
/** Command flag on CMD_WRITE_ZEROES: allocate the range instead of punching a hole. */
export const CMD_FLAG_NO_HOLE = 1 << 1;
/** Command flag on CMD_READ: answer in a single data chunk, never fragmented. */
export const CMD_FLAG_DF = 1 << 2;
/** Command flag on CMD_BLOCK_STATUS: one extent per context is enough. */
export const CMD_FLAG_REQ_ONE = 1 << 3;
/** Command flag on CMD_WRITE_ZEROES: fail with ENOTSUP rather than zero the range slowly. */
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured replies.
/** Structured reply flag: this chunk is the last of its reply. */
export const REPLY_FLAG_DONE = 1 << 0;
/** Structured chunk type 0: no payload; only valid as the final chunk. */
export const REPLY_TYPE_NONE = 0;
/** Structured chunk type 1: a 64-bit offset, then the data read there. */
export const REPLY_TYPE_OFFSET_DATA = 1;
/** Structured chunk type 2: a 64-bit offset and a 32-bit length that read as zeroes. */
export const REPLY_TYPE_OFFSET_HOLE = 2;
/** Structured chunk type 5: a context id, then (length, state flags) extent pairs of 32 bits each. */
export const REPLY_TYPE_BLOCK_STATUS = 5;
/** Structured chunk type (bit 15 set): a 32-bit errno and a message for the whole request. */
export const REPLY_TYPE_ERROR = 2 ** 15 + 1;
/** Structured chunk type (bit 15 set): like REPLY_TYPE_ERROR, plus the 64-bit offset that failed. */
export const REPLY_TYPE_ERROR_OFFSET = 2 ** 15 + 2;

// base:allocation states.
/** base:allocation state: the range is not allocated (a hole). */
export const STATE_HOLE = 1 << 0;
/** base:allocation state: the range reads as zeroes. */
export const STATE_ZERO = 1 << 1;
// qemu:dirty-bitmap states.
/** qemu:dirty-bitmap: the range changed since the bitmap was started. */
export const STATE_DIRTY = 1 << 0;

// Errors (errno values the protocol fixes, whatever the platform's).
/** Protocol errno 1: operation not permitted (a write to a read-only export). */
export const EPERM = 1;
/** Protocol errno 5: input/output error, the default for a failure with no closer match. */
export const EIO = 5;
/** Protocol errno 12: the server ran out of memory. */
export const ENOMEM = 12;
/** Protocol errno 22: invalid argument (a bad flag, or a range out of bounds). */
export const EINVAL = 22;
/** Protocol errno 28: no space left for the write. */
export const ENOSPC = 28;
/** Protocol errno 75: a read is larger than the server will answer in one reply. */
export const EOVERFLOW = 75;
/** Protocol errno 95: the operation is not supported (for example a fast zero that would be slow). */
export const ENOTSUP = 95;
/** Protocol errno 108: the server is shutting down and takes no new requests. */
export const ESHUTDOWN = 108;

/** The metadata contexts a server may offer. */
export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
/** qemu:allocation-depth: how deep in the backing chain each range is allocated (0 for unallocated). */
export const CONTEXT_ALLOCATION_DEPTH = 'qemu:allocation-depth';
/** The prefix of a dirty bitmap's context: `qemu:dirty-bitmap:NAME`. */
export const CONTEXT_DIRTY_BITMAP = 'qemu:dirty-bitmap:';
