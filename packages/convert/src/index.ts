export { convertDisk, parseCreateOptions, type ConvertDiskOptions, type ConvertResult } from './convert.js';
export { builtinDrivers, defaultRegistry } from './formats.js';
export { ovaDriver, probeOva, type OvaDriverOptions } from './ova-driver.js';
export { checkDeclaredFormat, detectFormat, identifyStorage, probeStorage, probeBytes, CONFIDENT, type Identity } from './probe.js';
export { OverlayDiff } from './overlay-diff.js';
export { salvagingDisk, SALVAGE_SECTOR, type SalvageEvent, type SalvageOptions } from './salvage.js';
export { commitDisk, rebaseDisk, type CommitOptions, type CommitResult, type RebaseOptions } from './maintain.js';
export { inspectImage, unsafeSummary, type InspectResult, type InspectOptions, type SafetyFinding, type FindingCode } from './inspect.js';
export { toStream, fromStream, pipeImageStream, copyStreamToDisk, type ToStreamOptions, type StreamCopyOptions, type PipeImageStreamOptions, type NodeWritableLike } from './streams.js';
