/**
 * `exgate check` with several Exchange servers (issue 14): every server reached and trusted, every health
 * page probed once, the table printed; a failing page is a warning, a server that cannot be reached a problem.
 * Three stand-ins of one DAG: one healthy, one whose pages fail each way Exchange's can, one killed.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import type { ExchangeStandin } from '../../src/standin/exchange.js';
import { startHarness, type Harness } from '../helpers/gateway-harness.js';
import { startStandinPool, type StandinPool } from '../helpers/standin-pool.js';

const run = promisify(execFile);
const EXGATE = join(import.meta.dirname, '..', '..', 'bin', 'exgate.js');

async function check(file: string): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await run(process.execPath, [EXGATE, 'check', '--config', file, '--as-user', 'root'], {
      timeout: 30_000,
    });
    return { code: 0, stdout };
  } catch (err) {
    const e = err as { code: number; stdout: string };
    return { code: e.code, stdout: e.stdout };
  }
}

describe('exgate check with several Exchange servers', () => {
  let h: Harness;
  let pool: StandinPool;
  let file: string;
  beforeAll(async () => {
    // The harness's own gateway keeps its one stand-in: nothing but `check` asks the pool anything.
    h = await startHarness({ directory: 'file' });
    pool = await startStandinPool(3);
    const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
    config.upstream = {
      servers: pool.urls,
      ca: pool.caFile,
      servername: pool.servername,
      // Generous: 27 TLS probes at once on a shared test machine; the `hang` page costs it once.
      healthCheck: { intervalSeconds: 1, timeoutMs: 2500, failures: 2, successes: 2 },
    };
    file = join(h.dir, 'pool.yaml');
    writeFileSync(file, stringify(config));
  });
  afterAll(async () => {
    await h?.close();
    await pool?.close();
  });

  const standin = (i: number) => () => pool.standins[i] as ExchangeStandin;
  const [ex1, ex2, ex3] = [standin(0), standin(1), standin(2)];
  const key = (s: ExchangeStandin) => `127.0.0.1:${s.port}`;

  it('prints the table; a failing page is a warning, a killed server a problem (exit 1)', async () => {
    ex2().setHealth('mapi', 'close');
    ex2().setHealth('ews', 'status', 503);
    ex2().setHealth('oab', 'hang');
    await ex3().kill();
    const r = await check(file);
    expect(r.code, r.stdout).toBe(1);
    const lines = r.stdout.split('\n');
    expect(lines.filter((l) => l.startsWith('/'))).toEqual([
      expect.stringMatching(
        new RegExp(`pool\\.yaml:\\d+: upstream\\.servers\\[2\\]: cannot connect to ${pool.urls[2]}: ECONNREFUSED: `),
      ),
      expect.stringMatching(
        new RegExp(
          `pool\\.yaml:\\d+: upstream\\.servers\\[1\\]: warning: ${key(ex2())} fails the health check of ` +
            'mapi \\(closed without an answer\\), ews \\(503\\), oab \\(timeout\\); it gets no new work for them$',
        ),
      ),
    ]);
    const at = lines.indexOf('upstream: 1 problem, 1 warning');
    expect(at, r.stdout).toBeGreaterThan(0);
    const [a, b, c] = [ex1(), ex2(), ex3()].map(key) as [string, string, string];
    // Services down, servers across, each column as wide as its widest cell; the last one unpadded.
    const line = (service: string, first: string, second: string, third: string) =>
      `  ${service.padEnd(12)}  ${first.padEnd(a.length)}  ${second.padEnd(24)}  ${third}`;
    const cells = (service: string, second: string) => line(service, '200', second, 'connect error');
    expect(lines.slice(at + 1, at + 11)).toEqual([
      line('service', a, b, c),
      cells('mapi', 'closed without an answer'),
      cells('rpc', '200'),
      cells('ews', '503'),
      cells('activesync', '200'),
      cells('owa', '200'),
      cells('ecp', '200'),
      cells('oab', 'timeout'),
      cells('autodiscover', '200'),
      cells('powershell', '200'),
    ]);
    // Each page of a reached server asked once, by check alone (the gateway's own checker never ran).
    expect(ex1().seen((q) => q.probe)).toBe(9);
    expect(
      new Set(
        ex1()
          .requests.filter((q) => q.probe)
          .map((q) => q.url),
      ).size,
    ).toBe(9);
  });

  it('a server in maintenance (ServerWideOffline) is a warning that says so: exit 0', async () => {
    await ex3().revive();
    ex2().setHealth('all', 'healthy');
    ex2().setOffline(true);
    const r = await check(file);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(
      new RegExp(
        `upstream\\.servers\\[1\\]: warning: ${key(ex2())} fails every health check: closed without an answer ` +
          '\\(in maintenance: ServerWideOffline Inactive\\?\\); it gets no new work\\n',
      ),
    );
    expect(r.stdout).toContain('\nupstream: ok (3 servers as exchange-be.lab.test, certificate verified), 1 warning\n');
    expect(r.stdout).toContain(`\n  mapi          ${'200'.padEnd(key(ex1()).length)}  closed without an answer  200\n`);
    expect(r.stdout).toMatch(/\nok\n$/);
  });
  it("judges every server's certificate: a wrong servername is a problem for each, named", async () => {
    ex2().setOffline(false);
    const wrong = join(h.dir, 'pool-wrong-name.yaml');
    writeFileSync(wrong, readFileSync(file, 'utf8').replace(/servername: .*/, 'servername: exchange.lab.test'));
    const r = await check(wrong);
    expect(r.code, r.stdout).toBe(1);
    const problems = r.stdout.split('\n').filter((l) => l.includes('upstream.servername: '));
    expect(problems).toEqual(
      pool.standins.map((s) =>
        expect.stringContaining(`upstream.servername: ${key(s)}: name mismatch — Exchange's certificate does not`),
      ),
    );
    expect(r.stdout).toContain('\nupstream: 3 problems\n');
    expect(r.stdout).toMatch(/\n {2}mapi +connect error +connect error +connect error\n/);
  });
});
