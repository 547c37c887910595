// The README's TypeScript examples, run as written: each ```ts block is
// saved as a module beside this package (so its imports resolve) and
// imported in a scratch directory that holds the files it names.
import { closeSync, mkdirSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, qemuIo, repoRoot, tempDir } from '@img/testkit';

const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
const snippetDir = join(repoRoot, 'packages', 'convert', '.readme-snippets');
const work = tempDir('img-readme-');
const startDir = process.cwd();

describeQemu('README examples', () => {
  beforeAll(() => {
    mkdirSync(snippetDir, { recursive: true });
    process.chdir(work.path);
    qemuImg(['create', '-f', 'qcow2', 'vm.qcow2', '64M']);
    qemuIo('vm.qcow2', 'qcow2', ['write -P 0x42 0 1M']);
    qemuImg(['snapshot', '-c', 'before-upgrade', 'vm.qcow2']);
    qemuImg(['create', '-f', 'qcow2', '-b', 'vm.qcow2', '-F', 'qcow2', 'overlay.qcow2']);
    qemuIo('overlay.qcow2', 'qcow2', ['write -P 0x43 512k 64k']);
    qemuImg(['snapshot', '-c', 'before-upgrade', 'overlay.qcow2']);
  });
  afterAll(() => {
    process.chdir(startDir);
    rmSync(snippetDir, { recursive: true, force: true });
    work.cleanup();
  });

  it('has the examples', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(3);
  });

  blocks.forEach((code, i) => {
    it(`example ${i + 1} runs`, async () => {
      const file = join(snippetDir, `example-${i + 1}.ts`);
      const quiet = code.replace(/console\.log\(/g, '(globalThis as any).__readmeLog(');
      writeFileSync(file, `${quiet}\nexport {};\n`);
      const logged: unknown[][] = [];
      (globalThis as Record<string, unknown>).__readmeLog = (...args: unknown[]) => logged.push(args);
      await import(file);
      if (code.includes('copy.qcow2')) expect(qemuCompare('vm.qcow2', 'copy.qcow2')).toBe(true);
      if (code.includes('new.qcow2')) expect(qemuCheck('new.qcow2', 'qcow2').status).toBe(0);
      if (code.includes('coalesceVhdFile')) {
        // After the coalesce the parent alone holds both sectors.
        const info = qemuImg(['convert', '-O', 'raw', 'base.vhd', 'base.raw']);
        expect(info.status).toBe(0);
        const bytes = Buffer.alloc(1024);
        const fd = openSync('base.raw', 'r');
        readSync(fd, bytes, 0, 1024, 0);
        closeSync(fd);
        expect(bytes.subarray(0, 512).every((b) => b === 1)).toBe(true);
        expect(bytes.subarray(512, 1024).every((b) => b === 2)).toBe(true);
      }
    });
  });
});
