/**
 * img check: consistency check and repair, with qemu-img check's output and exit status.
 */
import { parseArgs } from '../parse-args.js';
import { ImageError, lentStorage, unsupported, type FormatDriver, type Storage } from '@img/block';
import { FileStorage, fileResolverWith } from '@img/block/node';
import { isNbdUri, NbdStorage } from '@img/nbd';
import { checkCacheModes, ExitCode, UsageError } from '../common.js';
import { qdictSorted, qemuFormatName, qemuJson } from '../info-human.js';
import { printfFixed } from '../printf.js';
import { defaultRegistry } from '../../formats.js';
import { imageFormatOf, openImageFile, refusingResolver } from '../../node.js';
import { imageOpenOptions, missingSecretError, type ImageOpts } from '../qemu-objects.js';
import { type Handler, common, shareOption, outputMode, onePath, quietOption, quietIo, refuseWithoutSecret } from './shared.js';

/**
 * Whether the image in `storage` opens and says it is encrypted. The check reads the file's metadata alone and needs
 * no passphrase; an image that does not open here (a corrupt table) is left to the check, which counts what is wrong.
 */
async function opensEncrypted(driver: FormatDriver, storage: Storage, forceShare: boolean): Promise<boolean> {
  let disk;
  try {
    disk = await driver.open(lentStorage(storage), { readOnly: true, noBacking: true, resolver: fileResolverWith({ forceShare }) });
  } catch {
    return false;
  }
  try {
    return (await disk.info?.())?.encrypted === true;
  } finally {
    await disk.close();
  }
}

/**
 * As qemu-img check, which opens the image with its backing chain before it checks anything: a backing file that
 * is missing, does not open, or is encrypted and given no passphrase fails the check (status 1, its reason on
 * stderr), and so does a missing external data file. The check itself reads this file alone; an image that does
 * not open on its own for another reason (a corrupt table) is left to the check, which counts what is wrong, and an
 * image without a backing file is not opened twice.
 */
async function refuseUnopenableChain(path: string, opened: ImageOpts, registry: ReturnType<typeof defaultRegistry>, forceShare: boolean): Promise<void> {
  let backed = false;
  try {
    const top = await openImageFile(path, { ...opened, registry, readOnly: true, noBacking: true, forceShare });
    try {
      // qemu-img reads no VHD chain (a differencing VHD is a disk of its own to it): a VHD's parent is not opened.
      backed = top.format !== 'vhd' && (await top.info?.())?.backingFile !== undefined;
    } finally {
      await top.close();
    }
  } catch (e) {
    // A file the image names that is not there (an external data file) fails the check, as qemu-img's open fails.
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_NOT_FOUND') throw new ExitCode(1, `${e.code}: ${e.message}`);
    return;
  }
  if (!backed) return;
  let disk;
  try {
    disk = await openImageFile(path, { ...opened, registry, readOnly: true, forceShare });
    await refuseWithoutSecret(disk, path, opened);
  } catch (e) {
    if (ImageError.isInstance(e)) throw new ExitCode(1, `${e.code}: ${e.message}`);
    throw e;
  } finally {
    await disk?.close();
  }
}

/** img check. */
export const check: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'check', args: argv, options: { ...common, ...quietOption, ...shareOption, r: { type: 'string' }, T: { type: 'string' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      "Usage: img check [-q] [-f fmt] [-U] [-T src_cache] [-r leaks|all] [--output=human|json] <file>\n\n-T: qemu's cache mode, checked as qemu-img checks it; img picks its own caching.\n\nExit status: 0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 the format has no check (raw).\n\nExample:\n  img check disk.qcow2\n",
    );
    return 0;
  }
  const mode = outputMode(values.output);
  checkCacheModes(undefined, values.T);
  const path = onePath(positionals);
  if (values.r !== undefined && values.r !== 'leaks' && values.r !== 'all') throw new UsageError('-r takes leaks or all');
  if (values.r !== undefined && values['force-share']) throw new UsageError('-U reads without locks: it cannot go with -r, which writes');
  const registry = defaultRegistry();
  // As qemu-img check, which opens the image with the passphrase it is given: a wrong one fails the check (status 1).
  // The check itself needs none (it reads metadata only), and an image that does not open otherwise is left to it.
  const opened = imageOpenOptions(path, values.f);
  if (opened.passphrase !== undefined) {
    try {
      await (await openImageFile(path, { ...opened, registry, noBacking: true, forceShare: values['force-share'] ?? false })).close();
    } catch (e) {
      if (ImageError.isInstance(e) && e.data.field === 'passphrase') throw new ExitCode(1, `${e.code}: ${e.message}`);
    }
  }
  // (--untrusted refuses an image that names another file before it is checked.)
  if (!isNbdUri(path) && !values.untrusted) await refuseUnopenableChain(path, opened, registry, values['force-share'] ?? false);
  const storage = isNbdUri(path) ? await NbdStorage.connect(path, { writable: values.r !== undefined }) : await FileStorage.open(path, { readOnly: values.r === undefined, forceShare: values['force-share'] ?? false });
  let result;
  try {
    // The format comes from the bytes alone (head and tail), as qemu-img check's probe: opening the image to learn it
    // would refuse the very metadata problems check is there to count. The check reads this file only (its chain was
    // opened above only to see that it opens).
    const format = await imageFormatOf(storage, {
      registry,
      untrusted: values.untrusted ?? false,
      forceFormat: values['force-format'] ?? false,
      ...(opened.format !== undefined ? { format: opened.format } : {}),
    });
    const driver = registry.require(format);
    // An encrypted image without its passphrase does not open in qemu-img check (status 1): a luks volume (with it, it
    // has no check: 63), or a qcow2 image encrypted with LUKS or AES (checked with it, as qemu-img does).
    if (opened.passphrase === undefined && (driver.name === 'luks' || (driver.name === 'qcow2' && (await opensEncrypted(driver, storage, values['force-share'] ?? false))))) {
      const e = missingSecretError(driver.name, path);
      throw new ExitCode(1, `${e.code}: ${e.message}`);
    }
    // As qemu-img check: status 63 says the format has no check (scripts tell it from a failed one, 1).
    if (!driver.check) throw new ExitCode(63, `ERR_IMG_UNSUPPORTED: ${unsupported(driver.name, path, 'this format does not support checks').message}`);
    // A VMDK's extent files are the image itself, not its chain: they are opened and checked (a missing one fails the
    // check, as in qemu-img); --untrusted refuses them, so such a check fails rather than passing on the descriptor alone.
    const extents = driver.name === 'vmdk' && !isNbdUri(path) ? { resolver: values.untrusted ? refusingResolver : fileResolverWith({ forceShare: values['force-share'] ?? false }) } : {};
    try {
      result = await driver.check(storage, { ...extents, ...(values.r ? { repair: values.r as 'leaks' | 'all' } : {}) });
    } catch (e) {
      // A check that cannot repair (vmdk): as qemu-img check -r, status 63, the format has no such check; not 1, a failed one.
      if (ImageError.isInstance(e) && e.code === 'ERR_IMG_UNSUPPORTED' && e.data.field === 'repair') throw new ExitCode(63, `${e.code}: ${e.message}`);
      throw e;
    }
  } finally {
    await storage.close();
  }
  // qemu-img prints the per-problem lines (ERROR ..., Leaked cluster ..., Repairing ...) on stderr whatever the
  // output mode and with -q too, before the summary or the JSON object on stdout.
  for (const m of result.messages) io.stderr(m + '\n');
  // Where qemu-img's check stops (a VMDK grain past the end of its file): its one line, no summary or JSON, exit 1.
  if (result.checkFailed) {
    io.stderr(`img check: Check failed: ${result.checkFailed}\n`);
    return 1;
  }
  if (mode === 'json') {
    const out: Record<string, unknown> = {
      filename: path,
      format: qemuFormatName(result.format),
      'check-errors': result.checkErrors,
    };
    if (result.corruptions) out.corruptions = result.corruptions;
    if (result.leaks) out.leaks = result.leaks;
    if (result.corruptionsFixed) out['corruptions-fixed'] = result.corruptionsFixed;
    if (result.leaksFixed) out['leaks-fixed'] = result.leaksFixed;
    // As qemu-img: each of these figures is there only when it is not 0 (an empty image has no allocated-clusters).
    if (result.imageEndOffset) out['image-end-offset'] = result.imageEndOffset;
    if (result.totalClusters) out['total-clusters'] = result.totalClusters;
    if (result.allocatedClusters) out['allocated-clusters'] = result.allocatedClusters;
    if (result.fragmentedClusters) out['fragmented-clusters'] = result.fragmentedClusters;
    if (result.compressedClusters) out['compressed-clusters'] = result.compressedClusters;
    io.stdout(qemuJson(qdictSorted(out)) + '\n');
  } else {
    // As qemu-img check -r: what was repaired, then the result of checking the repaired image again.
    if (result.corruptionsFixed || result.leaksFixed) {
      io.stdout(`The following inconsistencies were found and repaired:\n\n    ${result.leaksFixed ?? 0} leaked clusters\n    ${result.corruptionsFixed ?? 0} corruptions\n\nDouble checking the fixed image now...\n`);
    }
    if (result.corruptions === 0 && result.leaks === 0 && result.checkErrors === 0) io.stdout('No errors were found on the image.\n');
    if (result.corruptions) io.stdout(`\n${result.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`);
    if (result.leaks) io.stdout(`\n${result.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`);
    // qemu-img prints the allocation line only for an image with allocated clusters (the percentages divide by them).
    const { allocatedClusters: allocated, totalClusters: total } = result;
    if (allocated && total) {
      const pct = (n: number | undefined, of: number) => printfFixed((100 * (n ?? 0)) / of, 2);
      io.stdout(`${allocated}/${total} = ${pct(allocated, total)}% allocated, ${pct(result.fragmentedClusters, allocated)}% fragmented, ${pct(result.compressedClusters, allocated)}% compressed clusters\n`);
    }
    if (result.imageEndOffset !== undefined) io.stdout(`Image end offset: ${result.imageEndOffset}\n`);
  }
  if (result.checkErrors) return 1;
  if (result.corruptions) return 2;
  if (result.leaks) return 3;
  return 0;
};
