import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AccessFile, appendProblem } from '../../src/runtime/access-file.js';

const dir = mkdtempSync(join(tmpdir(), 'exgate-af-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('appendProblem (exgate check)', () => {
  it('names a parent that is a file, and a path that is a folder; creates nothing', () => {
    writeFileSync(join(dir, 'plain'), '');
    expect(appendProblem(join(dir, 'plain', 'access.log'))).toMatch(/ENOTDIR/);
    expect(appendProblem(dir)).toMatch(/is a directory/);
    // The folder is never made (a recursive mkdir under /proc never returns on Node 20): it must exist.
    expect(appendProblem(join(dir, 'new', 'deeper', 'access.log'))).toMatch(/the folder .*new\/deeper does not exist/);
    expect(() => readFileSync(join(dir, 'new'))).toThrow(/ENOENT/);
    expect(appendProblem(join(dir, 'access.log'))).toBeNull();
  });
});

describe('AccessFile', () => {
  it('appends records in order and closes', async () => {
    mkdirSync(join(dir, 'a'));
    const f = new AccessFile(join(dir, 'a', 'access.log'));
    for (let i = 0; i < 100; i++) f.write(`${i}\n`);
    await f.close();
    expect(readFileSync(join(dir, 'a', 'access.log'), 'utf8')).toBe(
      Array.from({ length: 100 }, (_, i) => `${i}\n`).join(''),
    );
  });

  it('reports a failed write (ENOSPC on /dev/full) instead of throwing, and keeps taking records', async () => {
    const errors: string[] = [];
    const f = new AccessFile('/dev/full', { onWriteError: (e) => errors.push(e.code ?? '') });
    const stderr = process.stderr.write;
    const diverted: string[] = [];
    process.stderr.write = ((chunk: string | Uint8Array) => {
      diverted.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    try {
      f.write('{"n":1}\n');
      await f.drain();
      f.write('{"n":2}\n');
      await f.close();
    } finally {
      process.stderr.write = stderr;
    }
    expect(errors).toEqual(['ENOSPC']);
    expect(diverted.join('')).toBe('{"n":1}\n{"n":2}\n');
  });
});
