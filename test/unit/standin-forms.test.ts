// HTTP-level tests of the stand-in's forms sign-in (src/standin/owa-forms.ts) against Exchange's FBA as
// research/owa-pool-ha.md §A describes it: the logon page, the auth.owa POST, cadata* cookies, 302/440
// without them, sign-out that only deletes cookies. Over HTTPS with a throwaway certificate.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DEMO_CONFIG, DEMO_FORMS_USERS } from '../../src/commands/demo.js';
import { loadConfig } from '../../src/config/load.js';
import { FileDirectory } from '../../src/directory/file.js';
import { accountName } from '../../src/standin/owa-forms.js';
import { startExchangeStandin, type ExchangeStandin } from '../../src/standin/exchange.js';

const PASSWORD = 'Alice-Secret-1';
const USERS = { alice: PASSWORD, Bob: 'Bob-Secret-1' };
const FBA = ['cadata', 'cadataKey', 'cadataIV', 'cadataSig', 'cadataTTL'];
const BAD_CREDENTIALS = "The user name or password you entered isn't correct";

type RequestOptions = NonNullable<Parameters<typeof request>[1]>;

function makeCert(): { cert: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), 'standin-forms-'));
  try {
    const [certPath, keyPath] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-days',
        '1',
        '-keyout',
        keyPath,
        '-out',
        certPath,
      ],
      { stdio: 'ignore' },
    );
    return { cert: readFileSync(certPath, 'utf8'), key: readFileSync(keyPath, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const pem = makeCert();
const dispatcher = new Agent({ connect: { rejectUnauthorized: false } });
let standin: ExchangeStandin;
const logLines: string[] = [];

async function call(path: string, opts: RequestOptions = {}) {
  const res = await request(`${standin.url}${path}`, { dispatcher, ...opts });
  const text = await res.body.text();
  const raw = res.headers['set-cookie'];
  const setCookie = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  const location = String(res.headers.location ?? '');
  return { status: res.statusCode, headers: res.headers, text, setCookie, location };
}

function form(fields: Record<string, string>): RequestOptions {
  return {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields).toString(),
  };
}

function signInForm(username: string, password: string, destination = `${standin.url}/owa/`) {
  return form({ destination, flags: '4', forcedownlevel: '0', username, password, passwordText: '', isUtf8: '1' });
}

/** The `name=value` pairs of Set-Cookie lines, as a Cookie header. */
function cookieHeader(setCookie: string[]): string {
  return setCookie.map((line) => line.split(';')[0]).join('; ');
}

async function signIn(username = 'alice', password = PASSWORD): Promise<string> {
  const r = await call('/owa/auth.owa', signInForm(username, password));
  expect(r.status).toBe(302);
  return cookieHeader(r.setCookie);
}

beforeAll(async () => {
  standin = await startExchangeStandin({ tls: pem, formsUsers: USERS, log: (line) => logLines.push(line) });
});
afterAll(async () => {
  await standin.close();
  await dispatcher.close();
});
beforeEach(() => standin.reset());

describe('without a sign-in', () => {
  it('GET /owa/ is sent to logon.aspx with its absolute URL and reason=0, and recorded without a user', async () => {
    const r = await call('/owa/?ae=Folder&t=IPF.Note');
    expect(r.status).toBe(302);
    const url = `${standin.url}/owa/?ae=Folder&t=IPF.Note`;
    expect(r.location).toBe(`${standin.url}/owa/auth/logon.aspx?url=${encodeURIComponent(url)}&reason=0`);
    expect(r.setCookie).toEqual([]);
    const seen = standin.requests.map((s) => [s.method, s.url, s.user]);
    expect(seen).toEqual([['GET', '/owa/?ae=Folder&t=IPF.Note', null]]);
  });

  it('GET /ecp/ goes to the same logon page; other methods get 440 Login Timeout', async () => {
    expect((await call('/ecp/')).location).toBe(
      `${standin.url}/owa/auth/logon.aspx?url=${encodeURIComponent(`${standin.url}/ecp/`)}&reason=0`,
    );
    const r = await call('/owa/service.svc?action=GetFolder', { method: 'POST', body: '{}' });
    expect(r.status).toBe(440);
    expect(r.text).toBe('<HTML><BODY>440 Login Timeout</BODY></HTML>');
    expect(r.headers.connection).toBe('close');
  });

  it('Authorization still passes (Basic stays on beside FBA); without formsUsers /owa/ answers 401', async () => {
    const basic = `Basic ${Buffer.from('LAB\\carol:x').toString('base64')}`;
    const r = await call('/owa/', { headers: { authorization: basic } });
    expect(r.status).toBe(200);
    expect(r.text).toContain('Inbox — LAB\\carol');
    const plain = await startExchangeStandin({ tls: pem });
    try {
      const res = await request(`${plain.url}/owa/`, { dispatcher });
      await res.body.dump();
      expect(res.statusCode).toBe(401);
    } finally {
      await plain.close();
    }
  });
});

describe('logon.aspx and its resources', () => {
  it('without replaceCurrent=1 it is only a bounce to itself with replaceCurrent=1 (A1)', async () => {
    const r = await call(`/owa/auth/logon.aspx?url=${encodeURIComponent(`${standin.url}/owa/`)}&reason=0`);
    expect(r.status).toBe(200);
    expect(r.text).not.toContain('<form');
    expect(r.text).toContain('href="/owa/auth/logon.aspx?url=');
    expect(r.text).toContain('&#38;replaceCurrent=1');
  });

  it("shows the form with Exchange's fields posting to /owa/auth.owa, and the error only for reason=2", async () => {
    const dest = `${standin.url}/owa/#path=/mail`;
    const r = await call(`/owa/auth/logon.aspx?replaceCurrent=1&url=${encodeURIComponent(dest)}&reason=0`);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(r.headers['x-frame-options']).toBe('SAMEORIGIN');
    expect(r.text).toContain('action="/owa/auth.owa"');
    for (const name of ['destination', 'flags', 'forcedownlevel', 'username', 'password', 'passwordText', 'isUtf8']) {
      expect(r.text).toContain(`name="${name}"`);
    }
    expect(r.text).toContain(`name="destination" value="${dest}"`);
    expect(r.text).not.toContain(BAD_CREDENTIALS);
    expect(r.text).toContain('<title>Outlook</title>');
    const failed = await call(`/owa/auth/logon.aspx?replaceCurrent=1&reason=2&url=${encodeURIComponent(dest)}`);
    expect(failed.text).toContain(BAD_CREDENTIALS);
    const ecpUrl = encodeURIComponent(`${standin.url}/ecp/`);
    const ecp = await call(`/owa/auth/logon.aspx?replaceCurrent=1&reason=0&url=${ecpUrl}`);
    expect(ecp.text).toContain('<title>Exchange admin center</title>');
  });

  it('escapes the url parameter', async () => {
    const hostile = encodeURIComponent('"><script>x()</script>');
    const r = await call(`/owa/auth/logon.aspx?replaceCurrent=1&reason=0&url=${hostile}`);
    expect(r.text).not.toContain('<script>x()');
    expect(r.text).toContain('&#34;&#62;&#60;script&#62;');
  });

  it('loads nothing from elsewhere, and serves its css, js and svg with their content types', async () => {
    const page = (await call('/owa/auth/logon.aspx?replaceCurrent=1&reason=0')).text;
    const refs = [...page.matchAll(/(?:src|href)="([^"]*)"/g)].map((m) => m[1] ?? '');
    expect(refs.every((ref) => ref.startsWith('/'))).toBe(true);
    const types = new Map<string, string>();
    for (const ref of refs.filter((r) => r.startsWith('/owa/auth/15'))) {
      const r = await call(ref);
      expect(r.status).toBe(200);
      types.set(ref.slice(ref.lastIndexOf('.')), String(r.headers['content-type']));
    }
    expect(Object.fromEntries(types)).toEqual({
      '.css': 'text/css',
      '.js': 'application/javascript',
      '.svg': 'image/svg+xml',
    });
    expect((await call('/owa/auth/15.2.1544/themes/resources/missing.png')).status).toBe(404);
  });
});

describe('the POST to /owa/auth.owa', () => {
  it.each(['alice', 'ALICE', 'LAB\\alice', 'lab.test\\Alice', 'alice@lab.test'])(
    'signs %s in: 302 to destination with the five cadata cookies, HttpOnly, Secure, path=/',
    async (username) => {
      const destination = `${standin.url}/owa/#path=/mail/inbox`;
      const r = await call('/owa/auth.owa', signInForm(username, PASSWORD, destination));
      expect(r.status).toBe(302);
      expect(r.location).toBe(destination);
      expect(r.setCookie.map((line) => line.split('=')[0])).toEqual(FBA);
      for (const line of r.setCookie) {
        expect(line).toMatch(/^[A-Za-z]+=[A-Za-z0-9_-]{43}; path=\/; secure; HttpOnly$/);
      }
      expect(standin.requests.map((s) => [s.method, s.url, s.user])).toEqual([['POST', '/owa/auth.owa', username]]);
    },
  );

  it.each([
    ['a wrong password', 'alice', 'wrong'],
    ['an unknown user', 'mallory', PASSWORD],
    ['another domain', 'OTHER\\alice', PASSWORD],
    ['another UPN suffix', 'alice@other.test', PASSWORD],
  ])('refuses %s: 302 to logon.aspx?replaceCurrent=1&reason=2&url=<destination>, cookies deleted', async (_, u, p) => {
    const destination = `${standin.url}/ecp/?rfr=owa`;
    const r = await call('/owa/auth.owa', signInForm(u, p, destination));
    expect(r.status).toBe(302);
    expect(r.location).toBe(
      `${standin.url}/owa/auth/logon.aspx?replaceCurrent=1&reason=2&url=${encodeURIComponent(destination)}`,
    );
    expect(r.setCookie).toHaveLength(FBA.length);
    for (const line of r.setCookie) expect(line).toMatch(/^cadata[A-Za-z]*=; expires=Thu, 01-Jan-1970/);
  });

  it.each([
    ['a missing field', { destination: 'https://x/owa/', username: 'alice', password: PASSWORD }],
    [
      'a destination on another host',
      { destination: 'https://evil.test/owa/', flags: '4', username: 'alice', password: PASSWORD },
    ],
    ['a relative destination', { destination: '/owa/', flags: '4', username: 'alice', password: PASSWORD }],
  ])('answers 400 for %s, setting no cookie', async (_, fields) => {
    const r = await call('/owa/auth.owa', form(fields));
    expect(r.status).toBe(400);
    expect(r.setCookie).toEqual([]);
  });

  it('never records or logs the password or a cookie value', async () => {
    logLines.length = 0;
    const cookie = await signIn();
    await call('/owa/', { headers: { cookie } });
    await call('/owa/auth.owa', signInForm('alice', 'Wrong-Secret-2'));
    const values = cookie.split('; ').map((pair) => pair.split('=')[1] ?? '');
    const recorded = JSON.stringify(standin.requests) + logLines.join('\n');
    for (const secret of [PASSWORD, 'Wrong-Secret-2', ...values]) expect(recorded).not.toContain(secret);
    expect(standin.requests.filter((s) => s.url === '/owa/').map((s) => s.headers.cookie)).toEqual(['[redacted]']);
  });
});

describe('signed in', () => {
  it('GET /owa/ shows the inbox naming the user, and sets X-OWA-CANARY (not HttpOnly) once', async () => {
    const cookie = await signIn('alice@lab.test');
    const r = await call('/owa/', { headers: { cookie } });
    expect(r.status).toBe(200);
    expect(r.text).toContain('Inbox — LAB\\alice');
    expect((r.text.match(/<li>/g) ?? []).length).toBe(3);
    expect(r.headers['cache-control']).toBe('no-cache, no-store');
    expect(r.setCookie).toHaveLength(1);
    expect(r.setCookie[0]).toMatch(/^X-OWA-CANARY=[A-Za-z0-9_-]{43}; path=\/; secure$/);
    const again = await call('/owa/?ae=Folder', { headers: { cookie: `${cookie}; ${cookieHeader(r.setCookie)}` } });
    expect(again.text).toContain('Inbox — LAB\\alice');
    expect(again.setCookie).toEqual([]);
    expect(standin.requests.filter((s) => s.method === 'GET').map((s) => s.user)).toEqual(['LAB\\alice', 'LAB\\alice']);
  });

  it('GET /ecp/ shows the EAC with the same cookies; other requests reach the stand-in as the user', async () => {
    const cookie = await signIn();
    expect((await call('/ecp/', { headers: { cookie } })).text).toContain('Exchange admin center — LAB\\alice');
    const r = await call('/owa/service.svc?action=GetFolder', { method: 'POST', headers: { cookie }, body: '{}' });
    expect(r.status).toBe(200);
    expect(r.text).toContain('hello LAB\\alice: POST /owa/service.svc');
  });

  it('a tampered cookie set counts as none: 302 with reason=0 that deletes the cookies', async () => {
    const cookie = (await signIn()).replace(/cadataSig=[^;]+/, 'cadataSig=forged');
    const r = await call('/owa/', { headers: { cookie } });
    expect(r.status).toBe(302);
    expect(r.location).toContain('&reason=0');
    expect(r.setCookie.map((line) => line.split('=')[0])).toEqual(FBA);
  });

  it.each(['/owa/logoff.owa', '/ecp/logoff.aspx'])(
    '%s deletes the cookies and goes to the signed-out page; a copied cookie set still works (A5)',
    async (path) => {
      const cookie = await signIn();
      const r = await call(path, { headers: { cookie } });
      expect(r.status).toBe(302);
      expect(r.location).toBe(`${standin.url}/owa/auth/logoff.aspx?Cmd=logoff&src=exch`);
      expect(r.setCookie.map((line) => line.split('=')[0])).toEqual(FBA);
      for (const line of r.setCookie) expect(line).toContain('=; expires=Thu, 01-Jan-1970');
      const page = await call('/owa/auth/logoff.aspx?Cmd=logoff&src=exch');
      expect(page.text).toContain('You have signed out');
      expect((await call('/owa/', { headers: { cookie } })).text).toContain('Inbox — LAB\\alice');
    },
  );

  it('an expired cookie set: GET → reason=3, POST → 440', async () => {
    const short = await startExchangeStandin({ tls: pem, formsUsers: USERS, formsSessionMs: 150 });
    try {
      const post = await request(`${short.url}/owa/auth.owa`, {
        dispatcher,
        ...signInForm('alice', PASSWORD, `${short.url}/owa/`),
      });
      await post.body.dump();
      const raw = post.headers['set-cookie'];
      const cookie = cookieHeader(Array.isArray(raw) ? raw : [String(raw)]);
      await sleep(300);
      const get = await request(`${short.url}/owa/`, { dispatcher, headers: { cookie } });
      await get.body.dump();
      expect(get.statusCode).toBe(302);
      expect(String(get.headers.location)).toMatch(/&reason=3$/);
      const xhr = await request(`${short.url}/owa/service.svc`, { dispatcher, method: 'POST', headers: { cookie } });
      await xhr.body.dump();
      expect(xhr.statusCode).toBe(440);
    } finally {
      await short.close();
    }
  });
});

describe('names and the demo', () => {
  it.each([
    ['alice', 'alice'],
    ['LAB\\Alice', 'alice'],
    ['lab.test\\alice', 'alice'],
    ['Alice@LAB.test', 'alice'],
    ['OTHER\\alice', null],
    ['alice@other.test', null],
    ['', null],
  ])('accountName(%j) is %j', (typed, expected) => {
    expect(accountName(typed, 'LAB', 'lab.test')).toBe(expected);
  });

  it("the demo stand-in's forms passwords are the demo directory's", async () => {
    const config = loadConfig(DEMO_CONFIG);
    if (config.directory.type !== 'file') throw new Error('the demo uses the file directory');
    const directory = FileDirectory.load(config.directory);
    for (const [sam, password] of Object.entries(DEMO_FORMS_USERS)) {
      const account = await directory.findAccount({ kind: 'sam', sam } as Parameters<FileDirectory['findAccount']>[0]);
      expect(account).not.toBeNull();
      expect(await directory.verifyPassword(account!, password)).toEqual({ ok: true });
    }
  });
});
