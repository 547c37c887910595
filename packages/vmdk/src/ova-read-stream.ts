/**
 * readOvaStream: one disk of an OVA arriving as a byte stream (a pipe),
 * read in archive order with no seek. The `.ovf` must come before the
 * chosen disk (DSP0243 puts it first); the disk member, a streamOptimized
 * VMDK (inflated first where the OVF stores it gzip-compressed,
 * ova-gzip.ts), is decoded as it passes by readVmdkStream. A disk member that came
 * before the OVF, or a disk that is not streamOptimized, is a clean
 * ImageError that says to save the OVA to a file first. The OVF and the
 * disk member are hashed as they pass (every manifest algorithm at once:
 * the manifest comes last and names its algorithm only then); once the
 * disk's data has been handed on, the rest of the archive is read and the
 * `.mf` manifest, if any, checked (ova-stream-manifest.ts): a digest that
 * differs fails the last step of `pieces` with ERR_IMG_UNSAFE, so a
 * consumer that stops at the first error (as img-convert, which then
 * removes its output) never takes the data as good.
 */
import { ByteStreamReader, corrupt, invalidArg, unsupported, type OpenOptions, type StreamSource } from '@img/block';
import { MAX_TAR_MEMBERS, MAX_TAR_EXTENDED_HEADER, applyExtended, confinePath, longNameOf, parsePax, parseTarHeader } from './ova.js';
import { parseManifest, type ManifestEntry } from './ova-manifest.js';
import { checkStreamManifest, MemberDigests } from './ova-stream-manifest.js';
import { MAX_OVF_BYTES, hrefMemberNames, parseOvf, refuseEncoding, type OvfDescriptor } from './ovf.js';
import { readVmdkStream } from './read-stream.js';
import { checkChunk, chunkName } from './ova-chunks.js';
import { hasSparseMagic } from './sparse-header.js';
import { gunzipMember, OVF_GZIP } from './ova-gzip.js';

const NAME = 'stream';
const BLOCK = 512;

/** Options of readOvaStream. */
export interface OvaStreamOptions extends OpenOptions {
  /** Which disk of the OVF's DiskSection to read, counted from 0 (default 0). */
  disk?: number;
  /**
   * Check the `.mf` manifest at the end of the archive (default true: a
   * pipe gives no second chance to check it; false skips the hashing). An
   * explicit true also requires a manifest; `untrusted` requires it to
   * name the disk.
   */
  verifyManifest?: boolean;
}

interface Member {
  name: string;
  size: number;
  at: number;
}

/** The next regular file's header (pax and long-name records applied), or undefined at the end of the archive. */
async function nextMember(r: ByteStreamReader): Promise<Member | undefined> {
  let pax: Map<string, string> | undefined;
  let longName: string | undefined;
  for (let headers = 0; headers < MAX_TAR_MEMBERS * 2; headers++) {
    const pos = r.position;
    const block = await r.upTo(BLOCK);
    if (block.length === 0 || block.every((b) => b === 0)) return undefined;
    if (block.length < BLOCK) throw corrupt('ova', NAME, `the stream ends inside the tar header at ${pos}`, { field: 'header', offset: pos });
    const header = parseTarHeader(block, NAME, pos);
    if (header.type === 'x' || header.type === 'g' || header.type === 'L') {
      if (header.size > MAX_TAR_EXTENDED_HEADER) throw unsupported('ova', NAME, `the extended tar header at ${pos} holds ${header.size} bytes (at most ${MAX_TAR_EXTENDED_HEADER})`, { field: 'size', offset: pos + 124 });
      const body = await r.exact(header.size, 'an extended tar header');
      await r.skipTo(r.position + ((BLOCK - (header.size % BLOCK)) % BLOCK), 'the padding of an extended tar header');
      if (header.type === 'x') pax = parsePax(body, NAME, pos + BLOCK);
      else if (header.type === 'L') longName = longNameOf(body);
      continue;
    }
    const { name, size } = applyExtended(header, pax, longName, NAME, pos);
    pax = undefined;
    longName = undefined;
    if (header.type === '1' || header.type === '2') throw corrupt('ova', NAME, `the tar member "${name}" at ${pos} is a link, which an OVA may not hold`, { field: 'typeflag', offset: pos + 156 });
    const path = confinePath(name, NAME, pos);
    if (header.type === '5') continue;
    if (header.type !== '0' && header.type !== '\0' && header.type !== '7') throw unsupported('ova', NAME, `the tar member "${path}" at ${pos} has type "${header.type}"`, { field: 'typeflag', offset: pos + 156 });
    return { name: path, size, at: r.position };
  }
  throw unsupported('ova', NAME, `the tar holds more than ${MAX_TAR_MEMBERS} members`, { field: 'members' });
}

/** Skips the rest of member `m` and its padding. */
async function skipMember(r: ByteStreamReader, m: Member): Promise<void> {
  const end = m.at + Math.ceil(m.size / BLOCK) * BLOCK;
  await r.skipTo(end, `the tar member "${m.name}"`);
}

/** The next piece of member `m` (at most 1 MiB), hashed into `digests` as it is taken. */
async function memberPiece(r: ByteStreamReader, m: Member, digests: MemberDigests | undefined): Promise<Uint8Array> {
  const end = m.at + m.size;
  const piece = await r.some(Math.min(end - r.position, 1 << 20));
  if (!piece) throw corrupt('ova', NAME, `the stream ends inside "${m.name}" (${end - r.position} of its ${m.size} bytes missing)`, { field: 'size', offset: r.position });
  digests?.update(piece);
  return piece;
}

/**
 * The disk's bytes as they pass: one member, or the chunks of a file split
 * by `ovf:chunkSize` (ova-chunks.ts), which must follow one another in the
 * archive. Each member is hashed on its own (the manifest lists chunks one
 * by one). The state lives here, not in a generator, so that the rest of
 * the disk can still be read after its consumer stopped early.
 */
class DiskMembers {
  readonly members: Member[];
  #r: ByteStreamReader;
  #chunk: { base: string; size: number; fileSize: number | undefined } | undefined;
  #digests: MemberDigests | undefined;
  #hashed: Map<string, MemberDigests> | undefined;
  #done = false;
  /** The member after the last chunk, read to learn the file had ended (a file of whole chunks, ovf:size absent). */
  after: Member | undefined;

  constructor(r: ByteStreamReader, first: Member, chunk: { base: string; size: number; fileSize: number | undefined } | undefined, hashed: Map<string, MemberDigests> | undefined) {
    this.#r = r;
    this.#chunk = chunk;
    this.#hashed = hashed;
    this.members = [];
    this.#start(first);
  }

  #start(m: Member): void {
    if (this.#chunk) checkChunk(m.name, this.members.length, m.size, this.#chunk.size, this.#chunk.fileSize, NAME);
    this.members.push(m);
    this.#digests = this.#hashed ? new MemberDigests() : undefined;
    if (this.#digests) this.#hashed!.set(m.name, this.#digests);
  }

  get #current(): Member {
    return this.members[this.members.length - 1]!;
  }

  /** After a member's last byte: its padding, then the next chunk's header, or the end of the disk. */
  async #advance(): Promise<void> {
    const m = this.#current;
    await skipMember(this.#r, m);
    const c = this.#chunk;
    if (!c || checkChunk(m.name, this.members.length - 1, m.size, c.size, c.fileSize, NAME)) {
      this.#done = true;
      return;
    }
    const next = await nextMember(this.#r);
    const want = chunkName(c.base, this.members.length);
    if (next?.name === want) return this.#start(next);
    // Only a file of whole chunks whose ovf:size is absent may end here; otherwise a chunk is missing or out of order.
    if (c.fileSize !== undefined || m.size !== c.size) {
      throw unsupported('ova', NAME, `the chunk "${want}" does not follow "${m.name}" in the archive${next ? ` ("${next.name}" does)` : ''}; save the OVA to a file first`, { field: 'chunkSize', actual: want });
    }
    this.after = next;
    this.#done = true;
  }

  /** Every byte of the disk, in order, hashed as it passes. */
  async *bytes(): AsyncGenerator<Uint8Array> {
    while (!this.#done) {
      const m = this.#current;
      while (this.#r.position < m.at + m.size) yield await memberPiece(this.#r, m, this.#digests);
      await this.#advance();
    }
  }

  /** Reads (and hashes) what the consumer left unread, to the end of the disk. */
  async finish(): Promise<void> {
    while (!this.#done) {
      const m = this.#current;
      while (this.#r.position < m.at + m.size) await memberPiece(this.#r, m, this.#digests);
      await this.#advance();
    }
  }
}

/**
 * Reads the archive after the disk to its end: the manifest (the first
 * `.mf`) is parsed, other members skipped; answers the manifest and the
 * names of the members passed. `first` is a member whose header the disk
 * reader already took.
 */
async function readTail(r: ByteStreamReader, names: Set<string>, early: ManifestEntry[] | undefined, first?: Member): Promise<ManifestEntry[] | undefined> {
  let manifest = early;
  let pending = first;
  for (;;) {
    const m = pending ?? (await nextMember(r));
    pending = undefined;
    if (!m) return manifest;
    names.add(m.name);
    if (!manifest && isManifest(m)) manifest = await readManifest(r, m);
    await skipMember(r, m);
  }
}

function isManifest(m: Member): boolean {
  return m.name.toLowerCase().endsWith('.mf');
}

/** Reads and parses manifest member `m` (the reader at its data). */
async function readManifest(r: ByteStreamReader, m: Member): Promise<ManifestEntry[]> {
  if (m.size > MAX_OVF_BYTES) throw unsupported('ova', NAME, `the manifest "${m.name}" is ${m.size} bytes (at most ${MAX_OVF_BYTES})`, { field: 'manifest', actual: m.size });
  return parseManifest(new TextDecoder().decode(await r.exact(m.size, 'the manifest')), `${NAME}:${m.name}`);
}

/**
 * Decodes disk `options.disk` of an OVA arriving in order.
 *
 * @example
 * ```ts
 * const source = await readOvaStream(process.stdin, { disk: 0 });
 * for await (const { offset, data } of source.pieces) await disk.write(offset, data);
 * ```
 */
export async function readOvaStream(input: AsyncIterable<Uint8Array>, options: OvaStreamOptions = {}): Promise<StreamSource> {
  const r = new ByteStreamReader(input, 'ova', NAME);
  const verify = options.verifyManifest ?? true;
  const hashed = new Map<string, MemberDigests>();
  try {
    const passed: string[] = [];
    let ovf: OvfDescriptor | undefined;
    for (;;) {
      const m = await nextMember(r);
      if (!m) throw corrupt('ova', NAME, 'the OVA holds no .ovf descriptor', { field: 'ovf' });
      if (!m.name.toLowerCase().endsWith('.ovf')) {
        passed.push(m.name);
        await skipMember(r, m);
        continue;
      }
      if (m.size > MAX_OVF_BYTES) throw unsupported('ova', NAME, `the OVF "${m.name}" is ${m.size} bytes (at most ${MAX_OVF_BYTES})`, { field: 'ovf', actual: m.size });
      const text = await r.exact(m.size, 'the OVF descriptor');
      if (verify) {
        const digests = new MemberDigests();
        digests.update(text);
        hashed.set(m.name, digests);
      }
      ovf = parseOvf(new TextDecoder().decode(text), `${NAME}:${m.name}`);
      passed.push(m.name);
      await skipMember(r, m);
      break;
    }
    const index = options.disk ?? 0;
    if (!Number.isInteger(index) || index < 0 || index >= ovf.disks.length) {
      throw invalidArg('ova', `${NAME}: disk ${index} does not exist (the OVF lists ${ovf.disks.length} disk${ovf.disks.length === 1 ? '' : 's'}, counted from 0)`, { field: 'disk', actual: index });
    }
    const d = ovf.disks[index]!;
    const ref = ovf.files.find((f) => f.id === d.fileRef);
    if (!ref) throw corrupt('ova', NAME, `the OVF disk "${d.diskId}" refers to file "${d.fileRef ?? ''}", which References does not list`, { field: 'fileRef', actual: d.fileRef ?? '' });
    refuseEncoding(ref, NAME);
    const names = hrefMemberNames(ref.href);
    // A file split by ovf:chunkSize starts at its chunk 0.
    const firstNames = ref.chunkSize !== undefined ? names.map((n) => chunkName(n, 0)) : names;
    const href = firstNames.find((n) => passed.includes(n)) ?? firstNames[0]!;
    if (passed.includes(href)) {
      throw unsupported('ova', NAME, `disk "${d.diskId}" ("${href}") comes before the OVF descriptor in the archive, and a stream cannot go back to it; save the OVA to a file first`, { field: 'order', actual: href });
    }
    let disk: Member | undefined;
    // DSP0243 lets the manifest come right after the OVF, before the disks, as well as last.
    let early: ManifestEntry[] | undefined;
    for (;;) {
      const m = await nextMember(r);
      if (!m) throw corrupt('ova', NAME, `the OVF's file "${href}" is not in the OVA`, { field: 'href', actual: href });
      passed.push(m.name);
      if (firstNames.includes(m.name)) {
        disk = m;
        break;
      }
      if (verify && !early && isManifest(m)) early = await readManifest(r, m);
      await skipMember(r, m);
    }
    if (ref.chunkSize === undefined && ref.size !== undefined && ref.size !== disk.size) throw corrupt('ova', NAME, `the OVF says "${href}" holds ${ref.size} bytes, the tar member holds ${disk.size}`, { field: 'size', expected: ref.size, actual: disk.size });
    const base = names[firstNames.indexOf(disk.name)]!;
    const diskMembers = new DiskMembers(r, disk, ref.chunkSize !== undefined ? { base, size: ref.chunkSize, fileSize: ref.size } : undefined, verify ? hashed : undefined);
    // A gzip member (ovf:compression="gzip") is inflated as it passes; what is hashed is the member as stored.
    const bytes = ref.compression === OVF_GZIP ? gunzipMember(diskMembers.bytes(), { file: NAME, member: ref.chunkSize !== undefined ? base : disk.name }) : diskMembers.bytes();
    const head = await bytes.next();
    const first = head.done ? new Uint8Array(0) : head.value;
    if (first.length >= 4 && !hasSparseMagic(first)) {
      throw unsupported('ova', NAME, `disk "${d.diskId}" ("${href}") is not a streamOptimized VMDK; only those can be read from a stream (save the OVA to a file first)`, { field: 'format', actual: d.format ?? '' });
    }
    async function* rest(): AsyncGenerator<Uint8Array> {
      yield first;
      yield* bytes;
    }
    // The disk is what the member holds, whatever capacity the OVF gives it (as openOva).
    const vmdk = await readVmdkStream(rest(), options);
    async function* pieces(): AsyncGenerator<{ offset: number; data: Uint8Array }> {
      try {
        yield* vmdk.pieces;
        if (!verify) return;
        await diskMembers.finish();
        const names = new Set([...passed, ...diskMembers.members.map((m) => m.name)]);
        const manifest = await readTail(r, names, early, diskMembers.after);
        if (!manifest) {
          if (options.verifyManifest) throw corrupt('ova', NAME, 'a manifest check was asked for, but the OVA holds no .mf file', { field: 'manifest' });
          return;
        }
        checkStreamManifest(manifest, { hashed, names, disk: diskMembers.members.map((m) => m.name) }, NAME, options.untrusted ?? false);
      } finally {
        await r.cancel();
      }
    }
    return { size: vmdk.size, pieces: pieces() };
  } catch (e) {
    await r.cancel();
    throw e;
  }
}
