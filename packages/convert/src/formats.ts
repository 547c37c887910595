import { FormatRegistry, rawDriver, type FormatDriver } from '@img/block';

/** Drivers the default registry starts with. Format packages add theirs here as they land. */
export const builtinDrivers: FormatDriver[] = [rawDriver];

/** A registry with every built-in format. */
export function defaultRegistry(): FormatRegistry {
  return new FormatRegistry(builtinDrivers);
}
