/**
 * `listen.proxyProtocol` behind HAProxy in TCP mode: two gateway processes, HAProxy sending PROXY v2
 * (`send-proxy-v2`) and v1 (`send-proxy`) from 127.0.0.10, clients on their own loopback addresses.
 * The address HAProxy saw is the client's in the access log, in X-Forwarded-For and for the lockout;
 * a PROXY header from an address not listed, and a listed address without one, are refused.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import pino from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import type { AccessRecord } from '../../src/pipeline/access-log.js';
import { loadConfig } from '../../src/config/load.js';
import { holdWith503 } from '../../src/runtime/holding.js';
import { V2_SIGNATURE } from '../../src/runtime/proxy-protocol.js';
import { loadTlsMaterial } from '../../src/runtime/tls.js';
import { USERS } from '../helpers/ad-fixtures.js';
import { EXTERNAL, freePort, send, startHarness, watchForwarded, type Harness } from '../helpers/gateway-harness.js';
import { startHaproxy, type Haproxy } from '../helpers/haproxy.js';

const BALANCER = '127.0.0.10';

interface GatewayProcess {
  readonly port: number;
  readonly admin: number;
  readonly child: ChildProcess;
  stderr: string;
  access(): AccessRecord[];
}

let h: Harness;
let haproxy: Haproxy;
const gateways: GatewayProcess[] = [];
let v2Port: number;
let v1Port: number;

beforeAll(async () => {
  h = await startHarness({ directory: 'file' });
  await h.running.close(); // keep the stand-in and the files; serve as processes
  for (const n of [1, 2]) gateways.push(await serve(n));
  [v2Port, v1Port] = [await freePort(), await freePort()];
  const servers = (send: string) =>
    gateways.map((g, i) => `  server g${i + 1} 127.0.0.1:${g.port} ${send} source ${BALANCER}`).join('\n');
  haproxy = await startHaproxy(
    h.dir,
    `defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend v2
  bind 127.0.0.1:${v2Port}
  default_backend v2
frontend v1
  bind 127.0.0.1:${v1Port}
  default_backend v1
backend v2
  balance roundrobin
${servers('send-proxy-v2')}
backend v1
  balance roundrobin
${servers('send-proxy')}
`,
    [v2Port, v1Port],
  );
});
afterAll(async () => {
  await haproxy?.close();
  for (const g of gateways) g.child.kill('SIGKILL');
  await h?.close();
});

/** One gateway process on its own port, with its own access log and admin listener. */
async function serve(n: number): Promise<GatewayProcess> {
  const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
  const port = await freePort();
  const admin = await freePort();
  const accessFile = join(h.dir, `access-${n}.log`);
  Object.assign(config, {
    listen: { host: '127.0.0.1', port, proxyProtocol: { from: [`${BALANCER}/32`, '::1'] } },
    admin: { host: '127.0.0.1', port: admin },
    log: { level: 'info', access: accessFile },
    lockout: { threshold: 5, windowSeconds: 600, sourceAccounts: 2, sourceFailures: 100 },
  });
  const file = join(h.dir, `gateway-${n}.yaml`);
  writeFileSync(file, stringify(config));
  const bin = join(import.meta.dirname, '..', '..', 'bin', 'exgate.js');
  const child = spawn(process.execPath, [bin, 'serve', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  const g: GatewayProcess = {
    port,
    admin,
    child,
    stderr: '',
    access: () =>
      existsSync(accessFile)
        ? readFileSync(accessFile, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as AccessRecord)
        : [],
  };
  child.stderr!.on('data', (d: Buffer) => (g.stderr += d));
  const end = Date.now() + 15_000;
  while (!g.stderr.includes('"msg":"exgate listening"')) {
    if (Date.now() > end || child.exitCode !== null) throw new Error(`gateway ${n} did not start:\n${g.stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return g;
}

const via = (port: number) => ({ ...h, origin: `https://127.0.0.1:${port}`, port });
const alice = { user: 'alice', password: USERS.alice.password };

/** Records matching `pred` in any gateway's access log (written when the response closes): `count` of them, or what came. */
async function recordsWhere(
  pred: (r: AccessRecord) => boolean,
  count: number,
): Promise<(AccessRecord & { gateway: number })[]> {
  const end = Date.now() + 3000;
  for (;;) {
    const all = gateways.flatMap((g, i) => g.access().map((r) => ({ ...r, gateway: i + 1 })));
    const found = all.filter(pred);
    if (found.length >= count || Date.now() > end) return found;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function refusedCount(g: GatewayProcess, reason: string): Promise<number> {
  const text = await (await request(`http://127.0.0.1:${g.admin}/metrics`)).body.text();
  const m = new RegExp(`exgate_proxy_protocol_refused_total\\{reason="${reason}"\\} (\\d+)`).exec(text);
  return Number(m?.[1] ?? 0);
}

/** Sends `header` then a TLS request on one raw connection; resolves how it ended. */
function sendWithHeader(port: number, header: Buffer | null, localAddress: string, path: string): Promise<string> {
  return new Promise((resolve) => {
    const raw = netConnect({ port, host: '127.0.0.1', localAddress }, () => {
      if (header) raw.write(header);
      const tls = tlsConnect({ socket: raw, servername: EXTERNAL, ca: h.gatewayCa });
      tls.on('secureConnect', () => tls.write(`GET ${path} HTTP/1.1\r\nHost: ${EXTERNAL}\r\n\r\n`));
      tls.on('data', (d: Buffer) => resolve(`answered: ${d.toString('latin1').split('\r\n')[0]}`));
      tls.on('error', (err: NodeJS.ErrnoException) => resolve(`closed: ${err.code ?? err.message}`));
      tls.on('close', () => resolve('closed'));
    });
    raw.on('error', (err: NodeJS.ErrnoException) => resolve(`closed: ${err.code}`));
  });
}

describe('behind HAProxy (TCP mode)', () => {
  it('send-proxy-v2: both gateways log the address HAProxy saw, and forward it in X-Forwarded-For', async () => {
    for (let i = 0; i < 4; i++) {
      const r = await send(via(v2Port), '/owa/?v2', { ...alice, localAddress: '127.0.0.5' });
      expect(r.status).toBe(200);
    }
    const records = await recordsWhere((r) => r.path === '/owa/' && r.client === '127.0.0.5', 4);
    expect(records.map((r) => r.client)).toEqual(Array(4).fill('127.0.0.5'));
    expect(new Set(records.map((r) => r.gateway))).toEqual(new Set([1, 2])); // round robin: both served
    const seen = h.standin.requests.filter((r) => r.url === '/owa/?v2');
    expect(seen.map((r) => r.headers['x-forwarded-for'])).toEqual(Array(4).fill('127.0.0.5'));
  });

  it('send-proxy (v1): the same, from another client address', async () => {
    for (let i = 0; i < 2; i++) {
      const r = await send(via(v1Port), '/ews/exchange.asmx', { ...alice, localAddress: '127.0.0.6' });
      expect(r.status).toBe(200);
    }
    const records = await recordsWhere((r) => r.path === '/ews/exchange.asmx', 2);
    expect(records.map((r) => [r.client, r.decision])).toEqual(Array(2).fill(['127.0.0.6', 'allow']));
    expect(new Set(records.map((r) => r.gateway))).toEqual(new Set([1, 2]));
  });

  it('counts a spraying source by the address HAProxy named: it gets 429, other clients behind HAProxy do not', async () => {
    // sourceAccounts: 2 per gateway; each gateway counts alone (no shared state), so spray enough for both.
    const statuses: number[] = [];
    for (const user of ['bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'henry', 'ivan']) {
      statuses.push(
        (await send(via(v2Port), '/owa/?spray', { user, password: 'Wrong-1', localAddress: '127.0.0.7' })).status,
      );
    }
    expect(statuses.slice(-2)).toEqual([429, 429]);
    const blocked = await recordsWhere((r) => r.status === 429, 2);
    expect(blocked.length).toBeGreaterThan(0);
    expect(blocked.every((r) => r.client === '127.0.0.7' && r.reason === 'gateway-lockout')).toBe(true);
    // All of these came from HAProxy's one address; without the header they would all be blocked now.
    for (let i = 0; i < 2; i++)
      expect((await send(via(v2Port), '/owa/', { ...alice, localAddress: '127.0.0.8' })).status).toBe(200);
  });
});

describe('refused at the connection', () => {
  const forged = [
    ['v1', Buffer.from('PROXY TCP4 198.51.100.9 127.0.0.1 50000 443\r\n')],
    ['v2', Buffer.concat([V2_SIGNATURE, Buffer.from('2111000cc6336409', 'hex'), Buffer.alloc(8)])],
  ] as const;
  it.each(forged)(
    'a PROXY %s header from an address not listed: closed, counted, logged, nothing forwarded',
    async (_v, header) => {
      const g = gateways[0]!;
      const before = await refusedCount(g, 'not-listed');
      const watch = watchForwarded(h, (r) => r.url.startsWith('/owa/?forged'));
      expect(await sendWithHeader(g.port, header, '127.0.0.1', '/owa/?forged')).toMatch(/^closed/);
      await watch.expectNone();
      expect(await refusedCount(g, 'not-listed')).toBe(before + 1);
      expect(g.stderr).toMatch(/"client":"127\.0\.0\.1","reason":"not-listed"[^\n]*PROXY protocol: connection refused/);
      expect(g.stderr).not.toContain('198.51.100.9');
    },
  );

  it('a listed address without a header: closed and counted, nothing forwarded', async () => {
    const g = gateways[1]!;
    const before = await refusedCount(g, 'missing');
    const watch = watchForwarded(h, (r) => r.url.startsWith('/owa/?bare'));
    expect(await sendWithHeader(g.port, null, BALANCER, '/owa/?bare')).toMatch(/^closed/);
    await watch.expectNone();
    expect(await refusedCount(g, 'missing')).toBe(before + 1);
  });

  it('a direct client that is not listed and sends no header is served as itself', async () => {
    const g = gateways[0]!;
    expect(await sendWithHeader(g.port, null, '127.0.0.9', '/owa/?direct')).toMatch(/^answered: HTTP\/1.1 401/);
    expect(await recordsWhere((r) => r.client === '127.0.0.9', 1)).toHaveLength(1);
  });
});

describe('the 503 holding server (directory down at startup) behind the balancer', () => {
  it('reads the PROXY header too, and logs the client it names', async () => {
    const config = loadConfig(join(h.dir, 'gateway-1.yaml'));
    const lines: string[] = [];
    const access = pino({ base: null }, { write: (l: string) => void lines.push(l) });
    const port = await freePort();
    const held = await holdWith503(config, loadTlsMaterial(config), access, { port, host: '127.0.0.1' });
    try {
      const header = Buffer.from('PROXY TCP4 203.0.113.9 127.0.0.1 50000 443\r\n');
      expect(await sendWithHeader(port, header, BALANCER, '/owa/')).toBe('answered: HTTP/1.1 503 Service Unavailable');
      expect(await sendWithHeader(port, null, BALANCER, '/owa/')).toMatch(/^closed/); // listed: header required
      await new Promise((r) => setTimeout(r, 50));
      expect(lines.map((l) => (JSON.parse(l) as AccessRecord).client)).toEqual(['203.0.113.9']);
    } finally {
      await held.close();
    }
  });
});
