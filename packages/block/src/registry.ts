import { unknownFormatError } from './errors.js';
import type { FormatDriver, FormatRegistryLike, ProbeResult } from './disk.js';

/**
 * The set of formats a tool knows. `@img/convert` builds one with every
 * format; a format package builds a small one (itself and raw) for its
 * backing files when the caller gives none.
 */
export class FormatRegistry implements FormatRegistryLike {
  #drivers = new Map<string, FormatDriver>();
  #aliases = new Map<string, string>();

  constructor(drivers: Iterable<FormatDriver> = []) {
    for (const d of drivers) this.register(d);
  }

  register(driver: FormatDriver): this {
    this.#drivers.set(driver.name, driver);
    for (const a of driver.aliases ?? []) this.#aliases.set(a, driver.name);
    return this;
  }

  /** The driver for a name or alias, or undefined. */
  get(name: string): FormatDriver | undefined {
    return this.#drivers.get(name) ?? this.#drivers.get(this.#aliases.get(name) ?? '');
  }

  /** The driver for a name or alias; throws ERR_IMG_UNKNOWN_FORMAT listing the known ones. */
  require(name: string): FormatDriver {
    const d = this.get(name);
    if (!d) {
      throw unknownFormatError(name, this.names());
    }
    return d;
  }

  names(): string[] {
    return [...this.#drivers.keys()];
  }

  drivers(): FormatDriver[] {
    return [...this.#drivers.values()];
  }

  /** Every format's score for these bytes, best first; formats scoring 0 are left out. */
  probe(head: Uint8Array, size: number, tail?: Uint8Array): ProbeResult[] {
    const results: ProbeResult[] = [];
    for (const d of this.#drivers.values()) {
      const score = d.probe(head, size, tail);
      if (score > 0) results.push({ format: d.name, score });
    }
    return results.sort((a, b) => b.score - a.score);
  }
}
