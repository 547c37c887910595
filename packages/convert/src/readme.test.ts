// The READMEs' TypeScript examples. Every ```ts block of the root README
// and of each package README is type-checked against the shipped types
// (the packages' dist/ declarations, as a user's compiler sees them); the
// root README's blocks are also run as written: each is saved as a module
// beside this package (so its imports resolve) and imported in a scratch
// directory that holds the files it names.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, qemuIo, repoRoot, tempDir } from '@img/testkit';

const tsBlocks = (path: string) => [...readFileSync(path, 'utf8').matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
const blocks = tsBlocks(join(repoRoot, 'README.md'));
const snippetDir = join(repoRoot, 'packages', 'convert', '.readme-snippets');
const work = tempDir('img-readme-');
const startDir = process.cwd();

describe('README examples type-check against the shipped types', () => {
  const readmes = ['README.md', ...['block', 'qcow2', 'vhd', 'vmdk', 'luks', 'convert', 'nbd'].map((p) => join('packages', p, 'README.md'))].filter((p) => existsSync(join(repoRoot, p)));
  const checkDir = join(repoRoot, 'packages', 'convert', '.readme-typecheck');
  afterAll(() => rmSync(checkDir, { recursive: true, force: true }));

  it('compiles every ```ts block with tsc --noEmit', () => {
    rmSync(checkDir, { recursive: true, force: true });
    mkdirSync(checkDir, { recursive: true });
    const files: string[] = [];
    for (const readme of readmes) {
      tsBlocks(join(repoRoot, readme)).forEach((code, i) => {
        const name = `${readme.replace(/[/.]/g, '-')}-${i + 1}.ts`;
        // Each block is a module of its own (top-level await, its own names).
        writeFileSync(join(checkDir, name), `// ${readme}, block ${i + 1}\n${code}\nexport {};\n`);
        files.push(name);
      });
    }
    expect(files.length).toBeGreaterThanOrEqual(5);
    writeFileSync(join(checkDir, 'tsconfig.json'), JSON.stringify({ extends: '../../../tsconfig.base.json', compilerOptions: { noEmit: true, types: ['node'], lib: ['ES2023', 'ESNext.Disposable'] }, files }));
    const tsc = createRequire(import.meta.url)
      .resolve('typescript/package.json')
      .replace(/package\.json$/, 'bin/tsc');
    const r = spawnSync(process.execPath, [tsc, '-p', join(checkDir, 'tsconfig.json')], { encoding: 'utf8' });
    expect(r.stdout + r.stderr, 'tsc output').toBe('');
    expect(r.status).toBe(0);
  });
});

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
