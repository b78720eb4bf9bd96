// npm's `prepare` (run by `npm ci` and `npm install` in the checkout): build dist/ with tsc.
// Without TypeScript (`npm ci --omit=dev`) it keeps a dist/ built from these sources, and refuses a missing or
// stale one with the way to build it: `prepare: tsc` failed every production install (issue 10).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const built = join(root, 'dist', 'cli.js');
const HOW = 'Build it, then drop the dev dependencies: npm ci && npm prune --omit=dev (README, "Deployment").';

let tsc = null;
try {
  tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');
} catch {
  // a production install: dev dependencies omitted
}

if (tsc) {
  const run = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
  process.exit(run.status ?? 1);
} else if (!existsSync(built)) {
  fail('dist/ is not built');
} else if (newestSource() > statSync(built).mtimeMs) {
  fail('dist/ is older than src/ (a git pull since the last build?)'); // would run the old code
} else {
  console.log('exgate: TypeScript is not installed (--omit=dev); keeping dist/, built from these sources');
}

function fail(why) {
  console.error(`exgate: ${why} and TypeScript is not installed (--omit=dev).\n${HOW}`);
  process.exit(1);
}

/** The newest mtime of the sources (none in a packed tarball, which ships dist/ only). */
function newestSource() {
  const src = join(root, 'src');
  if (!existsSync(src)) return 0;
  const files = readdirSync(src, { recursive: true }).map((f) => join(src, String(f)));
  return Math.max(
    0,
    ...[...files, join(root, 'tsconfig.json'), join(root, 'tsconfig.build.json')]
      .filter((f) => existsSync(f))
      .map((f) => statSync(f).mtimeMs),
  );
}
