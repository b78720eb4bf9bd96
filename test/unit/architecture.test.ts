/**
 * The module graph of src/ has no import cycle, type-only imports included (issue 12): a cycle
 * ties two modules' start-up order together and blocks cutting the tree into folders. madge
 * checks it, exactly as `npm run cycles` does; a planted cycle proves the check sees `.js` imports.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const MADGE = createRequire(import.meta.url).resolve('madge/bin/cli.js');

/** The cycles madge finds under `dir`, each a list of files (madge exits 1 when it finds any). */
function cycles(cwd: string, dir: string): string[][] {
  const run = spawnSync(
    process.execPath,
    [MADGE, '--circular', '--json', '--extensions', 'ts', '--ts-config', 'tsconfig.json', dir],
    {
      cwd,
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  if (run.status !== 0 && run.status !== 1) throw new Error(`madge failed (${run.status}): ${run.stderr}`);
  return JSON.parse(run.stdout) as string[][];
}

describe('import graph', () => {
  it('src has no import cycle', () => {
    expect(cycles(process.cwd(), 'src')).toEqual([]);
  }, 60_000);

  it('the check finds a cycle made of type-only imports written with .js', () => {
    const dir = mkdtempSync(join(tmpdir(), 'exgate-cycle-'));
    try {
      writeFileSync(
        join(dir, 'tsconfig.json'),
        JSON.stringify({ compilerOptions: { module: 'nodenext', strict: true } }),
      );
      writeFileSync(join(dir, 'a.ts'), "import type { B } from './b.js';\nexport interface A { b?: B }\n");
      writeFileSync(join(dir, 'b.ts'), "import { type A } from './a.js';\nexport interface B { a?: A }\n");
      expect(cycles(dir, '.')).toEqual([['a.ts', 'b.ts']]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
