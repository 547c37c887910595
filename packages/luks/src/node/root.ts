/**
 * `@img/luks` as Node loads it (the package's "node" export condition):
 * the same API as the default entry, with node:crypto's primitives
 * installed (OpenSSL's AES and PBKDF2, faster than the pure-JS ones every
 * platform has from the start).
 */
import { installNodeCryptoPrimitives } from '@img/qcow2/node';

installNodeCryptoPrimitives();

export * from '../index.js';
