// A vitest reporter that keeps the errors the JSON report leaves out: those
// of a test file itself (an import that throws), of a describe block (a
// beforeAll or afterAll hook that fails or times out) and errors outside any
// test (an unhandled rejection). They are written to
// test-results/errors.json beside vitest.json, where tools/test-summary.mjs
// reads them, so a CI log cut to its tail still says why a file failed.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

/** One error as a line or two: its name, message and the first frame of its stack in our code. */
function describeError(error) {
  const message = `${error?.name ?? 'Error'}: ${error?.message ?? String(error)}`;
  const frame = String(error?.stack ?? '')
    .split('\n')
    .find((l) => /^\s+at /.test(l) && !l.includes('node_modules') && !l.includes('node:internal'));
  return frame ? `${message}\n${frame.trim()}` : message;
}

export default class ErrorsReporter {
  #root = process.cwd();

  onInit(vitest) {
    this.#root = vitest.config.root;
  }

  onTestRunEnd(testModules, unhandledErrors) {
    const errors = [];
    for (const module of testModules) {
      const file = relative(this.#root, module.moduleId);
      for (const e of module.errors()) errors.push({ file, where: 'the file itself', message: describeError(e) });
      for (const suite of module.children.allSuites()) {
        for (const e of suite.errors()) errors.push({ file, where: suite.fullName, message: describeError(e) });
      }
    }
    for (const e of unhandledErrors) errors.push({ file: '', where: 'outside any test', message: describeError(e) });
    const dir = join(this.#root, 'test-results');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'errors.json'), JSON.stringify(errors, null, 2) + '\n');
  }
}
