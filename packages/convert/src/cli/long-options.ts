/**
 * qemu-img 10.1 gave every command long option names (`--format`,
 * `--options`, `--backing-format`, ...) beside the letters 7.2 knows, and
 * spelled create's backing format `-B` (7.2: `-F`). The commands here are
 * written with 7.2's letters; parse-args.ts turns 10.1's spellings into them
 * as it parses a command's arguments, so both are accepted. convert,
 * commit and rebase declare their long names themselves.
 */

/** A command's 10.1 spellings: the spelling, the 7.2 letter it means. */
export const QEMU_LONG_OPTIONS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  info: { '--format': '-f' },
  map: { '--format': '-f' },
  check: { '--format': '-f', '--repair': '-r' },
  compare: { '--a-format': '-f', '--b-format': '-F', '--progress': '-p' },
  create: { '--format': '-f', '--options': '-o', '--backing': '-b', '--backing-format': '-F', '-B': '-F', '--backing-unsafe': '-u' },
  resize: { '--format': '-f' },
  snapshot: { '--format': '-f', '--list': '-l', '--create': '-c', '--apply': '-a', '--delete': '-d' },
  measure: { '--format': '-f', '--target-format': '-O', '--options': '-o' },
  amend: { '--format': '-f', '--options': '-o' },
  dd: { '--format': '-f', '--output-format': '-O' },
  bench: { '--format': '-f', '--cache': '-t', '--count': '-c', '--depth': '-d', '--offset': '-o', '--buffer-size': '-s', '--step-size': '-S', '--write': '-w', '--aio': '-i', '--native': '-n' },
};
