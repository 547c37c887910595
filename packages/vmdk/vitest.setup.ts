// The package's tests run as Node loads @img/vmdk: with Node's codecs
// (the "node" export condition installs them). web-codecs.test.ts swaps in
// the web platform's for its own cases.
import { installNodeCodecs } from './src/node/codecs.js';

installNodeCodecs();
