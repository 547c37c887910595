/**
 * `@img/vmdk` as Node loads it (the package's "node" export condition):
 * the same API as the default entry, with node:zlib's codecs and the
 * worker pool installed for compressed grains, and node:crypto's hashers
 * for OVA manifests.
 */
import { installNodeCodecs } from './codecs.js';
import { installNodeHashers } from './hashers.js';

installNodeCodecs();
installNodeHashers();

export * from '../index.js';
