export { VmdkDisk, type VmdkExtentInfo } from './disk.js';
export { openVmdk, type VmdkOpenOptions } from './open.js';
export { createVmdk, vmdkCreateOptionsFrom, flatExtentName, VMDK_CREATE_OPTIONS, VMDK_SUBFORMATS, type VmdkCreateOptions, type VmdkSubformat } from './create.js';
export { streamVmdk, type VmdkStreamOptions } from './stream.js';
export { vmdkDriver, probeVmdk } from './driver.js';
export { ADAPTER_TYPES, type AdapterType } from './new-descriptor.js';
export { parseDescriptor, serializeDescriptor, type VmdkDescriptor, type DescriptorExtent, type DescriptorField, type ExtentAccess, type ExtentType } from './descriptor.js';
export { parseSparseHeader, serializeSparseHeader, SPARSE_HEADER_SIZE, type SparseHeader } from './sparse-header.js';
export { checkVmdk, type VmdkCheckResult, type VmdkProblem, type VmdkProblemCode } from './check.js';
