// npm's `prepare` (run by `npm ci` and `npm install` in the checkout): build dist/ with tsc.
// Without TypeScript (`npm ci --omit=dev`), keep a dist/ built before, or say how to build it;
// `prepare: tsc` failed every production install (issue 10).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
let tsc;
try {
  tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');
} catch {
  tsc = null;                                   // a production install: dev dependencies omitted
}

if (tsc) {
  const built = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
  process.exit(built.status ?? 1);
} else if (existsSync(join(root, 'dist', 'cli.js'))) {
  console.log('exgate: TypeScript is not installed (--omit=dev); keeping the dist/ built before');
} else {
  console.error('exgate: dist/ is not built and TypeScript is not installed (--omit=dev).\n'
    + 'Build it first, then drop the dev dependencies: npm ci && npm prune --omit=dev (README, "Deployment").');
  process.exit(1);
}
