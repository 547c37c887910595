/**
 * img inspect: what an untrusted image names and whether it is safe to open.
 */
import { qemuJson, qemuStyleKeys } from '../info-human.js';
import { parseArgs } from '../parse-args.js';
import { formatSize } from '@img/block';
import { FileStorage } from '@img/block/node';
import { defaultRegistry } from '../../formats.js';
import { inspectImage } from '../../inspect.js';
import { type Handler, common, outputMode, onePath } from './shared.js';

/** img inspect. */
export const inspect: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'inspect', args: argv, options: { ...common, deep: { type: 'boolean' } }, allowPositionals: true });
  if (values.help) {
    io.stdout(
      'Usage: img inspect [-f fmt] [--deep] [--output=human|json] <file>\n\nInspects an untrusted image without opening anything it names: format (and mismatches),\nvirtual size, backing files, data files, parents, encryption, corruption. --deep also reads every\nallocated byte (finds compressed clusters that inflate wrongly). Exit 0 safe, 2 unsafe.\n\nExample:\n  img inspect -f qcow2 upload.qcow2\n',
    );
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  const storage = await FileStorage.open(path);
  try {
    const report = await inspectImage(storage, { registry: defaultRegistry(), deep: values.deep ?? false, ...(values.f !== undefined ? { format: values.f } : {}) });
    if (mode === 'json') {
      const { info: _info, ...rest } = report;
      io.stdout(qemuJson(qemuStyleKeys({ filename: path, ...rest })) + '\n');
    } else {
      io.stdout(`image: ${path}\nformat: ${report.format ?? 'unknown'}${report.declared && report.declared !== report.format ? ` (declared ${report.declared})` : ''}\n`);
      if (report.virtualSize !== undefined) io.stdout(`virtual size: ${formatSize(report.virtualSize)} (${report.virtualSize} bytes)\n`);
      io.stdout(`safe: ${report.safe ? 'yes' : 'no'}\n`);
      for (const f of report.findings) io.stdout(`  ${f.severity === 'unsafe' ? 'UNSAFE' : 'info'} ${f.code}: ${f.message}\n`);
    }
    return report.safe ? 0 : 2;
  } finally {
    await storage.close();
  }
};
