// Formatter settings, chosen to match the code as written so that the one formatting commit changes
// as little as possible. printWidth was measured: `prettier --write .` on the tree of 2026-12-02, then
// `git diff --shortstat` (lines added + removed): 80: 26411, 120: 9928, 160: 4251, 200: 2335,
// 240: 2042, 260: 1958, 280: 1948, 300: 1972. The long lines are the house style (one statement per
// line, p99 163 characters), so the smallest diff is at 280; below ~200 the diff grows quickly.
// `pnpm format` rewrites, `pnpm format:check` only checks; `pnpm test` starts with the check.
/** @type {import('prettier').Config} */
export default {
  printWidth: 280,
  tabWidth: 2,
  semi: true,
  singleQuote: true,
  trailingComma: 'all',
  arrowParens: 'always',
};
