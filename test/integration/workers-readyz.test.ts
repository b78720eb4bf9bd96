/**
 * `workers: 2` with several Exchange servers: the primary's `/readyz` asks for a healthy server only for the
 * services some policy rule allows, as one process does (INTERFACE.md, "Several Exchange servers"), and
 * follows a policy file that changes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { freePort, startHarness, TEST_POLICY, type Harness } from '../helpers/gateway-harness.js';
import { startStandinPool, type StandinPool } from '../helpers/standin-pool.js';

let h: Harness;
let pool: StandinPool;
let child: ChildProcess;
let adminPort: number;
let stderr = '';

beforeAll(async () => {
  h = await startHarness({ directory: 'file' });
  await h.running.close(); // keep the files; serve as processes
  pool = await startStandinPool(2);
  // TEST_POLICY allows no rpc (`deny: all`): a DAG whose RPC is down everywhere is still ready.
  for (const s of pool.standins) s.setHealth('rpc', 'close');
  adminPort = await freePort();
  const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
  Object.assign(config, {
    workers: 2,
    listen: { host: '127.0.0.1', port: await freePort() },
    admin: { host: '127.0.0.1', port: adminPort },
    upstream: {
      servers: pool.urls,
      ca: pool.caFile,
      servername: pool.servername,
      healthCheck: { intervalSeconds: 0.5, timeoutMs: 3000, failures: 1, successes: 1 },
    },
  });
  const file = join(h.dir, 'workers-pool.yaml');
  writeFileSync(file, stringify(config));
  child = spawn(
    process.execPath,
    [join(import.meta.dirname, '..', '..', 'bin', 'exgate.js'), 'serve', '--config', file],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const end = Date.now() + 15_000;
  while ((stderr.match(/"msg":"exgate listening"/g) ?? []).length < 2) {
    if (Date.now() > end) throw new Error(`workers did not start:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
});
afterAll(async () => {
  child?.kill('SIGKILL');
  await pool?.close();
  await h?.close();
});

/** The primary's /readyz once it says `status` (health moves with the probes), or the last answer. */
async function readyz(status: number): Promise<{ status: number; body: Record<string, string> }> {
  const end = Date.now() + 10_000;
  for (;;) {
    const r = await request(`http://127.0.0.1:${adminPort}/readyz`);
    const body = (await r.body.json()) as Record<string, string>;
    if (r.statusCode === status || Date.now() > end) return { status: r.statusCode, body };
    await new Promise((res) => setTimeout(res, 100));
  }
}

describe("workers: the primary's /readyz", () => {
  it('is ready while RPC, which no rule allows, has no healthy server', async () => {
    await new Promise((r) => setTimeout(r, 1500)); // several probe intervals: RPC is out on both servers
    expect(await readyz(200)).toEqual({ status: 200, body: { gateway: 'ok', directory: 'ok', upstream: 'ok' } });
  });

  it('is not ready when an allowed service has no healthy server, naming it', async () => {
    for (const s of pool.standins) s.setHealth('mapi', 'close');
    try {
      const r = await readyz(503);
      expect(r.status).toBe(503);
      expect(r.body.upstream).toBe('no healthy Exchange server for mapi');
    } finally {
      for (const s of pool.standins) s.setHealth('mapi', 'healthy');
    }
    expect((await readyz(200)).status).toBe(200);
  });

  it('follows the policy file: a rule allowing rpc makes RPC count', async () => {
    writeFileSync(
      join(h.dir, 'policy.yaml'),
      `${TEST_POLICY}  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n`,
    );
    const r = await readyz(503);
    expect(r.body.upstream).toBe('no healthy Exchange server for rpc');
  });
});
