export { serveNbd, type NbdServeOptions, type NbdServer, type NbdCloseOptions } from './server.js';
export { type NbdExport, type NbdDirtyBitmap, type NbdExtent } from './export.js';
export { NbdStorage, type NbdConnectOptions } from './client.js';
export { isNbdUri, parseNbdUri, qemuNbdFilename, type NbdAddress } from './uri.js';
