/**
 * The browser door at the HTTP level (what a browser cannot show): Exchange's forms sign-in gated by the
 * gateway, against the real Samba DC and the Exchange stand-in's forms flow. Every refusal is checked
 * twice: the answer, and that the stand-in never saw the request.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Client } from 'undici';
import { USERS } from '../helpers/ad-fixtures.js';
import { createUser, readAttributes, setGroupMember } from '../helpers/ad-admin.js';
import {
  clientFor,
  expectNotForwarded,
  EXTERNAL,
  sendOn,
  startHarness,
  watchForwarded,
  type Harness,
  type Reply,
} from '../helpers/gateway-harness.js';
import { sambaAdmin } from '../helpers/samba.js';

const ldapUrl = inject('ldapUrl');
const { alice, bob, carol, mallory } = USERS;
const tag = () => randomBytes(3).toString('hex');
const FORMS_USERS = Object.fromEntries([alice, bob, carol, mallory].map((u) => [u.sam, u.password]));
const POLICY = `
mode: enforce
rules:
  - id: deny-listed
    services: [owa, ecp]
    deny: { groups: [ExternalDenied] }
  - id: outlook-web
    services: [owa]
    allow: { groups: [AllowExternalAccess] }
  - id: admin-center
    services: [ecp]
    allow: { users: [alice] }
`;

/** A browser's view of one site: a keep-alive connection, a cookie jar, requests as a browser makes them. */
class Browser {
  readonly jar = new Map<string, string>();
  readonly client: Client;
  constructor(h: Harness, localAddress?: string) {
    this.client = clientFor(h, EXTERNAL, localAddress);
  }

  async get(path: string, headers: Record<string, string> = {}): Promise<Reply> {
    return this.send(path, { method: 'GET', headers });
  }

  async signIn(
    username: string,
    password: string,
    destination = `https://${EXTERNAL}/owa/`,
    extra = '',
  ): Promise<Reply> {
    const body = `destination=${encodeURIComponent(destination)}&flags=4&forcedownlevel=0&username=${encodeURIComponent(
      username,
    )}&password=${encodeURIComponent(password)}&passwordText=&isUtf8=1${extra}`;
    return this.send('/owa/auth.owa', {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
  }

  async send(path: string, opts: { method: string; body?: string; headers?: Record<string, string> }): Promise<Reply> {
    const cookie = [...this.jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const r = await sendOn(this.client, path, EXTERNAL, {
      method: opts.method,
      ...(opts.body !== undefined ? { body: opts.body } : {}),
      headers: { ...(cookie ? { cookie } : {}), ...opts.headers },
    });
    for (const c of setCookies(r)) {
      const [pair = ''] = c.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (/max-age=0|expires=thu, 01.jan.1970/i.test(c) || value === '') this.jar.delete(name);
      else this.jar.set(name, value);
    }
    return r;
  }

  close(): Promise<void> {
    return this.client.close();
  }
}

/** A GET straight to the stand-in (not through the gateway), with a Cookie header: its status. */
async function directToExchange(path: string, cookie: string): Promise<number> {
  const ca = readFileSync(join(h.dir, 'upstream-ca.pem'), 'utf8');
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      `${h.standin.url}${path}`,
      { ca, servername: 'exchange-be.lab.test', headers: { cookie, host: EXTERNAL } },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

function setCookies(r: Reply): string[] {
  const v = r.headers['set-cookie'];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

let h: Harness;
beforeAll(async () => {
  h = await startHarness({
    directory: 'ldap',
    forms: true,
    policy: POLICY,
    standin: { formsUsers: FORMS_USERS },
    gateway: {
      cache: { groupTtlSeconds: 1 },
      lockout: { threshold: 4, windowSeconds: 600, sourceAccounts: 1000, sourceFailures: 100000 },
    },
  });
});
afterAll(async () => {
  await h?.close();
});

/** Requests that reached the stand-in carrying the gateway's cookie (there must be none). */
const leakedCookies = () =>
  h.standin.requests.filter((r) => String(r.headers.cookie ?? '').includes('exgate-session')).length;

describe('the sign-in page and the form', () => {
  it('lets the sign-in page and its files through without a session', async () => {
    const b = new Browser(h);
    try {
      const page = await b.get('/owa/auth/logon.aspx?replaceCurrent=1&url=https%3a%2f%2fmail.lab.test%2fowa%2f');
      expect(page.status).toBe(200);
      expect(page.text()).toContain('username');
      const rec = await h.record((r) => r.path === '/owa/auth/logon.aspx');
      expect(rec).toMatchObject({ decision: 'allow', reason: 'allowed', service: 'owa', user: null });
    } finally {
      await b.close();
    }
  });

  it('signs alice in: the form reaches Exchange, her session cookie is Secure, HttpOnly, SameSite=Lax', async () => {
    const b = new Browser(h);
    try {
      const r = await b.signIn(alice.sam, alice.password);
      expect(r.status).toBe(302);
      expect(r.headers.location).toBe(`https://${EXTERNAL}/owa/`);
      const gateway = setCookies(r).find((c) => c.startsWith('exgate-session='));
      expect(gateway).toMatch(
        /^exgate-session=[A-Za-z0-9_-]{43}; Path=\/; Max-Age=\d+; Secure; HttpOnly; SameSite=Lax$/,
      );
      expect(setCookies(r).some((c) => c.startsWith('cadata='))).toBe(true); // Exchange's own pass through
      expect(h.standin.seen((s) => s.method === 'POST' && s.url === '/owa/auth.owa' && s.user === alice.sam)).toBe(1);
      const inbox = await b.get('/owa/');
      expect(inbox.status).toBe(200);
      expect(inbox.text()).toContain('Inbox');
      const rec = await h.record((x) => x.path === '/owa/auth.owa' && x.user === 'LAB\\alice');
      expect(rec).toMatchObject({ decision: 'allow', reason: 'allowed', status: 302, detail: 'sign-in form' });
      expect(await h.record((x) => x.path === '/owa/' && x.user === 'LAB\\alice')).toMatchObject({ status: 200 });
      expect(leakedCookies()).toBe(0);
      expect(await h.running.metrics.registry.getSingleMetricAsString('exgate_sessions')).toMatch(
        /^exgate_sessions [1-9]/m,
      );
      expect(h.allLogText()).not.toContain(b.jar.get('exgate-session'));
      expect(h.allLogText()).not.toContain(alice.password);
    } finally {
      await b.close();
    }
  });

  it('sends a wrong password back to Exchange’s sign-in page with reason 2; Exchange never sees it', async () => {
    const b = new Browser(h);
    try {
      const r = await expectNotForwarded(h, () => b.signIn(alice.sam, 'not-her-password'));
      expect(r.status).toBe(302);
      expect(r.headers.location).toBe(
        `https://${EXTERNAL}/owa/auth/logon.aspx?replaceCurrent=1&reason=2&url=${encodeURIComponent(`https://${EXTERNAL}/owa/`)}`,
      );
      expect(setCookies(r).some((c) => c.startsWith('exgate-session='))).toBe(false);
      const rec = await h.record((x) => x.path === '/owa/auth.owa' && x.reason === 'bad-credentials');
      expect(rec).toMatchObject({ decision: 'deny', status: 302, user: 'LAB\\alice' });
    } finally {
      await b.close();
    }
  });

  it('shows bob, who may not use OWA from outside, the 403 page; his form never reaches Exchange', async () => {
    const b = new Browser(h);
    try {
      const r = await expectNotForwarded(h, () => b.signIn(`LAB\\${bob.sam}`, bob.password));
      expect(r.status).toBe(403);
      expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(r.headers['content-security-policy']).toContain("default-src 'none'");
      expect(r.text()).toContain('Outlook on the web is not available to this account from outside');
      expect(r.text()).not.toMatch(/<script|src=|https?:\/\//i); // no external resources, no script
      expect(await h.record((x) => x.user === 'LAB\\bob' && x.path === '/owa/auth.owa')).toMatchObject({
        decision: 'deny',
        reason: 'not-allowed',
        status: 403,
      });
    } finally {
      await b.close();
    }
  });

  it('refuses a form over 16 KiB (413), a repeated field and a form that is not urlencoded (400), unforwarded', async () => {
    const b = new Browser(h);
    try {
      const big = await expectNotForwarded(h, () =>
        b.signIn(alice.sam, alice.password, undefined, `&pad=${'x'.repeat(16_500)}`),
      );
      expect(big.status).toBe(413);
    } finally {
      await b.close();
    }
    const c = new Browser(h);
    try {
      const twice = await expectNotForwarded(h, () =>
        c.signIn(alice.sam, alice.password, undefined, `&username=${bob.sam}`),
      );
      expect(twice.status).toBe(400);
      const json = await expectNotForwarded(h, () =>
        c.send('/owa/auth.owa', {
          method: 'POST',
          body: JSON.stringify({ username: alice.sam, password: alice.password }),
          headers: { 'content-type': 'application/json' },
        }),
      );
      expect(json.status).toBe(400);
      expect(await h.record((x) => x.path === '/owa/auth.owa' && x.status === 413)).toMatchObject({
        reason: 'too-large',
      });
    } finally {
      await c.close();
    }
  });
});

describe('the form and 100 Continue', () => {
  it('answers Expect: 100-continue before reading the form, and the sign-in goes through', async () => {
    const body =
      `destination=${encodeURIComponent(`https://${EXTERNAL}/owa/`)}&flags=4&username=${alice.sam}` +
      `&password=${encodeURIComponent(alice.password)}`;
    const socket = tlsConnect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa });
    let got = '';
    socket.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.startsWith('HTTP/1.1 100 Continue\r\n\r\n') && !got.includes('302')) socket.write(body);
    });
    socket.write(
      `POST /owa/auth.owa HTTP/1.1\r\nHost: ${EXTERNAL}\r\nContent-Type: application/x-www-form-urlencoded\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nExpect: 100-continue\r\n\r\n`,
    );
    const end = Date.now() + 5000;
    const answered = () => got.includes('HTTP/1.1 302') && got.endsWith('\r\n\r\n');
    while (!answered() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    socket.destroy();
    expect(got).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 302 /);
    expect(got).toContain('exgate-session=');
    expect(got.match(/100 Continue/g)).toHaveLength(1);
  });
});

describe('found by attacking the form', () => {
  it('refuses a form whose Content-Type names another charset, or comes twice: Exchange would read other fields', async () => {
    const b = new Browser(h);
    try {
      const form = `destination=${encodeURIComponent(`https://${EXTERNAL}/owa/`)}&flags=4&username=${alice.sam}&password=x`;
      const utf16 = await expectNotForwarded(h, () =>
        b.send('/owa/auth.owa', {
          method: 'POST',
          body: form,
          headers: { 'content-type': 'application/x-www-form-urlencoded; charset=utf-16' },
        }),
      );
      expect(utf16.status).toBe(400);
      const socket = tlsConnect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa });
      const got = await rawExchange(
        socket,
        `POST /owa/auth.owa HTTP/1.1\r\nHost: ${EXTERNAL}\r\nContent-Type: application/x-www-form-urlencoded\r\n` +
          `Content-Type: text/plain\r\nContent-Length: ${form.length}\r\n\r\n${form}`,
      );
      expect(got).toMatch(/^HTTP\/1\.1 400 /);
    } finally {
      await b.close();
    }
  });

  it('never forwards a request pipelined behind a refused form, and logs it', async () => {
    const b = new Browser(h);
    try {
      await b.signIn(alice.sam, alice.password);
      const cookie = [...b.jar].map(([k, v]) => `${k}=${v}`).join('; ');
      const twice = `destination=x&flags=4&username=${alice.sam}&username=${bob.sam}&password=p`;
      const before = h.standin.requests.length;
      const socket = tlsConnect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa });
      const got = await rawExchange(
        socket,
        `POST /owa/auth.owa HTTP/1.1\r\nHost: ${EXTERNAL}\r\nContent-Type: application/x-www-form-urlencoded\r\n` +
          `Content-Length: ${twice.length}\r\n\r\n${twice}` +
          `POST /owa/pipelined-action HTTP/1.1\r\nHost: ${EXTERNAL}\r\nCookie: ${cookie}\r\nContent-Length: 2\r\n\r\n{}`,
      );
      expect(got).toMatch(/^HTTP\/1\.1 400 /);
      expect(got.match(/HTTP\/1\.1 /g)).toHaveLength(1);
      expect(h.standin.requests.slice(before).map((r) => r.url)).toEqual([]);
      expect(await h.record((x) => x.path === '/owa/pipelined-action')).toMatchObject({
        decision: 'deny',
        reason: 'bad-request',
        status: 499,
      });
    } finally {
      await b.close();
    }
  });

  it('reads a form pipelined behind a request still being judged (Node buffered it meanwhile)', async () => {
    const form = `destination=${encodeURIComponent(`https://${EXTERNAL}/owa/`)}&flags=4&username=${alice.sam}&password=${encodeURIComponent(alice.password)}`;
    const basicAuth = `Basic ${Buffer.from(`${carol.sam}:${carol.password}`).toString('base64')}`;
    const socket = tlsConnect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa });
    const got = await rawExchange(
      socket,
      `GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${basicAuth}\r\n\r\n` +
        `POST /owa/auth.owa HTTP/1.1\r\nHost: ${EXTERNAL}\r\nContent-Type: application/x-www-form-urlencoded\r\n` +
        `Content-Length: ${form.length}\r\nConnection: close\r\n\r\n${form}`,
    );
    expect(got.match(/^HTTP\/1\.1 \d+/gm)).toEqual(['HTTP/1.1 403', 'HTTP/1.1 302']); // EWS is not in this policy
    expect(got).toContain('exgate-session=');
  });

  it("ECP's sign-out with an OWA-only session ends nothing; OWA closed to everyone ends OWA sessions for good", async () => {
    const b = new Browser(h);
    try {
      await b.signIn(carol.sam, carol.password);
      expect((await expectNotForwarded(h, () => b.get('/ecp/logoff.aspx'))).status).toBe(302);
      expect((await b.get('/owa/')).status).toBe(200);
      const cookie = b.jar.get('exgate-session');
      writeFileSync(join(h.dir, 'policy.yaml'), POLICY.replace('services: [owa]', 'services: [activesync]'));
      expect(await h.running.reload()).toBe(true);
      expect((await expectNotForwarded(h, () => b.get('/owa/'))).status).toBe(403); // deny: all, at once
      writeFileSync(join(h.dir, 'policy.yaml'), POLICY);
      expect(await h.running.reload()).toBe(true);
      b.jar.set('exgate-session', cookie ?? '');
      expect((await expectNotForwarded(h, () => b.get('/owa/'))).status).toBe(302); // not revived
    } finally {
      writeFileSync(join(h.dir, 'policy.yaml'), POLICY);
      await h.running.reload();
      await b.close();
    }
  });
});

/** Writes `text` on a fresh TLS connection and returns everything read until the server closes it (or 3 s). */
async function rawExchange(socket: ReturnType<typeof tlsConnect>, text: string): Promise<string> {
  let got = '';
  socket.on('data', (d: Buffer) => {
    got += d.toString('latin1');
  });
  socket.on('error', () => {});
  socket.write(text);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 3000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  socket.destroy();
  return got;
}

describe('requests without a live session', () => {
  it('GET gets a 302 to the sign-in page with the original URL; other methods 440; nothing is forwarded', async () => {
    const b = new Browser(h);
    try {
      const get = await expectNotForwarded(h, () => b.get('/owa/?path=/mail'));
      expect(get.status).toBe(302);
      expect(get.headers.location).toBe(
        `https://${EXTERNAL}/owa/auth/logon.aspx?url=${encodeURIComponent(`https://${EXTERNAL}/owa/?path=/mail`)}&reason=0`,
      );
      const post = await expectNotForwarded(h, () =>
        b.send('/owa/service.svc?action=GetFolder', {
          method: 'POST',
          body: '{}',
          headers: { 'content-type': 'application/json' },
        }),
      );
      expect(post.status).toBe(440);
      expect(post.text()).toBe('<HTML><BODY>440 Login Timeout</BODY></HTML>');
      const ecp = await expectNotForwarded(h, () => b.get('/ecp/'));
      expect(ecp.status).toBe(302);
      // The Host as the browser sent it, port and all: the sign-in page must be on the same origin.
      const ported = await expectNotForwarded(h, () => sendOn(b.client, '/owa/', `${EXTERNAL}:8443`));
      expect(ported.headers.location).toBe(
        `https://${EXTERNAL}:8443/owa/auth/logon.aspx?url=${encodeURIComponent(`https://${EXTERNAL}:8443/owa/`)}&reason=0`,
      );
      const rec = await h.record((x) => x.path === '/owa/service.svc');
      expect(rec).toMatchObject({ decision: 'deny', reason: 'no-session', status: 440, user: null });
    } finally {
      await b.close();
    }
  });

  it('refuses a forged session ID, and Basic credentials do not stand in for a session', async () => {
    const b = new Browser(h);
    try {
      b.jar.set('exgate-session', randomBytes(32).toString('base64url'));
      expect((await expectNotForwarded(h, () => b.get('/owa/'))).status).toBe(302);
      b.jar.set('exgate-session', 'x');
      expect((await expectNotForwarded(h, () => b.get('/owa/'))).status).toBe(302);
      const basic = `Basic ${Buffer.from(`${alice.sam}:${alice.password}`).toString('base64')}`;
      const r = await expectNotForwarded(h, () => b.get('/owa/', { authorization: basic }));
      expect(r.status).toBe(302);
      expect(r.headers['www-authenticate']).toBeUndefined(); // no password pop-up in a browser
    } finally {
      await b.close();
    }
  });

  it('never passes the Authorization header of a signed-in browser to Exchange', async () => {
    const b = new Browser(h);
    try {
      await b.signIn(alice.sam, alice.password);
      const basic = `Basic ${Buffer.from(`${bob.sam}:${bob.password}`).toString('base64')}`;
      const before = h.standin.requests.length;
      expect((await b.get('/owa/', { authorization: basic })).status).toBe(200);
      const seen = h.standin.requests.slice(before);
      expect(seen.map((s) => s.headers.authorization)).toEqual([undefined]);
      expect(seen[0]?.user).toBe('LAB\\alice');
    } finally {
      await b.close();
    }
  });
});

describe('sessions end', () => {
  it('at sign-out, everywhere: the copied cookie set is refused afterwards, though Exchange would honour it', async () => {
    const b = new Browser(h);
    try {
      await b.signIn(alice.sam, alice.password);
      expect((await b.get('/owa/')).status).toBe(200);
      const copy = new Map(b.jar);
      const out = await b.get('/owa/logoff.owa');
      expect(out.status).toBe(302); // Exchange's own answer, forwarded
      expect(setCookies(out).some((c) => /^exgate-session=;.*Max-Age=0/.test(c))).toBe(true);
      expect(await h.record((x) => x.path === '/owa/logoff.owa')).toMatchObject({ detail: 'sign-out', status: 302 });

      const replay = new Browser(h);
      try {
        for (const [k, v] of copy) replay.jar.set(k, v);
        const r = await expectNotForwarded(h, () => replay.get('/owa/'));
        expect(r.status).toBe(302);
        // Exchange itself still honours the copied cadata cookies (research A5): the gateway is the revocation.
        copy.delete('exgate-session');
        expect(await directToExchange('/owa/', [...copy].map(([k, v]) => `${k}=${v}`).join('; '))).toBe(200);
      } finally {
        await replay.close();
      }
    } finally {
      await b.close();
    }
  });

  it('when the user leaves the group in AD: within groupTtlSeconds the session ends, and a new sign-in gets the 403 page', async () => {
    const u = await createUser(ldapUrl, `web${tag()}`, 'Web-Passw0rd!', ['AllowExternalAccess']);
    h.standin.addFormsUser(u.sam, u.password);
    const b = new Browser(h);
    try {
      expect((await b.signIn(u.sam, u.password)).status).toBe(302);
      expect((await b.get('/owa/')).status).toBe(200);
      await setGroupMember(ldapUrl, 'delete', 'AllowExternalAccess', u.dn);
      await new Promise((r) => setTimeout(r, 1500)); // groupTtlSeconds: 1
      const r = await expectNotForwarded(h, () => b.get('/owa/'));
      expect(r.status).toBe(302);
      expect(await h.record((x) => x.user === `LAB\\${u.sam}` && x.status === 302 && x.path === '/owa/')).toMatchObject(
        {
          reason: 'not-allowed',
        },
      );
      await setGroupMember(ldapUrl, 'add', 'AllowExternalAccess', u.dn); // back in: the old session stays ended
      await new Promise((r) => setTimeout(r, 1500));
      b.jar.set('exgate-session', b.jar.get('exgate-session') ?? '');
      expect((await expectNotForwarded(h, () => b.get('/owa/'))).status).toBe(302);
      await setGroupMember(ldapUrl, 'delete', 'AllowExternalAccess', u.dn);
      await new Promise((r) => setTimeout(r, 1500));
      expect((await expectNotForwarded(h, () => b.signIn(u.sam, u.password))).status).toBe(403);
    } finally {
      await b.close();
    }
  });

  it('when the account is disabled in AD', async () => {
    const u = await createUser(ldapUrl, `dis${tag()}`, 'Dis-Passw0rd!', ['AllowExternalAccess']);
    h.standin.addFormsUser(u.sam, u.password);
    const b = new Browser(h);
    try {
      expect((await b.signIn(u.sam, u.password)).status).toBe(302);
      await sambaAdmin(ldapUrl).run(['user', 'disable', u.sam]);
      await new Promise((r) => setTimeout(r, 1500));
      const r = await expectNotForwarded(h, () =>
        b.send('/owa/service.svc', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } }),
      );
      expect(r.status).toBe(440);
      expect(await h.record((x) => x.user === `LAB\\${u.sam}` && x.status === 440)).toMatchObject({
        reason: 'account-disabled',
      });
    } finally {
      await b.close();
    }
  });
});

describe('ECP, by its own rule', () => {
  it('alice may use the admin center and carol may not, each with a session of their own', async () => {
    const a = new Browser(h);
    const d = new Browser(h);
    try {
      const ecp = `https://${EXTERNAL}/ecp/`;
      expect((await a.signIn(alice.sam, alice.password, ecp)).status).toBe(302);
      expect((await a.get('/ecp/')).status).toBe(200);
      const denied = await expectNotForwarded(h, () => d.signIn(carol.sam, carol.password, ecp));
      expect(denied.status).toBe(403);
      expect(denied.text()).toContain('Exchange admin center is not available');
      expect((await d.signIn(carol.sam, carol.password)).status).toBe(302); // OWA is hers
      expect((await d.get('/owa/')).status).toBe(200);
      expect((await expectNotForwarded(h, () => d.get('/ecp/'))).status).toBe(302);
      expect((await d.get('/owa/')).status).toBe(200); // her OWA session lives on
      expect(
        await h.record((x) => x.user === 'LAB\\alice' && x.path === '/owa/auth.owa' && x.service === 'ecp'),
      ).toMatchObject({ rule: 'admin-center', detail: 'sign-in form' });
      expect(await h.record((x) => x.user === 'LAB\\carol' && x.path === '/ecp/')).toMatchObject({
        reason: 'not-allowed',
        service: 'ecp',
      });
    } finally {
      await a.close();
      await d.close();
    }
  });
});

describe('smart lockout on the form', () => {
  it('1,000 wrong form passwords from an unfamiliar address leave the AD account unlocked; the user still signs in at home', async () => {
    const u = await createUser(ldapUrl, `fl${tag()}`, 'Form-Passw0rd!', ['AllowExternalAccess']);
    h.standin.addFormsUser(u.sam, u.password);
    const admin = sambaAdmin(ldapUrl);
    const pso = `ExgateForm${tag()}`;
    await admin.run(['domain', 'passwordsettings', 'pso', 'create', pso, '10', '--account-lockout-threshold=10']);
    await admin.run(['domain', 'passwordsettings', 'pso', 'apply', pso, u.sam]);
    const home = new Browser(h, '127.0.0.1');
    expect((await home.signIn(u.sam, u.password)).status).toBe(302); // 127.0.0.1 becomes familiar

    const attacker = new Browser(h, '127.0.0.3');
    const guesses = watchForwarded(h);
    const statuses = new Map<number, number>();
    try {
      for (let i = 0; i < 1000; i += 10) {
        const burst = await Promise.all(Array.from({ length: 10 }, (_, j) => attacker.signIn(u.sam, `guess-${i + j}`)));
        for (const r of burst) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      }
    } finally {
      await attacker.close();
    }
    await guesses.expectNone('a wrong form password reached Exchange');
    expect(Object.fromEntries(statuses)).toEqual({ 302: 1000 });
    const ad = await readAttributes(ldapUrl, u.dn, ['badPwdCount', 'lockoutTime']);
    expect(Number(ad.badPwdCount)).toBeLessThanOrEqual(4);
    expect(Number(ad.lockoutTime || 0)).toBe(0);
    const again = new Browser(h, '127.0.0.1');
    try {
      expect((await again.signIn(u.sam, u.password)).status).toBe(302);
      expect(setCookies(await again.get('/owa/')).length).toBeGreaterThanOrEqual(0);
      expect((await again.get('/owa/')).status).toBe(200);
    } finally {
      await again.close();
      await home.close();
    }
  });
});

describe('report-only mode', () => {
  let ro: Harness;
  beforeAll(async () => {
    ro = await startHarness({
      directory: 'ldap',
      forms: true,
      policy: POLICY.replace('mode: enforce', 'mode: report-only'),
      standin: { formsUsers: FORMS_USERS },
    });
  });
  afterAll(async () => {
    await ro?.close();
  });

  it('lets bob sign in and use OWA, logged as report-only; a request without a session still needs one', async () => {
    const b = new Browser(ro);
    try {
      expect((await b.signIn(bob.sam, bob.password)).status).toBe(302);
      expect(b.jar.has('exgate-session')).toBe(true);
      expect((await b.get('/owa/')).status).toBe(200);
      expect(await ro.record((x) => x.user === 'LAB\\bob' && x.path === '/owa/auth.owa')).toMatchObject({
        decision: 'allow',
        reason: 'report-only',
        status: 302,
      });
      expect(await ro.record((x) => x.user === 'LAB\\bob' && x.path === '/owa/')).toMatchObject({
        reason: 'report-only',
      });
      b.jar.clear();
      expect((await expectNotForwarded(ro, () => b.get('/owa/'))).status).toBe(302); // authentication is not policy
    } finally {
      await b.close();
    }
  });
});

describe('session limits', () => {
  let short: Harness;
  beforeAll(async () => {
    short = await startHarness({
      directory: 'ldap',
      forms: true,
      policy: POLICY,
      standin: { formsUsers: FORMS_USERS },
      gateway: { session: { idleMinutes: 0.02, maxHours: 0.001 } }, // 1.2 s idle, 3.6 s in all
    });
  });
  afterAll(async () => {
    await short?.close();
  });

  it('an expired session ID is refused like a forged one: idle, then past its absolute limit', async () => {
    const b = new Browser(short);
    try {
      await b.signIn(alice.sam, alice.password);
      const id = b.jar.get('exgate-session');
      expect((await b.get('/owa/')).status).toBe(200);
      await new Promise((r) => setTimeout(r, 1500)); // idle past 1.2 s
      const idle = await expectNotForwarded(short, () => b.get('/owa/'));
      expect(idle.status).toBe(302);
      expect(await short.record((x) => x.path === '/owa/' && x.status === 302)).toMatchObject({ reason: 'no-session' });

      await b.signIn(alice.sam, alice.password);
      const signedIn = Date.now();
      expect(b.jar.get('exgate-session')).not.toBe(id); // a new ID at every sign-in
      while (Date.now() - signedIn < 3300) {
        expect((await b.get('/owa/')).status).toBe(200); // kept alive, never idle
        await new Promise((r) => setTimeout(r, 300));
      }
      await new Promise((r) => setTimeout(r, Math.max(0, signedIn + 3800 - Date.now())));
      expect((await expectNotForwarded(short, () => b.get('/owa/'))).status).toBe(302); // past 3.6 s in all
    } finally {
      await b.close();
    }
  });
});
