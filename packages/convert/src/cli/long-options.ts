/**
 * qemu-img 10.1 gave every command long option names (`--format`,
 * `--options`, `--backing-format`, ...) beside the letters 7.2 knows, and
 * spelled create's backing format `-B` (7.2: `-F`). The commands here are
 * written with 7.2's letters; this table turns 10.1's spellings into them
 * before a command parses its arguments, so both are accepted. convert,
 * commit and rebase declare their long names themselves.
 */

/** A command's 10.1 spellings: the spelling, the 7.2 letter it means. */
export const QEMU_LONG_OPTIONS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  info: { '--format': '-f' },
  map: { '--format': '-f' },
  check: { '--format': '-f', '--repair': '-r' },
  compare: { '--a-format': '-f', '--b-format': '-F', '--progress': '-p' },
  create: { '--format': '-f', '--options': '-o', '--backing': '-b', '--backing-format': '-F', '-B': '-F' },
  resize: { '--format': '-f' },
  snapshot: { '--format': '-f', '--list': '-l', '--create': '-c', '--apply': '-a', '--delete': '-d' },
  measure: { '--format': '-f', '--target-format': '-O', '--options': '-o' },
  amend: { '--format': '-f', '--options': '-o' },
  dd: { '--format': '-f', '--output-format': '-O' },
};

/** The letters that take a value, per command (their next argument is a value, never rewritten). */
const TAKES_VALUE: Readonly<Record<string, string>> = {
  info: 'f',
  map: 'f',
  check: 'fr',
  compare: 'fF',
  create: 'fobF',
  resize: 'f',
  snapshot: 'fcad',
  measure: 'fOo',
  amend: 'fo',
  dd: 'fO',
};

/**
 * `argv` with command's 10.1 spellings turned into 7.2's letters:
 * `--format qcow2` and `--format=qcow2` become `-f qcow2`. Values of
 * options and everything after `--` are left as they are.
 */
export function qemuShortSpellings(command: string, argv: readonly string[]): string[] {
  const table = Object.hasOwn(QEMU_LONG_OPTIONS, command) ? QEMU_LONG_OPTIONS[command]! : undefined;
  if (!table) return [...argv];
  const valued = TAKES_VALUE[command] ?? '';
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      out.push(...argv.slice(i));
      break;
    }
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const short = Object.hasOwn(table, name) ? table[name] : undefined;
    const letter = (short ?? arg).length === 2 && (short ?? arg).startsWith('-') ? (short ?? arg)[1]! : undefined;
    if (short !== undefined) {
      out.push(short);
      if (eq > 0) out.push(arg.slice(eq + 1));
    } else {
      out.push(arg);
    }
    // A letter (or its long name) that takes a value: the next argument is that value, whatever it looks like.
    if (letter !== undefined && valued.includes(letter) && eq < 0 && i + 1 < argv.length) out.push(argv[++i]!);
  }
  return out;
}
