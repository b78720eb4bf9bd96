/**
 * Outlook Anywhere (RPC over HTTP) tunnelled for allowed Basic users: 20 MiB each way through the
 * gateway, refusals that never reach Exchange, the per-address tunnel cap, the head timeout, and
 * the normal HTTP path still working behind the peek.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { Attribute, Change, Client } from 'ldapts';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createUser } from '../helpers/ad-admin.js';
import { ADMIN, groupDn } from '../helpers/ad-fixtures.js';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  basic,
  EXTERNAL,
  makeCert,
  send,
  startHarness,
  TEST_POLICY,
  type Harness,
} from '../helpers/gateway-harness.js';
import { startRpcUpstream, type RpcUpstream } from '../helpers/rpc-upstream.js';

const MiB = 1024 * 1024;
const POLICY =
  TEST_POLICY.replace('services: [rpc, ecp, powershell, mrsproxy, api]', 'services: [ecp, powershell, mrsproxy, api]') +
  '  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n';

let h: Harness;
let rpc: RpcUpstream;
let certDir: string;

beforeAll(async () => {
  certDir = mkdtempSync(join(tmpdir(), 'exgate-rpc-'));
  const cert = makeCert(certDir, 'rpc', ['exchange-be.lab.test']);
  writeFileSync(join(certDir, 'ca.pem'), cert.cert);
  rpc = await startRpcUpstream(cert, 20 * MiB, 20 * MiB);
  h = await startHarness({
    directory: 'ldap',
    policy: POLICY,
    gateway: {
      upstream: { url: rpc.url, ca: join(certDir, 'ca.pem'), servername: 'exchange-be.lab.test' },
      services: { rpc: { maxTunnelsPerSource: 2 } },
      http: { headersTimeoutMs: 1000 },
      cache: { groupTtlSeconds: 1 },
    },
  });
});
afterAll(async () => {
  await h?.close();
  await rpc?.close();
  rmSync(certDir, { recursive: true, force: true });
});

const alice = USERS.alice;

async function leaveGroup(dn: string): Promise<void> {
  const c = new Client({ url: inject('ldapUrl') });
  try {
    await c.bind(ADMIN.upn, ADMIN.password);
    await c.modify(
      groupDn('AllowExternalAccess'),
      new Change({ operation: 'delete', modification: new Attribute({ type: 'member', values: [dn] }) }),
    );
  } finally {
    await c.unbind();
  }
}

function open(localAddress = '127.0.0.1'): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // tls.connect passes localAddress on to net.connect; its typings just do not list it.
    const options = {
      host: '127.0.0.1',
      port: h.port,
      servername: EXTERNAL,
      ca: h.gatewayCa,
      localAddress,
    } as ConnectionOptions;
    const s = connect(options, () => resolve(s));
    s.once('error', reject);
  });
}

function head(method: string, user: { sam: string; password: string } | null, length: number): string {
  return (
    `${method} /rpc/rpcproxy.dll?exchange-be.lab.test:6001 HTTP/1.1\r\nHost: ${EXTERNAL}\r\n` +
    (user ? `Authorization: ${basic(user.sam, user.password)}\r\n` : '') +
    `Content-Length: ${length}\r\nConnection: Keep-Alive\r\nUser-Agent: MSRPC\r\n\r\n`
  );
}

/** Reads until the socket closes; returns the bytes received. */
function drain(s: TLSSocket): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('close', () => resolve(Buffer.concat(parts)));
    s.on('error', () => {});
  });
}

describe('Outlook Anywhere tunnel', () => {
  it('carries 20 MiB in on RPC_IN_DATA', async () => {
    const s = await open();
    const reply = drain(s);
    s.write(head('RPC_IN_DATA', alice, 1073741824));
    const chunk = Buffer.alloc(MiB, 0x5a);
    for (let i = 0; i < 20; i++) if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
    const text = (await reply).toString('latin1');
    expect(text.startsWith('HTTP/1.1 200 Success')).toBe(true);
    const seen = rpc.seen.find((x) => x.head.startsWith('RPC_IN_DATA'));
    expect(seen?.bodyBytes).toBe(20 * MiB);
    expect(seen?.head).toMatch(/X-Forwarded-For: 127\.0\.0\.1/);
    expect(await h.record((x) => x.method === 'RPC_IN_DATA' && x.status === 200)).toMatchObject({
      service: 'rpc',
      user: 'LAB\\alice',
      decision: 'allow',
      reason: 'allowed',
      rule: 'outlook-anywhere',
      bytesIn: 20 * MiB,
    });
  });

  it('carries 20 MiB out on RPC_OUT_DATA', async () => {
    const s = await open();
    const reply = drain(s);
    s.write(head('RPC_OUT_DATA', alice, 76) + 'x'.repeat(76));
    const got = await reply;
    const headEnd = got.indexOf('\r\n\r\n');
    expect(got.subarray(0, 20).toString('latin1')).toBe('HTTP/1.1 200 Success');
    expect(got.length - headEnd - 4).toBe(20 * MiB);
    expect((await h.record((x) => x.method === 'RPC_OUT_DATA' && x.status === 200)).bytesOut).toBeGreaterThan(20 * MiB);
  });

  it.each([
    ['a wrong password', { sam: 'alice', password: 'wrong' }, '401', 'bad-credentials'],
    ['no credentials', null, '401', 'no-credentials'],
    ['a user outside the group', { sam: 'bob', password: USERS.bob.password }, '403', 'not-allowed'],
  ] as const)('refuses %s and tunnels nothing', async (_what, user, status, reason) => {
    const before = rpc.seen.length;
    const mark = h.mark();
    const s = await open();
    const reply = drain(s);
    s.write(head('RPC_IN_DATA', user, 1073741824));
    const text = (await reply).toString('latin1');
    expect(text.split('\r\n')[0]).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
    if (status === '401') expect(text).toMatch(/WWW-Authenticate: Basic realm=/);
    expect(await h.next(mark)).toMatchObject({ service: 'rpc', reason, decision: 'deny' });
    expect(rpc.seen.length).toBe(before);
  });

  it('caps tunnels per client address', async () => {
    const a = await open('127.0.0.5');
    const b = await open('127.0.0.5');
    a.write(head('RPC_OUT_DATA', alice, 76));
    b.write(head('RPC_OUT_DATA', alice, 76));
    await new Promise((r) => setTimeout(r, 300)); // both tunnels open (upstream waits for 76 bytes)
    const c = await open('127.0.0.5');
    const reply = drain(c);
    c.write(head('RPC_OUT_DATA', alice, 76));
    expect((await reply).toString('latin1').split('\r\n')[0]).toBe('HTTP/1.1 429 Too Many Requests');
    a.destroy();
    b.destroy();
  });

  it('answers a head that never completes with 408 (slow headers), and forwards nothing', async () => {
    const before = rpc.seen.length;
    const s = await open();
    const reply = drain(s);
    s.write('RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: ');
    expect((await reply).toString('latin1').split('\r\n')[0]).toBe('HTTP/1.1 408 Request Timeout');
    expect(rpc.seen.length).toBe(before);
  });

  it.each([
    [
      'two Content-Lengths',
      (u: string) =>
        `RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${u}\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\n`,
    ],
    [
      'Transfer-Encoding',
      (u: string) =>
        `RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${u}\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n`,
    ],
    [
      'no Content-Length',
      (u: string) => `RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${u}\r\n\r\n`,
    ],
    [
      'a control byte in the target',
      (u: string) =>
        `RPC_OUT_DATA /rpc/rpcproxy.dll?a\x01b HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${u}\r\nContent-Length: 76\r\n\r\n`,
    ],
  ])('refuses an RPC head with %s (400), and tunnels nothing', async (_what, make) => {
    const before = rpc.seen.length;
    const s = await open();
    const reply = drain(s);
    s.write(make(basic(alice.sam, alice.password)));
    expect((await reply).toString('latin1').split('\r\n')[0]).toBe('HTTP/1.1 400 Bad Request');
    expect(rpc.seen.length).toBe(before);
  });

  it('forwards exactly the declared body: a request smuggled after it never reaches Exchange', async () => {
    const before = rpc.seen.length;
    const s = await open();
    const reply = drain(s);
    s.write(
      head('RPC_IN_DATA', alice, 0) +
        `GET /autodiscover/autodiscover.json?@evil.corp/PowerShell HTTP/1.1\r\nHost: exchange-be.lab.test\r\nCookie: X-BEResource=x\r\n\r\n`,
    );
    await reply;
    await new Promise((r) => setTimeout(r, 200));
    expect(rpc.seen.slice(before).map((x) => x.head.split('\r\n')[0])).toEqual([
      'RPC_IN_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001 HTTP/1.1',
    ]);
    expect(rpc.seen.at(-1)?.bodyBytes).toBe(0);
  });

  it('cuts an open tunnel once its user leaves the group (checked every groupTtlSeconds)', async () => {
    const u = await createUser(inject('ldapUrl'), `tunnel${Date.now() % 100000}`, 'Tunn3l-Passw0rd!', [
      'AllowExternalAccess',
    ]);
    const s = await open();
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(head('RPC_IN_DATA', { sam: u.sam, password: u.password }, 1073741824));
    s.write(Buffer.alloc(MiB, 1));
    await new Promise((r) => setTimeout(r, 300));
    expect(s.destroyed).toBe(false);
    await leaveGroup(u.dn);
    await closed;
    expect((await h.record((x) => x.user === `LAB\\${u.sam}` && x.method === 'RPC_IN_DATA')).detail).toBe(
      'tunnel closed: no longer allowed',
    );
  });

  it('leaves the normal HTTP path working behind the peek, keep-alive included', async () => {
    const r = await send(h, '/owa/', { user: alice.sam, password: alice.password });
    expect(r.status).toBe(200);
    expect(r.text()).toBe('hello\n');
    const slow = await open();
    const reply = drain(slow);
    slow.write('GET /owa/ HTTP/1.1\r\nHost: '); // not RPC: the HTTP server's own header timeout
    expect((await reply).toString('latin1').split('\r\n')[0]).toBe('HTTP/1.1 408 Request Timeout');
  });

  it('drops hop-by-hop and Exchange-internal headers from the tunnelled head, as on the HTTP path', async () => {
    const s = await open();
    void drain(s);
    s.write(
      `RPC_OUT_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001&marker=hdrs HTTP/1.1\r\nHost: ${EXTERNAL}\r\n` +
        `Authorization: ${basic(alice.sam, alice.password)}\r\nContent-Length: 76\r\nConnection: Keep-Alive, X-Secret-Hop\r\n` +
        'X-Secret-Hop: 1\r\nX-CommonAccessToken: forged\r\nX-IsFromCafe: 1\r\nmsExchLogonMailbox: S-1-5-21-1\r\nUpgrade: h2c\r\nX-Forwarded-For: 10.9.9.9\r\nUser-Agent: MSRPC\r\n\r\n',
    );
    const end = Date.now() + 3000;
    let seen: string | undefined;
    while (!(seen = rpc.seen.find((x) => x.head.includes('marker=hdrs'))?.head) && Date.now() < end)
      await new Promise((r) => setTimeout(r, 20));
    s.destroy();
    expect(seen).toBeDefined();
    for (const name of [
      'X-Secret-Hop',
      'X-CommonAccessToken',
      'X-IsFromCafe',
      'msExchLogonMailbox',
      'Upgrade',
      '10.9.9.9',
    ])
      expect(seen).not.toContain(name);
    expect(seen).toMatch(/\r\nUser-Agent: MSRPC\r\n/);
    expect(seen).toMatch(/\r\nX-Forwarded-For: 127\.0\.0\.1\r\n/);
  });

  it("sends the access record's X-Request-Id in the tunnelled head, never the client's", async () => {
    const s = await open();
    void drain(s);
    s.write(
      `RPC_OUT_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001&marker=rid HTTP/1.1\r\nHost: ${EXTERNAL}\r\n` +
        `Authorization: ${basic(alice.sam, alice.password)}\r\nContent-Length: 76\r\nX-Request-Id: forged\r\n\r\n`,
    );
    const end = Date.now() + 3000;
    let seen: string | undefined;
    while (!(seen = rpc.seen.find((x) => x.head.includes('marker=rid'))?.head) && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 20));
    }
    s.destroy();
    expect(seen).not.toContain('forged');
    const id = /\r\nX-Request-Id: ([0-9a-f-]{36})\r\n/.exec(seen ?? '')?.[1];
    expect(id).toBeDefined();
    await h.record((x) => x.method === 'RPC_OUT_DATA' && x.requestId === id);
  });

  it('answers 502 when Exchange cannot be reached for an allowed tunnel', async () => {
    const dead = await startHarness({
      directory: 'ldap',
      policy: POLICY,
      gateway: {
        upstream: { url: 'https://127.0.0.1:1', ca: join(certDir, 'ca.pem'), servername: 'exchange-be.lab.test' },
      },
    });
    try {
      const s = await new Promise<TLSSocket>((resolve, reject) => {
        const c = connect({ host: '127.0.0.1', port: dead.port, servername: EXTERNAL, ca: dead.gatewayCa }, () =>
          resolve(c),
        );
        c.once('error', reject);
      });
      const reply = drain(s);
      s.write(head('RPC_IN_DATA', alice, 1073741824));
      expect((await reply).toString('latin1').split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
      expect(await dead.record((x) => x.method === 'RPC_IN_DATA')).toMatchObject({
        service: 'rpc',
        user: 'LAB\\alice',
        status: 502,
        reason: 'upstream-error',
      });
    } finally {
      await dead.close();
    }
  });

  it('never logs the password of a tunnelled request', () => {
    expect(h.allLogText()).not.toContain(alice.password);
    expect(h.allLogText()).not.toContain(basic(alice.sam, alice.password).slice(6));
  });
});
