/**
 * `workers: 2` whose admin port is taken: the primary exits 1 with one line naming admin.port, before any
 * worker starts (it kept running with a live worker, and printed a bare EADDRINUSE; found in review).
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { freePort, startHarness, type Harness } from '../helpers/gateway-harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ directory: 'file' });
  await h.running.close(); // keep the files; serve as a process
});
afterAll(async () => {
  await h?.close();
});

it('a primary whose admin port is in use exits 1 with one line naming admin.port', async () => {
  const holder = createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
  const taken = (holder.address() as { port: number }).port;
  try {
    const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
    const file = join(h.dir, 'primary-admin.yaml');
    writeFileSync(
      file,
      stringify({
        ...config,
        workers: 2,
        listen: { host: '127.0.0.1', port: await freePort() },
        admin: { host: '127.0.0.1', port: taken },
      }),
    );
    const child = spawn(
      process.execPath,
      [join(import.meta.dirname, '..', '..', 'bin', 'exgate.js'), 'serve', '--config', file],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    const lines = stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`${file}: admin.port: cannot listen on 127.0.0.1:${taken}:`);
    expect(lines[0]).toContain('(EADDRINUSE)');
  } finally {
    holder.close();
  }
}, 30_000);
