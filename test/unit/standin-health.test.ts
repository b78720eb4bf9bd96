// The Exchange stand-in's Managed Availability probes and kill switch (src/standin/health.ts), over HTTPS
// from a pool of two (test/helpers/standin-pool.ts). No gateway: these are the answers a gateway will probe.
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ExchangeStandin } from '../../src/standin/exchange.js';
import type { HealthService } from '../../src/standin/health.js';
import { POOL_SERVERNAME, startStandinPool, type StandinPool } from '../helpers/standin-pool.js';

// Each service's probe path, in the case Microsoft's documentation spells it (IIS ignores case).
const PROBES: readonly (readonly [HealthService, string])[] = [
  ['mapi', '/mapi/healthcheck.htm'],
  ['rpc', '/Rpc/healthcheck.htm'],
  ['ews', '/EWS/healthcheck.htm'],
  ['activesync', '/Microsoft-Server-ActiveSync/healthcheck.htm'],
  ['owa', '/owa/healthcheck.htm'],
  ['ecp', '/ecp/healthcheck.htm'],
  ['oab', '/OAB/healthcheck.htm'],
  ['autodiscover', '/Autodiscover/healthcheck.htm'],
  ['powershell', '/PowerShell/healthcheck.htm'],
];
const BASIC = `Basic ${Buffer.from('LAB\\alice:secret').toString('base64')}`;
const HANG_MS = 300;

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

let pool: StandinPool;
let ex1: ExchangeStandin;
let ex2: ExchangeStandin;

beforeAll(async () => {
  pool = await startStandinPool(2);
  [ex1, ex2] = pool.standins as [ExchangeStandin, ExchangeStandin];
});
afterAll(() => pool.close());
afterEach(async () => {
  for (const s of pool.standins) {
    await s.revive();
    s.setOffline(false);
    s.setHealth('all', 'healthy');
    s.reset();
  }
  // A client that gave up (timeouts) closes its side first; the stand-in's socket closes a moment later.
  await until(() => pool.standins.every((s) => s.openConnections() === 0), 'every connection to close');
});

/** One request on a fresh TLS connection, checked against the pool's CA and name. */
function get(s: ExchangeStandin, path: string, opts: { method?: string; auth?: string; timeoutMs?: number } = {}) {
  return new Promise<Answer>((resolve, reject) => {
    const req = httpsRequest(
      `${s.url}${path}`,
      {
        method: opts.method ?? 'GET',
        ca: pool.ca,
        servername: POOL_SERVERNAME,
        agent: false,
        headers: opts.auth ? { authorization: opts.auth } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() });
        });
        res.on('error', reject);
      },
    );
    const timedOut = Object.assign(new Error('timeout'), { code: 'TIMEOUT' });
    if (opts.timeoutMs) req.setTimeout(opts.timeoutMs, () => req.destroy(timedOut));
    req.on('error', reject);
    req.end();
  });
}

/** A raw TLS connection that records every byte it receives; `ended` resolves with them when it closes. */
async function rawConnection(s: ExchangeStandin): Promise<{ socket: TLSSocket; ended: Promise<Buffer> }> {
  const socket = tlsConnect({ host: '127.0.0.1', port: s.port, ca: pool.ca, servername: POOL_SERVERNAME });
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<Buffer>((resolve) => socket.once('close', () => resolve(Buffer.concat(chunks))));
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  return { socket, ended };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await sleep(10);
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

describe('healthy probes', () => {
  it.each(PROBES)('%s: %s answers 200 with the server FQDN, without credentials', async (_service, path) => {
    const answer = await get(ex1, path);
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('200 OK<br/>ex1.lab.test');
    expect(answer.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(answer.headers['x-standin-server']).toBe('ex1.lab.test');
  });

  it('matches the path case-insensitively, as IIS does', async () => {
    const paths = ['/MAPI/HEALTHCHECK.HTM', '/microsoft-server-activesync/HealthCheck.htm', '/owa/x/healthcheck.htm'];
    for (const path of paths) {
      expect((await get(ex2, path)).body).toBe('200 OK<br/>ex2.lab.test');
    }
  });

  it('is no probe when not a GET, outside a probed vdir, or not healthcheck.htm', async () => {
    for (const [method, path] of [
      ['POST', '/mapi/healthcheck.htm'],
      ['HEAD', '/owa/healthcheck.htm'],
      ['GET', '/healthcheck.htm'],
      ['GET', '/owa/healthcheck.html'],
      ['GET', '/api/healthcheck.htm'],
    ] as const) {
      expect((await get(ex1, path, { method })).status, `${method} ${path}`).toBe(401);
    }
    expect(ex1.seen((r) => r.probe)).toBe(0);
  });

  it('records probes with probe: true, apart from real traffic', async () => {
    await get(ex1, '/ews/healthcheck.htm');
    await get(ex1, '/owa/healthcheck.htm');
    const hello = await get(ex1, '/owa/', { auth: BASIC });
    expect(hello.status).toBe(200);
    expect(hello.headers['x-standin-server']).toBe('ex1.lab.test');
    expect(ex1.seen((r) => r.probe)).toBe(2);
    expect(ex1.seen((r) => !r.probe)).toBe(1);
    const probes = ex1.requests.filter((r) => r.probe).map((r) => r.url);
    expect(probes).toEqual(['/ews/healthcheck.htm', '/owa/healthcheck.htm']);
    expect(ex2.seen()).toBe(0);
  });
});

describe('unhealthy probes, per service', () => {
  it.each(PROBES)("%s 'close': closes with no answer; the other services stay healthy", async (service, path) => {
    ex1.setHealth(service, 'close');
    await expect(get(ex1, path)).rejects.toMatchObject({ code: 'ECONNRESET', message: 'socket hang up' });
    for (const [other, otherPath] of PROBES) {
      if (other !== service) expect((await get(ex1, otherPath)).status, other).toBe(200);
    }
    expect((await get(ex2, path)).status).toBe(200);
    expect(ex1.seen((r) => r.probe && r.url === path)).toBe(1);
  });

  it.each(PROBES)("%s 'status': answers the status given (503 by default)", async (service, path) => {
    ex1.setHealth(service, 'status');
    const answer = await get(ex1, path);
    expect(answer.status).toBe(503);
    expect(answer.body).not.toContain('200 OK');
    ex1.setHealth(service, 'status', 500);
    expect((await get(ex1, path)).status).toBe(500);
  });

  it.each(PROBES)("%s 'hang': never answers", async (service, path) => {
    ex1.setHealth(service, 'hang');
    await expect(get(ex1, path, { timeoutMs: HANG_MS })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(ex1.seen((r) => r.probe && r.url === path)).toBe(1);
  });

  it("'close' sends not one byte: no status line, no TLS close_notify", async () => {
    ex1.setHealth('mapi', 'close');
    const { socket, ended } = await rawConnection(ex1);
    socket.write('GET /mapi/healthcheck.htm HTTP/1.1\r\nHost: exchange-be.lab.test\r\n\r\n');
    expect((await ended).length).toBe(0);
  });

  it('MAPI failing while EWS is healthy, then back', async () => {
    ex1.setHealth('mapi', 'close');
    await expect(get(ex1, '/mapi/healthcheck.htm')).rejects.toThrow();
    expect((await get(ex1, '/EWS/healthcheck.htm')).body).toBe('200 OK<br/>ex1.lab.test');
    ex1.setHealth('mapi', 'healthy');
    expect((await get(ex1, '/mapi/healthcheck.htm')).status).toBe(200);
  });

  it('a hanging probe does not hold up other requests on other connections', async () => {
    ex1.setHealth('owa', 'hang');
    const hung = get(ex1, '/owa/healthcheck.htm', { timeoutMs: 500 }).catch((e: unknown) => e);
    expect((await get(ex1, '/owa/', { auth: BASIC })).status).toBe(200);
    await until(() => ex1.seen((r) => r.probe) === 1, 'the hanging probe to arrive');
    expect(await hung).toMatchObject({ code: 'TIMEOUT' });
  });
});

describe('setOffline (ServerWideOffline Inactive)', () => {
  it('fails every probe the close way; real requests are still served; settings survive', async () => {
    ex1.setHealth('ews', 'status');
    ex1.setOffline(true);
    for (const [, path] of PROBES) {
      await expect(get(ex1, path)).rejects.toMatchObject({ code: 'ECONNRESET' });
    }
    const hello = await get(ex1, '/mapi/emsmdb/', { auth: BASIC }); // a new connection, not a probe
    expect(hello.status).toBe(200);
    expect((await get(ex2, '/mapi/healthcheck.htm')).status).toBe(200);

    ex1.setOffline(false);
    expect((await get(ex1, '/mapi/healthcheck.htm')).status).toBe(200);
    expect((await get(ex1, '/ews/healthcheck.htm')).status).toBe(503);
  });
});

describe('openConnections, kill and revive', () => {
  it('counts the sockets open now', async () => {
    expect(ex1.openConnections()).toBe(0);
    const a = await rawConnection(ex1);
    const b = await rawConnection(ex1);
    await until(() => ex1.openConnections() === 2, 'two connections');
    expect(ex2.openConnections()).toBe(0);
    a.socket.destroy();
    b.socket.destroy();
    await until(() => ex1.openConnections() === 0, 'no connections');
  });

  it('kill drops open connections and refuses new ones; revive listens on the same port', async () => {
    const port = ex1.port;
    const open = await rawConnection(ex1);
    await until(() => ex1.openConnections() === 1, 'one connection');
    await get(ex1, '/owa/healthcheck.htm');

    await ex1.kill();
    await open.ended;
    expect(ex1.openConnections()).toBe(0);
    await expect(get(ex1, '/owa/healthcheck.htm')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await get(ex2, '/owa/healthcheck.htm')).status).toBe(200);
    await ex1.kill(); // twice is fine

    await ex1.revive();
    expect(ex1.port).toBe(port);
    expect((await get(ex1, '/owa/healthcheck.htm')).body).toBe('200 OK<br/>ex1.lab.test');
    expect(ex1.seen((r) => r.probe)).toBe(2); // what it saw before the kill is kept
  });

  it('keeps its health settings across kill and revive', async () => {
    ex1.setHealth('oab', 'status', 502);
    await ex1.kill();
    await ex1.revive();
    expect((await get(ex1, '/oab/healthcheck.htm')).status).toBe(502);
  });
});

describe('the pool', () => {
  it('serves one certificate name from every member, each with its own FQDN and port', async () => {
    expect(pool.urls).toEqual([ex1.url, ex2.url]);
    expect(new Set(pool.standins.map((s) => s.port)).size).toBe(2);
    for (const s of pool.standins) {
      const { socket, ended } = await rawConnection(s);
      expect(socket.getPeerCertificate().subjectaltname).toBe(`DNS:${POOL_SERVERNAME}`);
      socket.end();
      await ended;
    }
    expect(pool.byName('ex2.lab.test')).toBe(ex2);
    expect((await get(ex2, '/owa/', { auth: BASIC })).headers['x-standin-server']).toBe('ex2.lab.test');
  });

  it('close closes every member, also killed ones, and revive then refuses', async () => {
    const other = await startStandinPool(3);
    const hung = other.standins[0] as ExchangeStandin;
    hung.setHealth('mapi', 'hang');
    const pending = new Promise<unknown>((resolve) => {
      const url = `${hung.url}/mapi/healthcheck.htm`;
      const req = httpsRequest(url, { ca: other.ca, servername: POOL_SERVERNAME, agent: false });
      req.on('error', resolve).end();
    });
    await until(() => hung.seen() === 1, 'the hanging probe');
    await (other.standins[1] as ExchangeStandin).kill();
    await other.close();
    expect(await pending).toMatchObject({ code: 'ECONNRESET' });
    for (const s of other.standins) expect(s.openConnections()).toBe(0);
    await expect((other.standins[1] as ExchangeStandin).revive()).rejects.toThrow('closed');
    await other.close();
  });
});
