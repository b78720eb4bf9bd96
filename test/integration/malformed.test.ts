/**
 * Malformed and ambiguous request heads, end to end: raw bytes over TLS to a real gateway, the
 * Samba AD DC of global-setup, the Exchange stand-in behind. Each refusal is checked three ways:
 * the status line, the access record (its request line, Host and User-Agent are the failing
 * request's own), and that the stand-in never saw the request.
 */
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AccessRecord } from '../../src/pipeline/access-log.js';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  basic,
  EXTERNAL,
  startHarness,
  TEST_POLICY,
  type Harness,
  watchForwarded,
} from '../helpers/gateway-harness.js';

const { alice } = USERS;
const AUTH = basic(alice.sam, alice.password);
/** TEST_POLICY with Outlook Anywhere allowed to AllowExternalAccess (so the gateway peeks for it). */
const RPC_ALLOWED =
  TEST_POLICY.replace('services: [rpc, ecp, powershell, mrsproxy, api]', 'services: [ecp, powershell, mrsproxy, api]') +
  '  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n';

let h: Harness;
let hRpc: Harness;
beforeAll(async () => {
  [h, hRpc] = await Promise.all([
    startHarness({ directory: 'ldap' }),
    startHarness({ directory: 'ldap', policy: RPC_ALLOWED }),
  ]);
});
afterAll(async () => {
  await Promise.all([h?.close(), hRpc?.close()]);
});

/** Writes raw bytes over TLS (SNI: the external name) and returns all that came back before close. */
function rawExchange(to: Harness, bytes: string, ms = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(
      { host: '127.0.0.1', port: to.port, servername: EXTERNAL, rejectUnauthorized: false },
      () => socket.write(bytes, 'latin1'),
    );
    let data = '';
    socket.on('data', (d: Buffer) => {
      data += d.toString('latin1');
    });
    const timer = setTimeout(() => socket.destroy(), ms);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
    socket.on('error', reject);
  });
}

/** Sends `bytes`; returns the reply and the first access record written after it was sent. */
async function refused(to: Harness, bytes: string, marker: string): Promise<{ reply: string; record: AccessRecord }> {
  const forwarded = watchForwarded(to);
  const mark = to.mark();
  const reply = await rawExchange(to, bytes);
  const record = await to.next(mark);
  expect(
    to.standin.seen((r) => r.url.includes(marker)),
    'the stand-in saw it',
  ).toBe(0);
  await forwarded.expectNone('the stand-in saw something');
  return { reply, record };
}

const statusOf = (reply: string) => reply.split('\r\n')[0];
const head = (line: string, extra = '') =>
  `${line}\r\nHost: ${EXTERNAL}\r\nUser-Agent: audit/1\r\nAuthorization: ${AUTH}\r\n${extra}`;

describe("requests Node's parser refuses are logged under their own request line", () => {
  it.each([
    [
      'two Content-Length headers',
      'POST /ews/two-cl?token=x HTTP/1.1',
      'Content-Length: 2\r\nContent-Length: 2\r\n\r\nab',
      'two-cl',
      'HPE_UNEXPECTED_CONTENT_LENGTH',
    ],
    [
      'Content-Length and chunked',
      'POST /ews/cl-te HTTP/1.1',
      'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'cl-te',
      'HPE_INVALID_TRANSFER_ENCODING',
    ],
    [
      'chunked and Content-Length',
      'POST /ews/te-cl HTTP/1.1',
      'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n',
      'te-cl',
      'HPE_INVALID_CONTENT_LENGTH',
    ],
    [
      'a header name with a space',
      'GET /owa/bad-header HTTP/1.1',
      'Bad Header: x\r\n\r\n',
      'bad-header',
      'HPE_INVALID_HEADER_TOKEN',
    ],
  ])('%s: 400, with method, path, Host and User-Agent of that request', async (_what, line, rest, marker, code) => {
    const { reply, record } = await refused(h, head(line, rest), marker);
    expect(statusOf(reply)).toBe('HTTP/1.1 400 Bad Request');
    const [method, target] = line.split(' ') as [string, string];
    expect(record).toMatchObject({
      method,
      path: target.split('?')[0],
      host: EXTERNAL,
      sni: EXTERNAL,
      userAgent: 'audit/1',
      client: '127.0.0.1',
      service: null,
      user: null,
      decision: 'deny',
      reason: 'bad-request',
      status: 400,
    });
    expect(record.detail).toContain(code);
  });

  it('logs the failing request of a pipelined pair, not the one before it', async () => {
    // The first is answered 401, which keeps the connection (a response with `Connection: close`
    // would be the last: nothing may follow it); the 400 comes after it (pipelining.test.ts).
    const first = `GET /owa/first-of-pair HTTP/1.1\r\nHost: ${EXTERNAL}\r\nUser-Agent: first/1\r\n\r\n`;
    const { reply } = await refused(
      h,
      first + head('POST /ews/pipelined HTTP/1.1', 'Content-Length: 1\r\nContent-Length: 1\r\n\r\n'),
      'pipelined',
    );
    expect([...reply.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1])).toEqual(['401', '400']);
    expect(await h.record((r) => r.path === '/ews/pipelined')).toMatchObject({
      method: 'POST',
      host: EXTERNAL,
      userAgent: 'audit/1',
      status: 400,
    });
    expect(await h.record((r) => r.path === '/owa/first-of-pair')).toMatchObject({
      method: 'GET',
      userAgent: 'first/1',
      status: 401,
    });
  });

  // Node hands clientError only the chunk it was parsing: one TLS record (16 KiB at most), and the
  // head overflows 16 KiB only in a later record, so the request line is gone. The unit tests
  // (client-error.test.ts) cover the clipped path when it is there.
  it('logs an over-long URL (431) without garbage', async () => {
    const { reply, record } = await refused(h, head(`GET /owa/${'a'.repeat(20_000)} HTTP/1.1`, '\r\n'), 'aaaa');
    expect(statusOf(reply)).toBe('HTTP/1.1 431 Request Header Fields Too Large');
    expect(record).toMatchObject({
      status: 431,
      reason: 'bad-request',
      detail: 'request headers too large',
      sni: EXTERNAL,
    });
    expect(record.method).not.toContain('aaa');
    expect(record.path).not.toContain('HTTP');
    expect(JSON.stringify(record).length).toBeLessThan(2000);
  });

  it('never logs the Authorization value of a refused head', () => {
    expect(h.allLogText()).not.toContain(AUTH.slice(6));
    expect(h.allLogText()).not.toContain(alice.password);
  });
});

describe('RPC_IN_DATA / RPC_OUT_DATA are the rpc service wherever they point', () => {
  const rpc = (method: string, target: string) =>
    `${method} ${target} HTTP/1.1\r\nHost: ${EXTERNAL}\r\nUser-Agent: MSRPC\r\nAuthorization: ${AUTH}\r\nContent-Length: 0\r\n\r\n`;

  it.each([
    ['RPC_IN_DATA', '/owa/rpc-on-owa', '/owa/rpc-on-owa'],
    ['RPC_OUT_DATA', '/ews/exchange.asmx?rpc-on-ews', '/ews/exchange.asmx'],
    ['RPC_IN_DATA', '/rpc-nowhere', '/rpc-nowhere'],
  ])('%s %s: 403 denied-by-rule as rpc when rpc is denied to all', async (method, target, path) => {
    const { reply, record } = await refused(h, rpc(method, target), 'rpc-');
    expect(statusOf(reply)).toBe('HTTP/1.1 403 Forbidden');
    expect(record).toMatchObject({
      method,
      path,
      service: 'rpc',
      decision: 'deny',
      reason: 'denied-by-rule',
      rule: 'no-legacy-no-admin',
      status: 403,
      host: EXTERNAL,
      userAgent: 'MSRPC',
    });
  });

  it.each(['RPC_IN_DATA', 'RPC_OUT_DATA'])(
    '%s /owa/ first on its connection, rpc allowed: 400 as rpc, never forwarded, no credentials checked',
    async (method) => {
      const { reply, record } = await refused(hRpc, rpc(method, '/owa/rpc-peek'), 'rpc-peek');
      expect(statusOf(reply)).toBe('HTTP/1.1 400 Bad Request');
      expect(record).toMatchObject({
        // The account is the one the header claims (INTERFACE.md: named whenever it parses), never checked.
        method,
        path: '/owa/rpc-peek',
        service: 'rpc',
        reason: 'bad-request',
        status: 400,
        user: 'LAB\\alice',
        cache: null,
        userAgent: 'MSRPC',
        detail: `${method} outside /rpc/ is never forwarded`,
      });
    },
  );

  it('RPC_IN_DATA /owa/ after another request on its connection, rpc allowed: the same answer', async () => {
    const first = `GET /owa/first-of-pair HTTP/1.1\r\nHost: ${EXTERNAL}\r\n\r\n`; // 401, keeps the connection
    const { reply } = await refused(hRpc, first + rpc('RPC_IN_DATA', '/owa/rpc-second'), 'rpc-second');
    expect([...reply.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1])).toEqual(['401', '400']);
    expect(await hRpc.record((r) => r.path === '/owa/rpc-second')).toMatchObject({
      method: 'RPC_IN_DATA',
      service: 'rpc',
      reason: 'bad-request',
      status: 400,
      userAgent: 'MSRPC',
      detail: 'RPC_IN_DATA outside /rpc/ is never forwarded',
    });
  });
});

describe('Host: exactly one in HTTP/1.1 (RFC 9112 §3.2)', () => {
  it.each([
    [
      'two Host headers',
      `GET /owa/two-hosts HTTP/1.1\r\nHost: ${EXTERNAL}\r\nHost: ${EXTERNAL}\r\nAuthorization: ${AUTH}\r\n\r\n`,
      'two-hosts',
      400,
      'more than one Host header',
    ],
    [
      'two different Host headers',
      `GET /owa/two-names HTTP/1.1\r\nHost: ${EXTERNAL}\r\nhost: evil.example\r\nAuthorization: ${AUTH}\r\n\r\n`,
      'two-names',
      400,
      'more than one Host header',
    ],
    [
      'HTTP/1.1 without Host (SNI sent)',
      `GET /owa/no-host HTTP/1.1\r\nAuthorization: ${AUTH}\r\n\r\n`,
      'no-host',
      400,
      'HTTP/1.1 request without Host',
    ],
    [
      'two Transfer-Encoding headers',
      `POST /ews/two-te HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${AUTH}\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      'two-te',
      400,
      'more than one Transfer-Encoding header',
    ],
    [
      'an HTTP/2.0 request line',
      `GET /owa/h2-line HTTP/2.0\r\nHost: ${EXTERNAL}\r\nAuthorization: ${AUTH}\r\n\r\n`,
      'h2-line',
      505,
      'HTTP version 2.0 is not served',
    ],
  ])('refuses %s, names the problem, forwards nothing', async (_what, bytes, marker, status, detail) => {
    const { reply, record } = await refused(h, bytes, marker);
    expect(statusOf(reply)).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
    expect(record).toMatchObject({
      path: bytes.split(' ')[1],
      reason: 'bad-request',
      decision: 'deny',
      status,
      detail,
    });
  });

  it('still forwards an HTTP/1.0 request without Host, under the name the client reached', async () => {
    const mark = h.mark();
    const reply = await rawExchange(h, `GET /owa/http10-no-host HTTP/1.0\r\nAuthorization: ${AUTH}\r\n\r\n`, 1000);
    expect(statusOf(reply)).toMatch(/^HTTP\/1.1 200 /);
    expect(await h.next(mark)).toMatchObject({
      path: '/owa/http10-no-host',
      status: 200,
      decision: 'allow',
      host: null,
      sni: EXTERNAL,
    });
    expect(h.standin.requests.find((r) => r.url === '/owa/http10-no-host')?.headers['host']).toBe(EXTERNAL);
  });
});

describe('CONNECT', () => {
  it('is refused with 405 and logged with its User-Agent', async () => {
    const { reply, record } = await refused(
      h,
      `CONNECT ${EXTERNAL}:443 HTTP/1.1\r\nHost: ${EXTERNAL}:443\r\nUser-Agent: curl/8\r\n\r\n`,
      EXTERNAL,
    );
    expect(statusOf(reply)).toBe('HTTP/1.1 405 Method Not Allowed');
    expect(record).toMatchObject({
      method: 'CONNECT',
      userAgent: 'curl/8',
      host: EXTERNAL,
      status: 405,
      reason: 'bad-request',
    });
  });
});
