export { serveNbd, type NbdServeOptions, type NbdServer } from './server.js';
export { type NbdExport } from './export.js';
