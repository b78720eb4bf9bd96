/**
 * The gateway end to end: a real TLS gateway, the Exchange stand-in over TLS, and the Samba AD
 * DC of global-setup. Every denial is checked twice: the status and reason, and that the
 * stand-in never saw the request.
 */
import { createHash } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DOMAIN, USERS } from '../helpers/ad-fixtures.js';
import {
  AUTODISCOVER,
  basic,
  clientFor,
  expectNotForwarded,
  EXTERNAL,
  INTERNAL,
  send,
  sendOn,
  startHarness,
  type Harness,
} from '../helpers/gateway-harness.js';

const { alice, bob, carol, dave, erin, frank, zoe, mallory, henry } = USERS;
const EWS = '/EWS/Exchange.asmx';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ directory: 'ldap' });
});
afterAll(async () => {
  await h?.close();
});

/** How many requests of `sam` reached the stand-in. */
const seenFor = (sam: string) => h.standin.seen((r) => r.user?.toLowerCase().endsWith(sam) ?? false);

describe('who gets in', () => {
  it('allows a direct member of the group, by every logon form', async () => {
    for (const user of [alice.sam, `LAB\\${alice.sam}`, `lab\\ALICE`, alice.upn, alice.upn.toUpperCase()]) {
      const mark = h.mark();
      const r = await send(h, EWS, { method: 'POST', user, password: alice.password, body: '<x/>' });
      expect(r.status, user).toBe(200);
      expect(JSON.parse(r.text())).toMatchObject({ bytes: 4 });
      expect(await h.next(mark)).toMatchObject({
        user: 'LAB\\alice',
        service: 'ews',
        decision: 'allow',
        reason: 'allowed',
        rule: 'outlook',
        method: 'POST',
        path: EWS,
        sni: EXTERNAL,
        host: EXTERNAL,
      });
    }
  });

  it('allows a member through a nested group', async () => {
    const r = await send(h, '/mapi/emsmdb/?MailboxId=x@lab.test', {
      method: 'POST',
      user: carol.sam,
      password: carol.password,
      headers: { 'x-requesttype': 'Connect' },
      body: 'x',
    });
    expect(r.status).toBe(200);
    expect(await h.record((x) => x.user === 'LAB\\carol')).toMatchObject({
      service: 'mapi',
      reason: 'allowed',
      rule: 'outlook',
      operation: 'Connect',
    });
    expect(seenFor('carol')).toBe(1);
  });

  it('refuses a valid user outside the group with 403, and Exchange never sees it', async () => {
    const r = await send(h, EWS, { method: 'POST', user: bob.sam, password: bob.password, body: '<x/>' });
    expect(r.status).toBe(403);
    expect(r.headers['www-authenticate']).toBeUndefined();
    expect(await h.record((x) => x.user === 'LAB\\bob')).toMatchObject({
      decision: 'deny',
      reason: 'not-allowed',
      rule: null,
      status: 403,
    });
    expect(seenFor('bob')).toBe(0);
  });

  it('lets a deny group beat an allow group', async () => {
    const r = await send(h, EWS, { user: mallory.sam, password: mallory.password });
    expect(r.status).toBe(403);
    expect(await h.record((x) => x.user === 'LAB\\mallory')).toMatchObject({
      reason: 'denied-by-rule',
      rule: 'blocked',
    });
    expect(seenFor('mallory')).toBe(0);
  });

  it('applies rules per service: MobileUsers get ActiveSync but not EWS', async () => {
    expect(
      (
        await send(h, '/Microsoft-Server-ActiveSync?Cmd=Sync&User=henry&DeviceId=d1&DeviceType=iPhone', {
          method: 'POST',
          user: henry.sam,
          password: henry.password,
          body: 'x',
        })
      ).status,
    ).toBe(200);
    expect(
      (await expectNotForwarded(h, () => send(h, EWS, { user: henry.sam, password: henry.password }))).status,
    ).toBe(403);
    expect(h.standin.seen((r) => r.user === henry.sam && r.url === EWS)).toBe(0);
    const recs = h.access.filter((x) => x.user === 'LAB\\henry');
    expect(recs.map((x) => [x.service, x.reason, x.rule, x.operation])).toEqual([
      ['activesync', 'allowed', 'mobile', 'Sync'],
      ['ews', 'not-allowed', null, null],
    ]);
  });
});

describe('credentials', () => {
  const challenge = `Basic realm="${EXTERNAL}", charset="UTF-8"`;

  it.each([
    ['disabled', dave, 'account-disabled'],
    ['must change password', erin, 'password-must-change'],
    ['expired', frank, 'account-expired'],
  ] as const)('answers a %s account with 401 and logs why', async (_what, user, reason) => {
    const r = await send(h, EWS, { user: user.sam, password: user.password });
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe(challenge);
    expect(await h.record((x) => x.user === `LAB\\${user.sam}`)).toMatchObject({
      status: 401,
      reason,
      decision: 'deny',
    });
    expect(seenFor(user.sam)).toBe(0);
  });

  it('answers a wrong password and an empty password with 401 and a Basic challenge', async () => {
    const wrong = await expectNotForwarded(h, () => send(h, EWS, { user: 'grace', password: 'not-her-password' }));
    const empty = await expectNotForwarded(h, () => send(h, EWS, { user: 'LAB\\grace', password: '' }));
    for (const r of [wrong, empty]) {
      expect(r.status).toBe(401);
      expect(r.headers['www-authenticate']).toBe(challenge);
    }
    const recs = h.access.filter((x) => x.user === 'LAB\\grace');
    expect(recs.map((x) => x.reason)).toEqual(['bad-credentials', 'bad-credentials']);
    expect(recs[1]?.detail).toBe('empty password');
    expect(seenFor('grace')).toBe(0);
  });

  it('asks for credentials when there are none', async () => {
    const r = await expectNotForwarded(h, () => send(h, '/owa/', {}));
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe(challenge);
    expect(await h.record((x) => x.path === '/owa/' && x.reason === 'no-credentials')).toMatchObject({
      user: null,
      status: 401,
    });
  });

  it.each([
    '*',
    'al*',
    'alice)(objectClass=*',
    '*)(sAMAccountName=*',
    'alice\u0000',
    'LAB\\*',
    '*@lab.test',
    'OTHER\\alice',
    'alice@evil.test',
  ])('refuses the injection-shaped or foreign name %j with 401', async (user) => {
    const before = h.standin.requests.length;
    const r = await send(h, `/ews/exchange.asmx?n=${encodeURIComponent(user)}`, { user, password: alice.password });
    expect(r.status).toBe(401);
    expect(
      (
        await h.record(
          (x) =>
            x.path === '/ews/exchange.asmx' &&
            x.status === 401 &&
            x.user?.includes(user.replace('\u0000', '')) === true,
        )
      ).reason,
    ).toBe('bad-credentials');
    expect(h.standin.requests.length).toBe(before);
  });

  it('takes a password with a colon and non-ASCII characters, in UTF-8 and in windows-1252', async () => {
    const utf8 = await send(h, EWS, { user: zoe.sam, password: zoe.password });
    expect(utf8.status).toBe(200);
    const cp1252 = Buffer.from(`${zoe.sam}:${zoe.password}`, 'latin1');
    cp1252[cp1252.length - 2] = 0x80; // '€' in windows-1252 (latin1 has no €)
    expect(zoe.password.at(-2)).toBe('€');
    const legacy = await send(h, EWS, { authorization: `Basic ${cp1252.toString('base64')}` });
    expect(legacy.status).toBe(200);
    expect(seenFor('zoe')).toBe(2);
  });

  it('refuses a malformed Basic header with 401', async () => {
    const r = await expectNotForwarded(h, () => send(h, EWS, { authorization: 'Basic !!!not-base64' }));
    expect(r.status).toBe(401);
    const noColon = await expectNotForwarded(h, () =>
      send(h, EWS, { authorization: `Basic ${Buffer.from('alice').toString('base64')}` }),
    );
    expect(noColon.status).toBe(401);
  });
});

describe('names and paths', () => {
  const creds = { user: alice.sam, password: alice.password };

  it.each(['/ews/exchange.asmx', '/EWS//Exchange.asmx', '/Ews/./Exchange.ASMX', '/ews/exchange%2Easmx'])(
    'normalizes %s to the ews service',
    async (path) => {
      const r = await send(h, path, creds);
      expect(r.status).toBe(200);
      expect((await h.record((x) => x.path === path)).service).toBe('ews');
    },
  );

  it.each([
    '/ews/../ecp/',
    '/ews/%2e%2e/ecp/',
    '/ews/..%2fecp/',
    '/owa/%252e%252e/ecp/',
    '/ecp./',
    '/ECP~1/',
    '/ews/x%00',
    '/ews/%c0%ae%c0%ae/',
  ])('refuses %s with 400 before asking for credentials', async (path) => {
    const before = h.standin.requests.length;
    const r = await send(h, path, creds);
    expect(r.status).toBe(400);
    expect(await h.record((x) => x.path === path)).toMatchObject({
      reason: 'bad-request',
      status: 400,
      user: 'LAB\\alice',
    }); // claimed, never verified
    expect(h.standin.requests.length).toBe(before);
  });

  it('answers an unknown path with 404 and no challenge', async () => {
    const r = await expectNotForwarded(h, () => send(h, '/aspnet_client/x', {}));
    expect(r.status).toBe(404);
    expect(r.headers['www-authenticate']).toBeUndefined();
    expect(await h.record((x) => x.path === '/aspnet_client/x')).toMatchObject({
      reason: 'unknown-service',
      service: 'unknown',
      user: null,
    });
  });

  it('logs the account a refused request claimed, although it was never checked', async () => {
    const before = h.standin.requests.length;
    expect((await send(h, '/aspnet_client/y', creds)).status).toBe(404);
    expect((await send(h, '/ecp/', { user: `alice@${DOMAIN.dnsName}`, password: 'whatever' })).status).toBe(403);
    expect((await send(h, EWS, { ...creds, servername: INTERNAL })).status).toBe(421);
    expect(await h.record((x) => x.path === '/aspnet_client/y')).toMatchObject({
      service: 'unknown',
      user: 'LAB\\alice',
      decision: 'deny',
    });
    expect(await h.record((x) => x.path === '/ecp/' && x.user !== null)).toMatchObject({
      user: `alice@${DOMAIN.dnsName}`,
      reason: 'denied-by-rule',
    }); // a UPN stays as given: no lookup
    expect(await h.record((x) => x.reason === 'misdirected' && x.sni === INTERNAL)).toMatchObject({
      user: 'LAB\\alice',
    });
    expect(h.standin.requests.length).toBe(before);
  });

  it('logs an empty user name as no user', async () => {
    expect((await expectNotForwarded(h, () => send(h, '/owa/empty-name', { user: '', password: 'x' }))).status).toBe(
      401,
    );
    expect(await h.record((x) => x.path === '/owa/empty-name')).toMatchObject({
      user: null,
      reason: 'bad-credentials',
    });
  });

  it('answers a service denied to everyone with 403 without asking for credentials', async () => {
    const r = await expectNotForwarded(h, () => send(h, '/ecp/', {}));
    expect(r.status).toBe(403);
    expect(r.headers['www-authenticate']).toBeUndefined();
    expect(await h.record((x) => x.path === '/ecp/')).toMatchObject({
      reason: 'denied-by-rule',
      rule: 'no-legacy-no-admin',
      service: 'ecp',
    });
  });

  it('sends the internal name, an unknown name and an SNI/Host mismatch away with 421', async () => {
    const before = h.standin.requests.length;
    expect((await send(h, EWS, { ...creds, servername: INTERNAL })).status).toBe(421);
    expect((await send(h, EWS, { ...creds, servername: 'evil.example' })).status).toBe(421);
    expect((await send(h, EWS, { ...creds, servername: EXTERNAL, host: AUTODISCOVER })).status).toBe(421);
    expect((await send(h, EWS, { ...creds, servername: null, host: INTERNAL })).status).toBe(421);
    expect(h.standin.requests.length).toBe(before);
    const recs = h.access.filter((x) => x.reason === 'misdirected');
    expect(recs.length).toBeGreaterThanOrEqual(4);
  });

  it('compares names case-insensitively, ignores the Host port, and serves a client without SNI', async () => {
    expect(
      (await send(h, EWS, { ...creds, servername: 'MAIL.lab.TEST', host: `mail.LAB.test:${h.port}` })).status,
    ).toBe(200);
    expect((await send(h, EWS, { ...creds, servername: null, host: EXTERNAL })).status).toBe(200);
  });
});

describe('Outlook Anywhere methods', () => {
  /** Writes a raw request head over TLS and returns the status line. */
  async function rawRequest(head: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = tlsConnect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () =>
        socket.write(head),
      );
      let data = '';
      socket.on('data', (d: Buffer) => {
        data += d.toString('latin1');
      });
      socket.on('close', () => resolve(data.split('\r\n')[0] ?? ''));
      socket.on('error', reject);
    });
  }

  it.each(['RPC_IN_DATA', 'RPC_OUT_DATA'])('refuses %s with 403 and logs it as service rpc', async (method) => {
    const before = h.standin.requests.length;
    const line = await rawRequest(
      `${method} /rpc/rpcproxy.dll?exchange-be:6001 HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${basic(alice.sam, alice.password)}\r\nContent-Length: 1073741824\r\n\r\nABCD`,
    );
    expect(line).toBe('HTTP/1.1 403 Forbidden');
    expect(await h.record((x) => x.method === method)).toMatchObject({
      service: 'rpc',
      decision: 'deny',
      reason: 'denied-by-rule',
      rule: 'no-legacy-no-admin',
      status: 403,
      path: '/rpc/rpcproxy.dll',
      sni: EXTERNAL,
    });
    expect(h.standin.requests.length).toBe(before);
  });

  it('sends an RPC request for the internal name away with 421', async () => {
    const line = await expectNotForwarded(h, () =>
      rawRequest(`RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: ${INTERNAL}\r\n\r\n`),
    );
    expect(line).toBe('HTTP/1.1 421 Misdirected Request');
  });
});

describe('forwarding', () => {
  const creds = { user: alice.sam, password: alice.password };

  it('streams a MAPI NotificationWait response chunk by chunk (PENDING before DONE)', async () => {
    const client = clientFor(h);
    try {
      const res = await client.request({
        path: '/mapi/emsmdb/?MailboxId=x@lab.test',
        method: 'POST',
        body: 'x',
        headers: {
          host: EXTERNAL,
          authorization: basic(alice.sam, alice.password),
          'x-requesttype': 'NotificationWait',
          'x-standin-pending-ms': '150',
          'x-standin-wait-ms': '900',
        },
      });
      expect(res.statusCode).toBe(200);
      const arrivals: { at: number; text: string }[] = [];
      for await (const chunk of res.body) arrivals.push({ at: Date.now(), text: (chunk as Buffer).toString('latin1') });
      const pending = arrivals.find((a) => a.text.includes('PENDING'));
      const done = arrivals.find((a) => a.text.includes('DONE'));
      expect(pending).toBeDefined();
      expect(done).toBeDefined();
      expect(arrivals.indexOf(pending!)).toBeLessThan(arrivals.indexOf(done!));
      // Not buffered: the client held PENDING while the stand-in was still waiting to send DONE.
      expect(done!.at - pending!.at).toBeGreaterThan(100);
    } finally {
      await client.close();
    }
  });

  it('passes a 64 MiB upload intact', async () => {
    const size = 64 * 1024 * 1024;
    const chunk = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff;
    const hash = createHash('sha256');
    for (let i = 0; i < 64; i++) hash.update(chunk);
    const body = Readable.from(
      (function* () {
        for (let i = 0; i < 64; i++) yield chunk;
      })(),
    );
    const r = await send(h, EWS, {
      ...creds,
      method: 'POST',
      body,
      headers: { 'content-length': String(size), 'content-type': 'text/xml' },
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text())).toEqual({ bytes: size, sha256: hash.digest('hex'), user: 'alice' });
    expect((await h.record((x) => x.bytesIn === size)).status).toBe(200);
  });

  it('refuses a body over the service limit with 413, before credentials and before Exchange', async () => {
    const before = h.standin.requests.length;
    const reply = await rawExchange(
      h,
      `POST /Microsoft-Server-ActiveSync?Cmd=SendMail HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${basic(alice.sam, alice.password)}\r\nContent-Length: ${10 * 1024 * 1024 + 1}\r\n\r\n`,
      1000,
    );
    expect(reply.startsWith('HTTP/1.1 413')).toBe(true);
    expect((await h.record((x) => x.status === 413)).reason).toBe('too-large');
    expect(h.standin.requests.length).toBe(before);
  });

  it('gives a Basic-only service only the Basic challenges of Exchange', async () => {
    const r = await send(h, '/owa/standin/401', creds);
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe('Basic realm="exchange-standin"');
  });

  it('removes the headers that name internal servers, keeps the rest', async () => {
    const r = await send(h, '/owa/', creds);
    expect(r.status).toBe(200);
    for (const name of [
      'x-feserver',
      'x-beserver',
      'x-calculatedbetarget',
      'x-diaginfo',
      'x-backendhttpstatus',
      'x-powered-by',
    ]) {
      expect(r.headers[name], name).toBeUndefined();
    }
    expect(r.headers['request-id']).toBeDefined();
  });

  it('forwards Authorization untouched, sets X-Forwarded-For itself, and strips hop-by-hop headers', async () => {
    h.standin.reset();
    const reply = await rawExchange(
      h,
      `GET /owa/hop HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${basic(alice.sam, alice.password)}\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close, X-Private\r\nX-Private: secret\r\nProxy-Authorization: Basic eDp5\r\nTE: trailers\r\n\r\n`,
      2000,
    );
    expect(reply.startsWith('HTTP/1.1 200')).toBe(true);
    const seen = h.standin.requests.at(-1)!;
    expect(seen.user).toBe('alice');
    expect(seen.headers['authorization']).toBe('[redacted]'); // present (the stand-in never stores it)
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-private']).toBeUndefined();
    expect(seen.headers['proxy-authorization']).toBeUndefined();
    expect(seen.headers['te']).toBeUndefined();
    expect(seen.headers['host']).toBe(EXTERNAL);
  });

  it('pins one upstream connection to each client connection', async () => {
    h.standin.reset();
    const a = clientFor(h);
    const b = clientFor(h);
    try {
      for (const c of [a, a, b, b]) expect((await sendOn(c, '/owa/pin', EXTERNAL, creds)).status).toBe(200);
    } finally {
      await a.close();
      await b.close();
    }
    const ids = h.standin.requests.map((r) => r.socketId);
    expect(ids[0]).toBe(ids[1]);
    expect(ids[2]).toBe(ids[3]);
    expect(ids[0]).not.toBe(ids[2]);
  });

  it('ends the client response when Exchange cuts the connection', async () => {
    await expect(send(h, '/ews/standin/cut', creds)).rejects.toThrow();
  });

  it('answers Expect: 100-continue only once the request is allowed', async () => {
    const head = (user: { sam: string; password: string }) =>
      `POST ${EWS} HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${basic(user.sam, user.password)}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`;
    const before = h.standin.seen((r) => r.user === 'bob');
    const refused = await rawExchange(h, head(bob), 1000);
    expect(refused.startsWith('HTTP/1.1 403')).toBe(true);
    expect(refused).not.toContain('100 Continue');
    expect(h.standin.seen((r) => r.user === 'bob')).toBe(before);
    const allowed = await rawExchange(h, head(alice), 1000, 'hello');
    expect(allowed.startsWith('HTTP/1.1 100 Continue')).toBe(true);
    expect(allowed).toContain('HTTP/1.1 200 OK');
  });
});

/** Writes raw bytes over TLS; sends `body` once a 100 Continue arrives; returns what came back within `ms`. */
function rawExchange(h: Harness, head: string, ms: number, body?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () =>
      socket.write(head),
    );
    let data = '';
    socket.on('data', (d: Buffer) => {
      data += d.toString('latin1');
      if (body !== undefined && data.includes('100 Continue')) {
        socket.write(body);
        body = undefined;
      }
    });
    const timer = setTimeout(() => socket.destroy(), ms);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
    socket.on('error', reject);
  });
}

describe('request heads that could mean two things', () => {
  const auth = basic(alice.sam, alice.password);

  it.each([
    [
      'a second Authorization header',
      `GET /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${auth}\r\nAuthorization: ${basic(bob.sam, bob.password)}\r\n\r\n`,
      400,
    ],
    [
      'a transfer coding other than chunked',
      `POST /ews/exchange.asmx HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${auth}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
      501,
    ],
    [
      'a Host with userinfo',
      `GET /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}:1@evil.example\r\nAuthorization: ${auth}\r\n\r\n`,
      400,
    ],
    ['TRACE', `TRACE /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${auth}\r\n\r\n`, 405],
    [
      'an Expect other than 100-continue',
      `GET /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${auth}\r\nExpect: teapot\r\n\r\n`,
      417,
    ],
    [
      'an ASP.NET cookieless segment',
      `GET /ews/(S(x))/mrsproxy.svc HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${auth}\r\n\r\n`,
      400,
    ],
  ])('refuses %s, logs it, and forwards nothing', async (_what, head, status) => {
    const before = h.standin.requests.length;
    const mark = h.mark();
    const reply = await rawExchange(h, head, 1000);
    expect(reply.split('\r\n')[0]).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
    expect(await h.next(mark)).toMatchObject({ reason: 'bad-request', decision: 'deny', status });
    expect(h.standin.requests.length).toBe(before);
  });

  it('forwards an HTTP/1.0 request without Host under the name the client reached', async () => {
    h.standin.reset();
    const reply = await rawExchange(h, `GET /owa/http10 HTTP/1.0\r\nAuthorization: ${auth}\r\n\r\n`, 1000);
    expect(reply.startsWith('HTTP/1.1 200')).toBe(true);
    expect(h.standin.requests.at(-1)?.headers['host']).toBe(EXTERNAL);
  });
});

describe('logs', () => {
  it('never contain a password, an Authorization value or a cookie', async () => {
    await send(h, '/owa/', {
      user: alice.sam,
      password: alice.password,
      headers: { cookie: 'X-BackEndCookie=supersecretcookie' },
    });
    const text = h.allLogText();
    expect(text.length).toBeGreaterThan(1000);
    for (const u of Object.values(USERS)) {
      expect(text, u.sam).not.toContain(u.password);
      expect(text).not.toContain(basic(u.sam, u.password).slice(6));
    }
    expect(text).not.toContain('supersecretcookie');
    expect(text).not.toMatch(/Basic [A-Za-z0-9+/=]{8,}/);
  });
});
