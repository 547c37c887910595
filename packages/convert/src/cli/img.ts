/**
 * img: the toolbox. Subcommands are spelled like qemu-img's.
 */
import { runCommand, statusAfterOutput, UsageError, version, type Io } from './common.js';
import { takeQemuObjects } from './qemu-objects.js';
import { parseArgs } from './parse-args.js';

const HELP = `Usage: img <command> [options]

Commands:
  info     [-f fmt] [-U] [--output=human|json] <file>       describe an image
  map      [-f fmt] [-U] [--output=human|json] <file>       show allocation (the extent map)
  check    [-f fmt] [-U] [-r leaks|all] [--output=human|json] <file>
                                                             check consistency (exit 0 clean, 2 corrupt, 3 leaks)
  compare  [-f fmt] [-F fmt] [-U] [-p] [--strict] <a> <b>    compare contents (exit 0 same, 1 different, 2 error)
  create   -f fmt [-o opts] [-b backing -F fmt [-u]] <file> [size]
                                                             create an image
  resize   [-f fmt] [--shrink] <file> [+|-]<size>            change the virtual size ("-10G" needs no "--")
  commit   [-f fmt] [-b base] [-d] [-p] <file>               write an overlay's data into its backing file
                                                             (-b: into an ancestor further down the chain)
  rebase   [-f fmt] [-u] [-c] -b <backing> [-F fmt] <file>   change the backing file (safe unless -u; -c compresses)
  sparsify [-f fmt] [-p] [-S size] <file>                    release data that reads as zeros, in place (VHD, qcow2)
  compact  [-f fmt] [-p] <file>                              shrink the file in place to what it holds (VHD, qcow2)
  snapshot [-q] (-l [-U] | -c | -a | -d <name>) <file>       list, create, apply or delete internal snapshots
  measure  -O fmt [-o opts] [-U] (--size N | <file>)         space a new image needs (qcow2 or raw)
  amend    [-f fmt] -o key=value[,...] <file>                change options in place (qcow2: compat, lazy_refcounts,
                                                             refcount_bits, data_file, size)
  bitmap   (--add | --remove | --clear | --enable | --disable | --merge SRC)... [-g size] [-b file [-F fmt]] <file> <bitmap>
                                                             change persistent dirty bitmaps (qcow2), as qemu-img bitmap
  inspect  [-f fmt] [--output=human|json] <file>            is an untrusted image safe to process? (exit 0 safe, 2 unsafe)
  convert  [-f fmt] [-O fmt] [-n] [-U] [...] <input> <output>
                                                             convert an image, spelled as qemu-img convert
                                                             (or <src-format> <dst-format> <input> <output>, as img-convert)
  dd       [-f fmt] [-O fmt] [bs=N] [count=N] [skip=N] if=<input> of=<output>
                                                             copy a range of an image into a new one, as qemu-img dd
  serve    [-f fmt] [-w] [-k socket | -p port] [-x name] <file>
                                                             export an image over NBD (as qemu-nbd -t)
  bench    [-c count] [-d depth] [-s size] [-S step] [-o offset] [-w] [-U] <file>
                                                             sequential I/O benchmark through the Disk API, as qemu-img bench
  doctor                                                     show the version and which native features are active
                                                             (the same as --version --verbose)

Options are spelled as qemu-img 7.2 spells them, and as 10.1 does (--format, --backing,
--backing-format, create/rebase -B, convert -b, ...): see 'img <command> --help'.

Formats: raw, qcow2, vhd (also called vpc, as qemu-img does), vmdk. -U reads an image a running VM holds (no locks).

Run 'img <command> --help' for a command's options. Sizes take k, M, G, T, P, E suffixes.

Example:
  img info --output=json disk.qcow2
`;

/** The body of img, given its arguments after the command name. */
export async function imgMain(argv: string[], io: Io): Promise<number> {
  return statusAfterOutput('img', io, await imgCommand(argv, io));
}

async function imgCommand(argv: string[], io: Io): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    // As qemu-img: no command is a failed call, said on stderr (stdout stays empty for a script that captures it).
    io.stderr(HELP);
    return 1;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    io.stdout(HELP);
    return 0;
  }
  // -V is qemu-img's short spelling of --version.
  if (name === '--version' || name === '-V') {
    io.stdout(`img ${version()}\n`);
    if (rest.includes('--verbose')) io.stdout((await import('./native-notice.js')).nativeReport());
    return 0;
  }
  if (name === 'doctor') return runCommand('img doctor', rest, io, () => doctor(rest, io));
  // The commands (and with them every format) load here: --help and --version do without them.
  const { commands } = await import('./img-commands.js');
  const handler = Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (!handler) {
    io.stderr(`img: unknown command "${name}"\nimg: try 'img --help'\n`);
    return 1;
  }
  if (name === 'convert') return handler(rest, io);
  return runCommand(`img ${name}`, rest, io, async () => handler(await takeQemuObjects(rest), io));
}

const DOCTOR_HELP = `Usage: img doctor

Shows the versions of img and node, whether the native helper is loaded and where it came from, and which
native features are active: the same as img --version --verbose.

Example:
  img doctor
`;

/** img doctor: the version and the native features; like every command, it takes only the options it has. */
async function doctor(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' }, debug: { type: 'boolean' } }, allowPositionals: true });
  if (values.help) {
    io.stdout(DOCTOR_HELP);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`takes no arguments (got "${positionals[0]}")`);
  io.stdout(`img ${version()}\n`);
  // Which native features this install has and where its helper came from (loads @img/block/node: only when asked).
  io.stdout((await import('./native-notice.js')).nativeReport());
  return 0;
}
