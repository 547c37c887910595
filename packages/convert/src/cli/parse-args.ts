/**
 * The commands' argument parser: Node's `parseArgs` after two rewrites
 * that make the command line read as qemu-img's does.
 *
 * - Long options may be shortened to any unambiguous prefix, as getopt_long
 *   (and so qemu-img) allows: `--back` is `--backing-chain` for `img info`.
 *   A prefix of several names is refused, naming them.
 * - A command's qemu-img 10.1 long spellings (`--format`, `--options`, ...)
 *   become the 7.2 letters the command declares (see long-options.ts).
 */
import { parseArgs as nodeParseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './common.js';
import { QEMU_LONG_OPTIONS } from './long-options.js';

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * `argv` with every long option that is an unambiguous prefix of one of
 * `names` written out in full. Values of options that take one, and all
 * that follows `--`, are left alone; an exact name always wins over longer
 * names it is a prefix of. An option named in `spellings` (a command's
 * qemu-img 10.1 spellings, `--format` or `-B`) becomes the letter it
 * stands for, with an attached value split off as the next argument.
 */
export function expandLongPrefixes(argv: readonly string[], names: readonly string[], takesValue: (name: string) => boolean = () => false, shortTakesValue: (letter: string) => boolean = () => false, spellings: Readonly<Record<string, string>> = {}): string[] {
  const spelling = (option: string): string | undefined => (Object.hasOwn(spellings, option) ? spellings[option] : undefined);
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (arg.startsWith('--') && arg.length > 2) {
      const eq = arg.indexOf('=');
      const given = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
      let name = given;
      if (!names.includes(given)) {
        const matches = names.filter((n) => n.startsWith(given));
        if (matches.length > 1) throw new UsageError(`option '--${given}' is ambiguous; possibilities: ${matches.map((m) => `'--${m}'`).join(' ')}`);
        if (matches.length === 1) name = matches[0]!;
      }
      const letter = spelling(`--${name}`);
      // As getopt_long: an option that takes a value takes the next argument even if it starts with a dash
      // (`--size -1`), attached here so that Node's parser does not read it as an option.
      const value = eq > 0 ? arg.slice(eq + 1) : takesValue(name) && i + 1 < argv.length ? argv[++i]! : undefined;
      const dashed = value?.startsWith('-') === true;
      if (letter !== undefined) {
        // A 10.1 long spelling: the 7.2 letter, with its value as the next argument (attached if it starts with a dash).
        if (dashed) out.push(`${letter}${value}`);
        else out.push(letter, ...(value === undefined ? [] : [value]));
      } else if (dashed || eq > 0) {
        out.push(`--${name}=${value}`);
      } else {
        out.push(name === given ? arg : `--${name}`, ...(value === undefined ? [] : [value]));
      }
      continue;
    }
    const letters = spelling(arg) ?? arg;
    out.push(letters);
    // -x VALUE, or a group such as -Uf VALUE: the value is the next argument when the letter that takes it comes last
    // (attached, as getopt takes it even if it starts with a dash: -S -1).
    if (arg.startsWith('-') && arg.length > 1 && arg !== '-') {
      for (let k = 1; k < letters.length; k++) {
        if (!shortTakesValue(letters[k]!)) continue;
        if (k === letters.length - 1 && i + 1 < argv.length) {
          const value = argv[++i]!;
          if (value.startsWith('-')) out[out.length - 1] = `${letters}${value}`;
          else out.push(value);
        }
        break;
      }
    }
  }
  return out;
}

/** Node's parseArgs config, plus the img command whose qemu-img 10.1 long spellings apply (none for img-convert). */
export type CommandArgsConfig<T extends ParseArgsConfig> = T & { command?: string };

/** Node's `parseArgs`, after the prefix expansion and the 10.1 spellings of `config.command`. */
export function parseArgs<T extends ParseArgsConfig>(config: CommandArgsConfig<T>): ReturnType<typeof nodeParseArgs<T>> {
  const { command, ...rest } = config;
  const options: Options = rest.options ?? {};
  const table = command !== undefined && Object.hasOwn(QEMU_LONG_OPTIONS, command) ? QEMU_LONG_OPTIONS[command]! : {};
  const aliases = Object.keys(table)
    .filter((k) => k.startsWith('--'))
    .map((k) => k.slice(2));
  const own = Object.keys(options).filter((k) => k.length > 1);
  const names = [...new Set([...own, ...aliases])];
  const letterTakesValue = (letter: string): boolean => {
    const alias = table[`-${letter}`];
    if (alias !== undefined && alias !== `-${letter}`) return letterTakesValue(alias.slice(1));
    for (const o of Object.values(options)) if (o.short === letter) return o.type === 'string';
    return Object.hasOwn(options, letter) && options[letter]!.type === 'string';
  };
  const takesValue = (name: string): boolean => {
    if (Object.hasOwn(options, name)) return options[name]!.type === 'string';
    const alias = table[`--${name}`];
    return alias !== undefined && letterTakesValue(alias.slice(1));
  };
  const args = expandLongPrefixes(rest.args ?? process.argv.slice(2), names, takesValue, letterTakesValue, table);
  return nodeParseArgs({ ...rest, args } as unknown as T);
}
