/**
 * `@img/vmdk` as Node loads it (the package's "node" export condition):
 * the same API as the default entry, with node:zlib's codecs and the
 * worker pool installed for compressed grains.
 */
import { installNodeCodecs } from './codecs.js';

installNodeCodecs();

export * from '../index.js';
