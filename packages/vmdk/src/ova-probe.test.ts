// probeOva against archives GNU tar writes (gnu long names, pax path records, a VMDK before the OVF), read back by openOva.
import { MemoryStorage, openRaw } from '@img/block';
import { collectBytes, describeWith, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openOva } from './open-ova.js';
import { OVA_PROBE_CERTAIN, OVA_PROBE_TAR, probeOva } from './ova-probe.js';
import { streamVmdk } from './stream.js';

const tmp = tempDir('img-ova-probe-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);
const LONG = 'Windows-Server-2019-Datacenter-Evaluation-Build-17763-Template-for-Lab-Environment-Exported-2024-06-30-final';
const guest = seededBytes(3 * 65536 + 512, 9);

/** The OVF and VMDK for one 1-disk OVA whose members are `<base>.ovf` and `<base>-disk1.vmdk`, written to the temp dir. */
async function members(base: string): Promise<[string, string]> {
  const vmdk = await collectBytes((await streamVmdk(await openRaw(MemoryStorage.from(guest)))).chunks);
  writeFileSync(p(`${base}-disk1.vmdk`), vmdk);
  writeFileSync(
    p(`${base}.ovf`),
    `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="${base}-disk1.vmdk" ovf:id="file1" ovf:size="${vmdk.length}"/></References>
  <DiskSection><Info>d</Info><Disk ovf:capacity="${guest.length}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
  <VirtualSystem ovf:id="vm"><Info>vm</Info><Name>vm</Name></VirtualSystem>
</Envelope>
`,
  );
  return [`${base}.ovf`, `${base}-disk1.vmdk`];
}

function tar(out: string, format: string, files: string[]): Uint8Array {
  const r = spawnSync('tar', [`--format=${format}`, '-cf', out, ...files], { cwd: tmp.path, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return new Uint8Array(readFileSync(p(out)));
}

async function diskOf(bytes: Uint8Array): Promise<Uint8Array> {
  const ova = await openOva(MemoryStorage.from(bytes, { name: 'x.ova' }));
  try {
    return await ova.read(0, ova.size);
  } finally {
    await ova.close();
  }
}

describeWith('tar', 'probeOva: long member names and a VMDK stored first (GNU tar as the writer)', () => {
  it('an .ovf named through a GNU long-name or a pax path record probes as an OVA for certain', async () => {
    const files = await members(LONG);
    for (const format of ['gnu', 'posix']) {
      const bytes = tar(`long-${format}.ova`, format, files);
      // The ustar name field holds a truncated name: the header alone does not end in ".ovf".
      expect(new TextDecoder().decode(bytes.subarray(0, 100)).includes('.ovf'), format).toBe(false);
      expect(probeOva(bytes.subarray(0, 4096)), format).toBe(OVA_PROBE_CERTAIN);
      expect(Buffer.from(await diskOf(bytes)).equals(Buffer.from(guest)), format).toBe(true);
    }
  });

  it('a VMDK stored before the OVF probes as a tar that may be an OVA, and opens; a tar with no .ovf is refused on open', async () => {
    const [ovf, vmdk] = await members('vm');
    for (const format of ['ustar', 'gnu', 'posix']) {
      const bytes = tar(`first-${format}.ova`, format, [vmdk, ovf]);
      expect(probeOva(bytes.subarray(0, 4096)), format).toBe(OVA_PROBE_TAR);
      expect(Buffer.from(await diskOf(bytes)).equals(Buffer.from(guest)), format).toBe(true);
    }
    const plain = tar('plain.tar', 'ustar', [vmdk]);
    expect(probeOva(plain.subarray(0, 4096))).toBe(OVA_PROBE_TAR);
    await expect(diskOf(plain)).rejects.toThrow(/holds no \.ovf descriptor, so it is not an OVA/);
  });

  it('bytes that are not a tar archive probe as 0', async () => {
    const [, vmdk] = await members('z');
    expect(probeOva(new Uint8Array(readFileSync(p(vmdk))).subarray(0, 4096))).toBe(0);
    expect(probeOva(seededBytes(4096, 3))).toBe(0);
    expect(probeOva(new Uint8Array(4096))).toBe(0);
  });
});
