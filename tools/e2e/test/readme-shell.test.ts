// The README's command-line examples, run verbatim, line by line, in a
// directory holding the files they name. `pnpm -s img ...` is the root
// package's script `node packages/convert/dist/bin/img.js ...`, run from the
// repository root; here the same bins run from the scratch directory, so a
// shell function stands for pnpm's script lookup and nothing else changes.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeQemu, holdWithQemuIo, qemuImg, qemuIo, repoRoot } from '@img/testkit';
import { userShell } from './user.js';

const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!).filter((b) => /^(?:cat .*\| )?pnpm -s img/m.test(b));
const PNPM = 'pnpm() { [ "$1" = -s ] && shift; local cmd=$1; shift; case $cmd in img|img-convert) "$cmd" "$@";; *) echo "not a README command: $cmd" >&2; return 127;; esac; }';

function prepare(at: (name: string) => string): void {
  const mb = 2 ** 20;
  qemuImg(['create', '-f', 'qcow2', at('base.qcow2'), '64M']);
  qemuIo(at('base.qcow2'), 'qcow2', ['write -P 0x11 0 4M']);
  qemuImg(['convert', '-O', 'qcow2', at('base.qcow2'), at('new-base.qcow2')]);
  qemuImg(['convert', '-O', 'qcow2', at('base.qcow2'), at('renamed-base.qcow2')]);
  qemuImg(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('overlay.qcow2')]);
  qemuIo(at('overlay.qcow2'), 'qcow2', ['write -P 0x22 1M 1M']);
  qemuImg(['create', '-f', 'qcow2', at('vm.qcow2'), '64M']);
  qemuIo(at('vm.qcow2'), 'qcow2', ['write -P 0x33 0 2M']);
  qemuImg(['snapshot', '-c', 'before-upgrade', at('vm.qcow2')]);
  qemuImg(['create', '-f', 'vpc', at('in.vhd'), '32M']);
  qemuIo(at('in.vhd'), 'vpc', ['write -P 0x44 0 1M']);
  qemuImg(['create', '-f', 'raw', at('disk.img'), '64M']);
  qemuIo(at('disk.img'), 'raw', ['write -P 0x55 8M 4M']);
  qemuImg(['convert', '-O', 'qcow2', at('disk.img'), at('disk.qcow2')]);
  qemuImg(['create', '-f', 'raw', at('new.img'), '64M']);
  qemuIo(at('new.img'), 'raw', ['write -P 0x11 0 4M', 'write -P 0x66 16M 1M']);
  qemuImg(['convert', '-O', 'qcow2', at('disk.img'), at('upload.qcow2')]);
  qemuImg(['convert', '-O', 'raw', at('disk.img'), at('a.img')]);
  qemuImg(['convert', '-O', 'qcow2', at('disk.img'), at('b.qcow2')]);
  qemuImg(['create', '-f', 'raw', at('existing.raw'), String(64 * mb)]);
  qemuImg(['create', '-f', 'qcow2', at('running-vm.qcow2'), '64M']);
}

describeQemu('README command lines, verbatim', () => {
  it('has command-line examples', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(3);
  });

  blocks.forEach((block, i) => {
    it(`block ${i + 1}: every line succeeds and every image it writes passes qemu-img check`, async () => {
      const user = userShell(`img-readme-sh-${i}-`);
      try {
        prepare(user.path);
        // The example that reads an image a running VM holds gets a running holder.
        const vm = await holdWithQemuIo(user.path('running-vm.qcow2'), { format: 'qcow2' });
        try {
          for (const line of block.split('\n')) {
            if (!line.trim() || line.trim().startsWith('#')) continue;
            const r = user.sh(`${PNPM}\n${line}`);
            expect(r.status, `${line}\n${r.stderr}`).toBe(0);
          }
        } finally {
          await vm.stop();
        }
        for (const name of readdirSync(user.dir).filter((n) => n.endsWith('.qcow2'))) {
          const c = qemuImg(['check', user.path(name)], { allowFail: true });
          expect(c.status, `${name}: ${c.stdout}${c.stderr}`).toBe(0);
        }
        if (block.includes('disk.vhd')) expect(qemuImg(['compare', user.path('disk.qcow2'), user.path('disk.vhd')], { allowFail: true }).status).toBe(0);
      } finally {
        user.cleanup();
      }
    });
  });
});
