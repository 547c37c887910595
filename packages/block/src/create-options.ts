/**
 * Option tables: each format declares the options its create() (or amend)
 * accepts once, as rows of typed key, qemu-img's `-o` name, a line of help
 * and how to read the `-o` text. The typed functions (`createQcow2`,
 * `createVhd`, ...) speak camelCase only, as their types say; the command
 * line speaks qemu's snake_case and is mapped through the table; the
 * FormatDriver methods, whose options are an untyped record, take either
 * spelling (driverOptions). All of them refuse keys nobody declared, so a
 * typo never turns into a silently ignored option.
 */
import { invalidArg } from './errors.js';
import { parseBool, parseSize } from './size.js';

/** How a value is written after `-o name=`; qemu-img's `-o help` shows the same kinds. */
export type OptionKind = 'str' | 'size' | 'num' | 'bool';

/** One option of a format. */
export interface OptionSpec {
  /** The typed API's key (camelCase): `clusterSize`. */
  key: string;
  /** qemu-img's `-o` name (snake_case): `cluster_size`. */
  name: string;
  kind: OptionKind;
  /** One line for `-o help`. */
  help: string;
  /** Reads the `-o` text; by default the kind decides (size: "64k", bool: on/off, num: a number). */
  parse?: (text: string, name: string) => unknown;
}

/** The options of a format, in the order `-o help` lists them. */
export type OptionTable = readonly OptionSpec[];

/**
 * Keys every create() takes besides its table: the size (in the table as
 * qemu's `size` too) and what the plumbing passes to open a backing file.
 */
export const PLUMBING_CREATE_KEYS: readonly string[] = ['size', 'resolver', 'formats', 'noBacking'];

function readText(spec: OptionSpec, text: string): unknown {
  if (spec.parse) return spec.parse(text, spec.name);
  switch (spec.kind) {
    case 'size':
      return parseSize(text, spec.name);
    case 'bool':
      return parseBool(text, spec.name);
    case 'num': {
      const n = Number(text);
      if (text.trim() === '' || !Number.isFinite(n)) throw invalidArg('options', `invalid value "${text}" for ${spec.name} (a number)`, { field: spec.name });
      return n;
    }
    default:
      return text;
  }
}

/** The `-o` name nobody declared among `names`, or undefined when all are known. */
export function unknownOptionName(table: OptionTable, names: Iterable<string>): string | undefined {
  for (const name of names) if (!table.some((o) => o.name === name)) return name;
  return undefined;
}

/** `-o help` lines: `  cluster_size=<size>  - qcow2 cluster size`, one per option. */
export function optionHelpLines(table: OptionTable): string[] {
  const left = table.map((o) => `${o.name}=<${o.kind === 'bool' ? 'bool (on/off)' : o.kind}>`);
  const width = Math.max(0, ...left.map((l) => l.length));
  return table.map((o, i) => `  ${left[i]!.padEnd(width)} - ${o.help}`);
}

/** The table as `{ name: help }` (FormatDriver.createOptions). */
export function optionHelp(table: OptionTable): Record<string, string> {
  return Object.fromEntries(table.map((o) => [o.name, o.help]));
}

/**
 * Maps `-o` text (`{ cluster_size: '64k' }`, as parsed from
 * `key=value,...`) to typed options (`{ clusterSize: 65536 }`). A name the
 * table does not declare is ERR_IMG_INVALID_ARG in qemu-img's words
 * ("Invalid parameter 'clustr_size'"), with the valid names in `data.expected`.
 */
export function optionsFromText(format: string, table: OptionTable, text: Readonly<Record<string, string>>): Record<string, unknown> {
  const bad = unknownOptionName(table, Object.keys(text));
  if (bad !== undefined) {
    throw invalidArg(format, `Invalid parameter '${bad}' (valid: ${table.map((o) => o.name).join(', ')})`, { field: bad, expected: table.map((o) => o.name) });
  }
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(text)) {
    const spec = table.find((o) => o.name === name)!;
    out[spec.key] = readText(spec, value);
  }
  return out;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** The typed key a misspelt or snake_case `key` most likely meant, if any is close. */
export function suggestOptionKey(table: OptionTable, key: string, extra: readonly string[] = []): string | undefined {
  const exact = table.find((o) => o.name === key || o.key.toLowerCase() === key.toLowerCase());
  if (exact) return exact.key;
  const folded = key.replace(/[-_]/g, '').toLowerCase();
  let best: { key: string; d: number } | undefined;
  const candidates = [
    ...table.flatMap(
      (o) =>
        [
          [o.key, o.key],
          [o.key, o.name],
        ] as const,
    ),
    ...extra.map((k) => [k, k] as const),
  ];
  for (const [typed, spelt] of candidates) {
    const other = spelt.replace(/[-_]/g, '').toLowerCase();
    // An abbreviation ("prealloc") or a longer spelling of a key is as good as a near miss.
    if (folded.length >= 4 && (other.startsWith(folded) || folded.startsWith(other))) return typed;
    const d = editDistance(folded, other);
    if (!best || d < best.d) best = { key: typed, d };
  }
  return best && best.d <= Math.max(2, Math.floor(folded.length / 4)) ? best.key : undefined;
}

/**
 * Refuses typed options that neither the table nor the plumbing declares:
 * ERR_IMG_INVALID_ARG naming the key and, where one is close, the right
 * spelling ("did you mean clusterSize?"), else the keys the call takes
 * (the table's and `extra`). Keys whose value is undefined are ignored.
 * `extra` lists typed keys a function takes beyond its table.
 */
export function checkOptionKeys(format: string, table: OptionTable, options: object, extra: readonly string[] = [], what = 'create option'): void {
  const allowed = new Set([...table.map((o) => o.key), ...PLUMBING_CREATE_KEYS, ...extra]);
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || allowed.has(key)) continue;
    const hint = suggestOptionKey(table, key, [...PLUMBING_CREATE_KEYS, ...extra]);
    // The keys the plumbing passes (a resolver, the format registry, noBacking) are no options to offer a caller.
    const known = [...new Set([...table.map((o) => o.key), ...extra])];
    const tail = hint ? `did you mean ${hint}?` : `known options: ${known.join(', ')}`;
    throw invalidArg(format, `unknown ${what} "${key}" (${tail})`, { field: key, ...(hint ? { expected: hint } : {}) });
  }
}

/** How {@link driverOptions} checks a record of options. */
export interface DriverOptionsCheck {
  /** Typed keys the call takes beyond its table (no `-o` name). */
  extra?: readonly string[];
  /** What the error calls a key: "create option" (default), "stream option". */
  what?: string;
}

/**
 * Options as a FormatDriver method receives them (`create`, `createFresh`,
 * `stream`, `measure`: a record the compiler cannot check, as
 * `convertFile`'s `createOptions`): each key of the table may come as its
 * typed key (`clusterSize`) or as qemu-img's `-o` name (`cluster_size`).
 * Answers a copy under typed keys only; values are left as given (the
 * format reads `'64k'` or `'on'` itself). A key given under both
 * spellings, or one that neither the table, the plumbing nor `extra`
 * declares, is ERR_IMG_INVALID_ARG; the latter names the keys the call
 * takes, in both spellings ("clusterSize (cluster_size)"), or the likely
 * one.
 */
export function driverOptions(format: string, table: OptionTable, options: object, check: DriverOptionsCheck = {}): Record<string, unknown> {
  const { extra = [], what = 'create option' } = check;
  const out: Record<string, unknown> = {};
  const typedKeys = new Set([...table.map((o) => o.key), ...PLUMBING_CREATE_KEYS, ...extra]);
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) continue;
    const spec = typedKeys.has(key) ? undefined : table.find((o) => o.name === key);
    const typed = spec ? spec.key : key;
    if (typed in out) {
      const name = table.find((o) => o.key === typed)?.name ?? typed;
      throw invalidArg(format, `${what} "${typed}" is given twice, as ${typed} and as ${name}`, { field: typed });
    }
    if (!typedKeys.has(typed)) {
      const hint = suggestOptionKey(table, key, extra);
      const known = [...table.map((o) => (o.name === o.key ? o.key : `${o.key} (${o.name})`)), ...extra];
      const tail = hint ? `did you mean ${hint}?` : `known options: ${known.join(', ')}`;
      throw invalidArg(format, `unknown ${what} "${key}" (${tail})`, { field: key, ...(hint ? { expected: hint } : {}) });
    }
    out[typed] = value;
  }
  return out;
}
