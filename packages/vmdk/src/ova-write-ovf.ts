/**
 * The OVF descriptor of an OVA we write (DMTF DSP0243, OVF 1.x envelope,
 * `http://schemas.dmtf.org/ovf/envelope/1`; valid against DSP8023 1.1).
 * One virtual system with one streamOptimized VMDK disk, laid out as
 * VMware's ovftool and VirtualBox's appliance export write theirs, so that
 * both (and vSphere) import it: References, DiskSection, NetworkSection,
 * then the VirtualSystem with its OperatingSystemSection and a
 * VirtualHardwareSection (CPU, memory, a SCSI or IDE controller, the disk,
 * one network adapter). The RASD elements of each Item are in the order of
 * the CIM schema's sequence (alphabetical), which the schema requires.
 */
import { invalidArg } from '@img/block';
import type { AdapterType } from './new-descriptor.js';

/** The format URL of a streamOptimized VMDK (VMware's, which ovftool and VirtualBox match). */
export const STREAM_OPTIMIZED_FORMAT = 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized';

/**
 * Guest operating systems by VMware guest id, with their CIM_OperatingSystem
 * `OSType` number (DSP0243 OperatingSystemSection `ovf:id`). VMware writes
 * both (`ovf:id` and `vmw:osType`); VirtualBox reads `ovf:id`.
 */
export const OVF_GUEST_OS: Readonly<Record<string, { id: number; description: string }>> = {
  otherGuest: { id: 1, description: 'Other' },
  otherGuest64: { id: 102, description: 'Other 64-Bit' },
  otherLinuxGuest: { id: 36, description: 'Linux' },
  otherLinux64Guest: { id: 101, description: 'Linux 64-Bit' },
  ubuntuGuest: { id: 93, description: 'Ubuntu' },
  ubuntu64Guest: { id: 94, description: 'Ubuntu 64-Bit' },
  debian10_64Guest: { id: 96, description: 'Debian 64-Bit' },
  centos64Guest: { id: 107, description: 'CentOS 64-bit' },
  rhel7_64Guest: { id: 80, description: 'Red Hat Enterprise Linux 64-Bit' },
  freebsd64Guest: { id: 78, description: 'FreeBSD 64-Bit' },
  windows9_64Guest: { id: 121, description: 'Microsoft Windows 10 64-bit' },
  windows9Server64Guest: { id: 117, description: 'Microsoft Windows Server 2016' },
};

/** What the descriptor says. */
export interface OvfWriteDescriptor {
  /** The virtual system's name (also its `ovf:id`). */
  name: string;
  /** The disk member's file name. */
  diskFile: string;
  /** Bytes of the disk member. */
  diskFileSize: number;
  /** Guest size of the disk in bytes. */
  capacity: number;
  /** Bytes of guest data the disk holds (grains written times grain size). */
  populatedSize: number;
  cpus: number;
  /** Memory in MiB. */
  memoryMiB: number;
  /** A key of OVF_GUEST_OS, or a CIM OSType number. */
  os: string;
  /** The controller the disk hangs on (the VMDK's ddb.adapterType). */
  adapterType: AdapterType;
  /** The logical network the adapter connects to. */
  network: string;
  /** `VirtualSystemType` (default "vmx-10": ESXi 5.5 and later, and VirtualBox, import it). */
  virtualSystemType?: string;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** The OVF id and (when known) VMware guest id of `os`; an unknown name is ERR_IMG_INVALID_ARG. */
export function guestOs(os: string): { id: number; osType?: string; description: string } {
  if (/^\d{1,5}$/.test(os) && Number(os) <= 0xffff) return { id: Number(os), description: `CIM OSType ${os}` };
  const known = OVF_GUEST_OS[os];
  if (!known) throw invalidArg('ova', `os "${os}" is not a CIM OSType number or one of ${Object.keys(OVF_GUEST_OS).join(', ')}`, { field: 'os', actual: os });
  return { ...known, osType: os };
}

function item(fields: [string, string | number][]): string {
  return ['      <Item>', ...fields.map(([k, v]) => `        <rasd:${k}>${esc(String(v))}</rasd:${k}>`), '      </Item>'].join('\n');
}

/** The controller Item: SCSI (ResourceType 6, subtype as VMware names it) or IDE (5). */
function controller(adapter: AdapterType, instance: number): string {
  if (adapter === 'ide') {
    return item([
      ['Address', 0],
      ['Description', 'IDE Controller'],
      ['ElementName', 'IDE Controller 0'],
      ['InstanceID', instance],
      ['ResourceSubType', 'PIIX4'],
      ['ResourceType', 5],
    ]);
  }
  const subtype = adapter === 'pvscsi' ? 'VirtualSCSI' : adapter === 'lsilogic' ? 'lsilogic' : 'buslogic';
  return item([
    ['Address', 0],
    ['Description', 'SCSI Controller'],
    ['ElementName', 'SCSI Controller 0'],
    ['InstanceID', instance],
    ['ResourceSubType', subtype],
    ['ResourceType', 6],
  ]);
}

/** The descriptor text (UTF-8 XML). */
export function serializeOvf(d: OvfWriteDescriptor): string {
  const os = guestOs(d.os);
  const id = esc(d.name);
  return `<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by @img/vmdk -->
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="${esc(d.diskFile)}" ovf:id="file1" ovf:size="${d.diskFileSize}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="${d.capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="${STREAM_OPTIMIZED_FORMAT}" ovf:populatedSize="${d.populatedSize}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="${esc(d.network)}">
      <Description>The ${esc(d.network)} network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="${id}">
    <Info>A virtual machine</Info>
    <Name>${id}</Name>
    <OperatingSystemSection ovf:id="${os.id}"${os.osType ? ` vmw:osType="${os.osType}"` : ''}>
      <Info>The kind of installed guest operating system</Info>
      <Description>${esc(os.description)}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>${id}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>${esc(d.virtualSystemType ?? 'vmx-10')}</vssd:VirtualSystemType>
      </System>
${item([
  ['AllocationUnits', 'hertz * 10^6'],
  ['Description', 'Number of Virtual CPUs'],
  ['ElementName', `${d.cpus} virtual CPU(s)`],
  ['InstanceID', 1],
  ['ResourceType', 3],
  ['VirtualQuantity', d.cpus],
])}
${item([
  ['AllocationUnits', 'byte * 2^20'],
  ['Description', 'Memory Size'],
  ['ElementName', `${d.memoryMiB}MB of memory`],
  ['InstanceID', 2],
  ['ResourceType', 4],
  ['VirtualQuantity', d.memoryMiB],
])}
${controller(d.adapterType, 3)}
${item([
  ['AddressOnParent', 0],
  ['ElementName', 'Hard Disk 1'],
  ['HostResource', 'ovf:/disk/vmdisk1'],
  ['InstanceID', 4],
  ['Parent', 3],
  ['ResourceType', 17],
])}
${item([
  ['AddressOnParent', 7],
  ['AutomaticAllocation', 'true'],
  ['Connection', d.network],
  ['Description', `E1000 ethernet adapter on "${d.network}"`],
  ['ElementName', 'Network adapter 1'],
  ['InstanceID', 5],
  ['ResourceSubType', 'E1000'],
  ['ResourceType', 10],
])}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`;
}
