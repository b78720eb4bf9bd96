/**
 * Several Exchange servers behind one gateway (issue 14): three stand-ins of one DAG, each with
 * switchable health per service; every assertion counts what each stand-in received.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { Client } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import type { AccessRecord } from '../../src/pipeline/access-log.js';
import type { ExchangeStandin, SeenRequest } from '../../src/standin/exchange.js';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  basic,
  clientFor,
  EXTERNAL,
  sendOn,
  startHarness,
  TEST_POLICY,
  type Harness,
} from '../helpers/gateway-harness.js';
import { call, signIn } from '../helpers/ntlm-client.js';
import { startStandinPool, type StandinPool } from '../helpers/standin-pool.js';

const INTERVAL_S = 0.3;
const CONNECT_TIMEOUT_MS = 1000;
const alice = USERS.alice;
const POLICY =
  TEST_POLICY.replace('services: [rpc, ecp, powershell, mrsproxy, api]', 'services: [ecp, powershell, mrsproxy, api]') +
  '  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n';

let pool: StandinPool;
let h: Harness;
const clients: Client[] = [];

function upstreamSection(urls: readonly string[]): Record<string, unknown> {
  return {
    servers: urls,
    ca: pool.caFile,
    servername: pool.servername,
    connectTimeoutMs: CONNECT_TIMEOUT_MS,
    healthCheck: { intervalSeconds: INTERVAL_S, timeoutMs: 500, failures: 2, successes: 2 },
  };
}

beforeAll(async () => {
  const ntlmUsers = Object.fromEntries(Object.values(USERS).map((u) => [u.sam, u.password]));
  pool = await startStandinPool(3, { standin: { ntlmUsers, ntlmDomain: 'LAB' } });
  h = await startHarness({
    directory: 'file',
    policy: POLICY,
    gateway: { upstream: upstreamSection(pool.urls), services: { ews: { auth: 'basic+ntlm' } } },
  });
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.destroy().catch(() => {})));
  await h?.close();
  await pool?.close();
});

const keyOf = (s: ExchangeStandin) => `127.0.0.1:${s.port}`;
const standinAt = (key: string | null) => pool.standins.find((s) => keyOf(s) === key) as ExchangeStandin;
/** Requests a stand-in served that were not health probes. */
const served = (s: ExchangeStandin, pred: (r: SeenRequest) => boolean = () => true) =>
  s.seen((r) => !r.probe && pred(r));

function connection(): Client {
  const c = clientFor(h);
  clients.push(c);
  return c;
}

/** One request as alice on `client`; resolves with its status and access record. */
async function request(client: Client, path: string, headers: Record<string, string> = {}) {
  const mark = h.mark();
  // MAPI is POST (MS-OXCMAPIHTTP); a GET gets the stand-in's greeting.
  const method = path.startsWith('/mapi/') ? 'POST' : 'GET';
  const reply = await sendOn(client, path, EXTERNAL, { method, user: alice.sam, password: alice.password, headers });
  const record = await h.next(mark);
  return { reply, record };
}

/** Waits for one more line matching `pattern` than there were `before` (default: any). */
async function logged(pattern: RegExp, before = 0, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (countOf(pattern) <= before) {
    if (Date.now() > end) throw new Error(`no log line matched ${pattern}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
const lineFor = (s: ExchangeStandin, service: string, what: 'out of the pool' | 'back in the pool') =>
  new RegExp(`"server":"${keyOf(s).replace(/\./g, '\\.')}","service":"${service}"[^\\n]*${what}`);
const countOf = (pattern: RegExp) =>
  h
    .allLogText()
    .split('\n')
    .filter((l) => pattern.test(l)).length;

describe('several Exchange servers behind one gateway', () => {
  it('binds new connections by least connections: six connections, two on each server', async () => {
    const before = pool.standins.map((s) => served(s));
    const records: AccessRecord[] = [];
    for (let i = 0; i < 6; i++) records.push((await request(connection(), '/EWS/Exchange.asmx')).record);
    expect(pool.standins.map((s, i) => served(s) - (before[i] as number))).toEqual([2, 2, 2]);
    expect(new Set(records.map((r) => r.upstream)).size).toBe(3);
    expect(records.every((r) => r.status === 200 && pool.standins.some((s) => keyOf(s) === r.upstream))).toBe(true);
  });

  it.each([
    ['closes the connection without an answer', 'close'],
    ['answers 503', 'status'],
  ] as const)(
    'moves new MAPI work away from a server whose /mapi/healthcheck.htm %s; its EWS work stays',
    async (_, mode) => {
      const c = connection();
      const ews = await request(c, '/EWS/Exchange.asmx');
      const x = standinAt(ews.record.upstream);
      expect((await request(c, '/mapi/emsmdb/')).record.upstream).toBe(keyOf(x));
      const mark = countOf(lineFor(x, 'mapi', 'out of the pool'));
      x.setHealth('mapi', mode);
      await logged(lineFor(x, 'mapi', 'out of the pool'), mark);
      expect(countOf(lineFor(x, 'mapi', 'out of the pool'))).toBe(mark + 1);
      expect(h.allLogText()).toMatch(mode === 'close' ? /"cause":"closed without an answer"/ : /"cause":"HTTP 503"/);
      const mapiBefore = served(x, (r) => r.url.startsWith('/mapi/'));
      const moved = await request(c, '/mapi/emsmdb/');
      expect(moved.reply.status).toBe(200);
      expect(moved.record.upstream).not.toBe(keyOf(x));
      for (let i = 0; i < 3; i++)
        expect((await request(connection(), '/mapi/emsmdb/')).record.upstream).not.toBe(keyOf(x));
      expect(served(x, (r) => r.url.startsWith('/mapi/'))).toBe(mapiBefore); // no new MAPI work
      expect((await request(c, '/EWS/Exchange.asmx')).record.upstream).toBe(keyOf(x)); // EWS stays

      // Back after `successes` good probes, and new MAPI work may go there again.
      const probesBefore = x.seen((r) => r.probe && r.url.startsWith('/mapi/'));
      const backs = countOf(lineFor(x, 'mapi', 'back in the pool'));
      x.setHealth('mapi', 'healthy');
      await logged(lineFor(x, 'mapi', 'back in the pool'), backs);
      expect(x.seen((r) => r.probe && r.url.startsWith('/mapi/')) - probesBefore).toBeGreaterThanOrEqual(2);
      let back = false;
      for (let i = 0; i < 6 && !back; i++)
        back = (await request(connection(), '/mapi/emsmdb/')).record.upstream === keyOf(x);
      expect(back).toBe(true);
    },
  );

  it('keeps an NTLM handshake and the requests after it on one server', async () => {
    const c = connection();
    const counts = () => pool.standins.map((s) => served(s, (r) => r.url.startsWith('/EWS/')));
    const before = counts();
    const done = await signIn(c, '/EWS/Exchange.asmx', EXTERNAL, alice.sam, 'LAB', alice.password);
    expect(done.status).toBe(200);
    for (let i = 0; i < 4; i++) expect((await call(c, '/EWS/Exchange.asmx', EXTERNAL)).status).toBe(200);
    const added = counts().map((n, i) => n - (before[i] as number));
    expect(added.filter((n) => n > 0)).toEqual([6]); // Type 1, Type 3 and four session requests, one server
    const server = pool.standins[added.indexOf(6)] as ExchangeStandin;
    expect(server.seen((r) => r.ntlm === 'session' && r.user === 'LAB\\alice')).toBeGreaterThanOrEqual(4);
  });

  it('lets a long-poll in flight on a server that turns unhealthy complete', async () => {
    const c = connection();
    const x = standinAt((await request(c, '/mapi/emsmdb/')).record.upstream);
    const poll = request(c, '/mapi/emsmdb/', { 'x-requesttype': 'NotificationWait', 'x-standin-wait-ms': '1500' });
    await new Promise((r) => setTimeout(r, 100));
    const outs = countOf(lineFor(x, 'mapi', 'out of the pool'));
    x.setHealth('mapi', 'close');
    await logged(lineFor(x, 'mapi', 'out of the pool'), outs);
    const { reply, record } = await poll;
    expect(reply.status).toBe(200);
    expect(reply.text()).toContain('DONE');
    expect(record.upstream).toBe(keyOf(x));
    const backs = countOf(lineFor(x, 'mapi', 'back in the pool'));
    x.setHealth('mapi', 'healthy');
    await logged(lineFor(x, 'mapi', 'back in the pool'), backs);
  });

  it('sends an Outlook Anywhere tunnel to a server healthy for rpc', async () => {
    const [a, b, c] = pool.standins as [ExchangeStandin, ExchangeStandin, ExchangeStandin];
    a.setHealth('rpc', 'close');
    b.setHealth('rpc', 'status');
    await logged(lineFor(a, 'rpc', 'out of the pool'));
    await logged(lineFor(b, 'rpc', 'out of the pool'));
    for (let i = 0; i < 3; i++) {
      const s = await openRaw();
      s.write(
        `RPC_IN_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001 HTTP/1.1\r\nHost: ${EXTERNAL}\r\n` +
          `Authorization: ${basic(alice.sam, alice.password)}\r\nContent-Length: 0\r\n\r\n`,
      );
      s.on('error', () => {});
      const rec = await h.record((r) => r.method === 'RPC_IN_DATA' && r.upstream !== null && !seenRpc.has(r));
      seenRpc.add(rec);
      expect(rec.upstream).toBe(keyOf(c));
      s.destroy();
    }
    const backs = [countOf(lineFor(a, 'rpc', 'back in the pool')), countOf(lineFor(b, 'rpc', 'back in the pool'))];
    a.setHealth('rpc', 'healthy');
    b.setHealth('rpc', 'healthy');
    await logged(lineFor(a, 'rpc', 'back in the pool'), backs[0]);
    await logged(lineFor(b, 'rpc', 'back in the pool'), backs[1]);
  });

  it('fails over a killed server: no unsent request lost, new connections avoid it', async () => {
    const conns = [connection(), connection(), connection()];
    const bound = await Promise.all(conns.map(async (c) => (await request(c, '/EWS/Exchange.asmx')).record.upstream));
    const x = standinAt(bound[0] as string);
    const refused = new RegExp(
      `"server":"${keyOf(x)}","service":"ews"[^\\n]*"cause":"ECONNREFUSED[^\\n]*out of the pool`,
    );
    const outs = countOf(refused);
    await x.kill();
    const statuses: number[] = [];
    for (const c of conns) {
      const r = await request(c, '/EWS/Exchange.asmx');
      statuses.push(r.reply.status);
      expect(r.record.upstream).not.toBe(keyOf(x));
    }
    await new Promise((r) => setTimeout(r, INTERVAL_S * 1000));
    for (let i = 0; i < 4; i++) {
      const r = await request(connection(), '/EWS/Exchange.asmx');
      statuses.push(r.reply.status);
      expect(r.record.upstream).not.toBe(keyOf(x));
    }
    expect(statuses.every((s) => s === 200)).toBe(true);
    await logged(refused, outs);
    const backs = countOf(lineFor(x, 'ews', 'back in the pool'));
    await x.revive();
    await logged(lineFor(x, 'ews', 'back in the pool'), backs);
  });

  it('answers 503 upstream-unavailable with Retry-After within the connect timeout when all servers are down', async () => {
    const backs = pool.standins.map((s) => countOf(lineFor(s, 'mapi', 'back in the pool')));
    await Promise.all(pool.standins.map((s) => s.kill()));
    for (const wait of [0, 4 * INTERVAL_S * 1000]) {
      await new Promise((r) => setTimeout(r, wait)); // at once (connects refused), then once probes took all out
      const started = Date.now();
      const { reply, record } = await request(connection(), '/EWS/Exchange.asmx');
      expect(Date.now() - started).toBeLessThan(CONNECT_TIMEOUT_MS);
      expect(reply.status).toBe(503);
      expect(reply.headers['retry-after']).toBeDefined();
      expect(record).toMatchObject({ reason: 'upstream-unavailable', status: 503 });
    }
    await Promise.all(pool.standins.map((s) => s.revive()));
    for (const [i, s] of pool.standins.entries()) await logged(lineFor(s, 'mapi', 'back in the pool'), backs[i]);
  });

  it('reload: a removed server finishes its long-poll and gets no new work; connections to the others stay', async () => {
    const [a, b] = pool.standins as [ExchangeStandin, ExchangeStandin, ExchangeStandin];
    let onA = connection();
    for (let i = 0; i < 6 && (await request(onA, '/mapi/emsmdb/')).record.upstream !== keyOf(a); i++)
      onA = connection();
    let onB = connection();
    for (let i = 0; i < 6 && (await request(onB, '/EWS/Exchange.asmx')).record.upstream !== keyOf(b); i++)
      onB = connection();
    const lastSocket = (s: ExchangeStandin) => {
      let id = -1;
      s.seen((r) => {
        if (!r.probe) id = r.socketId;
        return false;
      });
      return id;
    };
    const bSocket = lastSocket(b);
    const poll = request(onA, '/mapi/emsmdb/', { 'x-requesttype': 'NotificationWait', 'x-standin-wait-ms': '1500' });
    await new Promise((r) => setTimeout(r, 100));
    const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(h.configFile, stringify({ ...config, upstream: upstreamSection(pool.urls.slice(1)) }));
    expect(await h.running.reload()).toBe(true);
    const done = await poll;
    expect(done.reply.status).toBe(200);
    expect(done.reply.text()).toContain('DONE');
    expect(done.record.upstream).toBe(keyOf(a));
    const aBefore = served(a);
    expect((await request(onA, '/mapi/emsmdb/')).record.upstream).not.toBe(keyOf(a));
    for (let i = 0; i < 3; i++)
      expect((await request(connection(), '/EWS/Exchange.asmx')).record.upstream).not.toBe(keyOf(a));
    expect(served(a)).toBe(aBefore);
    expect((await request(onB, '/EWS/Exchange.asmx')).record.upstream).toBe(keyOf(b));
    expect(lastSocket(b)).toBe(bSocket); // the same upstream connection: not dropped by the reload
  });
});

const seenRpc = new Set<AccessRecord>();

function openRaw(): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const options = { host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa } as ConnectionOptions;
    const s = connect(options, () => resolve(s));
    s.once('error', reject);
  });
}
