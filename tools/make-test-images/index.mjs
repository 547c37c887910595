#!/usr/bin/env node
// Regenerates test-images/ deterministically with qemu-img/qemu-io and
// writes test-images/MANIFEST.json: per file its format, virtual size, the
// sha256 of its `qemu-img convert -O raw` export and its qemu-img map.
//
//   node tools/make-test-images/index.mjs            all formats
//   node tools/make-test-images/index.mjs --only qcow2
//
// A recipe: { file, format, description, build({ path, dir, qemuImg, qemuIo }),
//   snapshots?: boolean, expect?: object, manifest?: boolean }
// Recipes run in order, so an overlay's recipe can follow its backing file's.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemuImg, qemuInfo, qemuIo, qemuMap, qemuVersion, rawSha256 } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const imagesDir = join(root, 'test-images');
const manifestPath = join(imagesDir, 'MANIFEST.json');

const FORMATS = ['raw', 'qcow2', 'vhd', 'vmdk'];

async function loadRecipes(format) {
  const module = join(here, `${format}.mjs`);
  if (!existsSync(module)) return [];
  return (await import(module)).recipes;
}

async function main() {
  const args = process.argv.slice(2);
  const onlyAt = args.indexOf('--only');
  const only = onlyAt >= 0 ? args[onlyAt + 1].split(',') : FORMATS;
  const old = existsSync(manifestPath) ? JSON.parse(readFileSync(manifestPath, 'utf8')) : { images: [] };
  const kept = old.images.filter((e) => !only.includes(e.file.split('/')[0]));
  const made = [];
  for (const format of only) {
    const recipes = await loadRecipes(format);
    if (!recipes.length) continue;
    rmSync(join(imagesDir, format), { recursive: true, force: true });
    mkdirSync(join(imagesDir, format), { recursive: true });
    for (const recipe of recipes) {
      const path = join(imagesDir, recipe.file);
      mkdirSync(dirname(path), { recursive: true });
      process.stderr.write(`making ${recipe.file}\n`);
      await recipe.build({ path, dir: dirname(path), root: imagesDir, qemuImg, qemuIo });
      if (recipe.manifest === false) continue;
      const info = qemuInfo(path, recipe.qemuFormat ?? recipe.format);
      const entry = {
        file: recipe.file,
        format: recipe.format,
        description: recipe.description,
        virtualSize: info['virtual-size'],
        sha256: await rawSha256(path, recipe.qemuFormat ?? recipe.format),
        map: qemuMap(path, recipe.qemuFormat ?? recipe.format),
      };
      if (info.snapshots?.length) {
        entry.snapshots = [];
        for (const s of info.snapshots) {
          entry.snapshots.push({
            id: s.id,
            name: s.name,
            // qemu-img info does not print a snapshot's disk size, and convert -l exports at the
            // current size: the manifest records the size the export has.
            virtualSize: info['virtual-size'],
            sha256: await rawSha256(path, recipe.qemuFormat ?? recipe.format, s.id),
          });
        }
      }
      if (recipe.expect) entry.expect = recipe.expect;
      made.push(entry);
    }
  }
  const images = [...kept, ...made].sort((a, b) => a.file.localeCompare(b.file));
  const manifest = { version: 1, generator: 'tools/make-test-images', qemu: qemuVersion(), images };
  writeFileSync(manifestPath, JSON.stringify(manifest, null, 1) + '\n');
  process.stderr.write(`wrote ${images.length} entries to test-images/MANIFEST.json\n`);
}

await main();
