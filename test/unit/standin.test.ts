// Tests for the Exchange stand-in (src/standin/exchange.ts), run once over plain HTTP and once over
// HTTPS with a throwaway certificate. Timings use the X-Standin-* overrides so the suite stays fast.
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { Agent, Client, errors, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startExchangeStandin, type ExchangeStandin } from '../../src/standin/exchange.js';
import {
  avPair,
  buildType2,
  hmacMd5,
  md4,
  ntowfV2,
  rc4,
  readAvPairs,
  readType3,
  upcase,
  verifyType3,
} from '../../src/standin/ntlm-server.js';

const USER = 'CONTOSO\\alice';
const PASSWORD = 'Pa55:word-with-colon';
const CREDENTIALS = Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
const AUTH = `Basic ${CREDENTIALS}`;
const CHALLENGES = ['Negotiate', 'NTLM', 'Basic realm="exchange-standin"'];
const WBXML = 'application/vnd.ms-sync.wbxml';
const EAS_PING = '/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=D1&DeviceType=Phone';
// <Ping><HeartbeatInterval>60</HeartbeatInterval></Ping>, and the stand-in's <Ping><Status>1</Status></Ping>
const PING_REQUEST = Buffer.from([0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x48, 0x03, 0x36, 0x30, 0x00, 0x01, 0x01]);
const PING_EXPIRED = Buffer.from([0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x47, 0x03, 0x31, 0x00, 0x01, 0x01]);

type RequestOptions = NonNullable<Parameters<typeof request>[1]>;
interface Pem {
  cert: string;
  key: string;
}

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

/** A self-signed P-256 certificate for 127.0.0.1, made with openssl in a temp dir that is removed again. */
function makeCert(): Pem {
  const dir = mkdtempSync(join(tmpdir(), 'standin-cert-'));
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

interface Arrival {
  at: number;
  end: number;
}

/** Reads a body to the end, noting when each chunk arrived and where it ended. */
async function collect(body: AsyncIterable<Buffer>): Promise<{ data: Buffer; arrivals: Arrival[] }> {
  const parts: Buffer[] = [];
  const arrivals: Arrival[] = [];
  let end = 0;
  for await (const chunk of body) {
    parts.push(chunk);
    end += chunk.length;
    arrivals.push({ at: Date.now(), end });
  }
  return { data: Buffer.concat(parts), arrivals };
}

/** When the chunk completing the first `tag` in `text` arrived. */
function arrivalOf(tag: string, text: string, arrivals: Arrival[]): number {
  const index = text.indexOf(tag);
  expect(index).toBeGreaterThanOrEqual(0);
  const arrival = arrivals.find((a) => a.end >= index + tag.length);
  if (!arrival) throw new Error(`no arrival for ${tag}`);
  return arrival.at;
}

/** Live Node timers in this process (the stand-in runs in-process, so its timers count too). */
const activeTimers = (): number => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;

async function waitFor(condition: () => boolean, timeoutMs = 2_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}

describe.each([{ scheme: 'http' }, { scheme: 'https' }])('Exchange stand-in over $scheme', ({ scheme }) => {
  let pem: Pem | undefined;
  let standin: ExchangeStandin;
  let agent: Agent;
  const logLines: string[] = [];

  beforeAll(async () => {
    pem = scheme === 'https' ? makeCert() : undefined;
    standin = await startExchangeStandin({ tls: pem, log: (line) => logLines.push(line) });
    agent = new Agent({ connect: { ca: pem?.cert } });
  });

  afterAll(async () => {
    await agent.close();
    await standin.close();
  });

  afterEach(() => {
    standin.reset();
    logLines.length = 0;
  });

  const call = (path: string, opts: RequestOptions = {}) =>
    request(`${standin.url}${path}`, { dispatcher: agent, ...opts });
  const authed = (headers: Record<string, string> = {}) => ({ authorization: AUTH, ...headers });

  /** The log line for the request whose URL contains `marker`, once it has been written. */
  async function logLineFor(marker: string): Promise<string> {
    let found: string | undefined;
    await waitFor(() => (found = logLines.find((line) => line.includes(marker))) !== undefined);
    return found ?? '';
  }

  /** A bare TCP/TLS connection, to see exactly which bytes arrive and when. */
  function connectRaw(): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const target = { host: '127.0.0.1', port: standin.port };
      const socket: Socket = pem
        ? tlsConnect({ ...target, ca: pem.cert }, () => resolve(socket))
        : netConnect(target, () => resolve(socket));
      socket.once('error', reject);
    });
  }

  function readAll(socket: Socket): Promise<{ firstByteAt: number; text: string }> {
    return new Promise((resolve, reject) => {
      let firstByteAt = 0;
      const parts: Buffer[] = [];
      socket.on('data', (data: Buffer) => {
        firstByteAt ||= Date.now();
        parts.push(data);
      });
      socket.once('end', () => resolve({ firstByteAt, text: Buffer.concat(parts).toString('latin1') }));
      socket.once('error', reject);
    });
  }

  it('listens on an ephemeral port with the right scheme', () => {
    expect(standin.port).toBeGreaterThan(0);
    expect(standin.url).toBe(`${scheme}://127.0.0.1:${standin.port}`);
  });

  describe('authentication and recording', () => {
    it('answers no Authorization with 401 and three WWW-Authenticate lines in order, and records it', async () => {
      const res = await call('/owa/');
      await res.body.dump();
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toEqual(CHALLENGES);
      expect(standin.seen()).toBe(1);
      expect(standin.requests[0]).toMatchObject({ method: 'GET', url: '/owa/', user: null, bodyBytes: 0 });
    });

    it('still challenges on /owa/standin/401 when the request is authorized', async () => {
      const res = await call('/OWA/standin/401', { headers: authed() });
      await res.body.dump();
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toEqual(CHALLENGES);
      expect(standin.requests[0]?.user).toBe(USER);
    });

    it('leaks the internal-server headers on every response, with a fresh request-id', async () => {
      const responses = [
        await call('/owa/'),
        await call('/owa/', { headers: authed() }),
        await call('/autodiscover/autodiscover.json?Email=alice@lab.test&Protocol=EWS'),
      ];
      const ids = new Set<unknown>();
      for (const res of responses) {
        await res.body.dump();
        expect(res.headers).toMatchObject({
          'x-feserver': 'EXCH-FE01',
          'x-beserver': 'EXCH-BE01.lab.test',
          'x-calculatedbetarget': 'exch-be01.lab.test',
          'x-diaginfo': 'EXCH-BE01',
          'x-backendhttpstatus': '200',
          'x-powered-by': 'ASP.NET',
          server: 'Microsoft-IIS/10.0',
        });
        expect(res.headers['request-id']).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
        ids.add(res.headers['request-id']);
      }
      expect(ids.size).toBe(3);
    });

    it('says hello to any other path with the user and body digest, and never stores secrets', async () => {
      const res = await call('/OWA/some/Page?x=1', {
        method: 'POST',
        body: 'hello exchange',
        headers: authed({ cookie: 'X-OWA-CANARY=canary-secret' }),
      });
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toBe(`hello ${USER}: POST /OWA/some/Page?x=1\n`);
      expect(res.headers['x-standin-body-bytes']).toBe('14');
      expect(res.headers['x-standin-body-sha256']).toBe(sha256('hello exchange'));

      const seen = standin.requests[0];
      expect(seen).toMatchObject({ user: USER, bodyBytes: 14, bodySha256: sha256('hello exchange') });
      expect(seen?.headers.authorization).toBe('[redacted]');
      expect(seen?.headers.cookie).toBe('[redacted]');
      const stored = JSON.stringify(standin.requests);
      for (const secret of [PASSWORD, 'Pa55', CREDENTIALS, 'canary-secret']) expect(stored).not.toContain(secret);
    });

    it('counts with seen(pred) and empties requests in place on reset()', async () => {
      const requests = standin.requests;
      for (const path of ['/owa/a', '/owa/b', '/ews/c']) await (await call(path, { headers: authed() })).body.dump();
      expect(standin.seen()).toBe(3);
      expect(standin.seen((r) => r.url.startsWith('/owa/'))).toBe(2);
      standin.reset();
      expect(standin.seen()).toBe(0);
      expect(standin.requests).toBe(requests);
    });

    it('does not record a request whose body never fully arrived', async () => {
      const socket = await connectRaw();
      socket.write(
        `POST /ews/exchange.asmx?t=partial HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\n` +
          'Content-Length: 100\r\n\r\n0123456789',
      );
      await sleep(50);
      socket.destroy();
      const line = await logLineFor('?t=partial');
      expect(line).toContain('(closed before the response ended)');
      expect(standin.seen()).toBe(0);
    });

    it('numbers TCP connections, so reuse and pinning are visible, and keeps them alive like IIS', async () => {
      const first = new Client(standin.url, { connect: { ca: pem?.cert } });
      const second = new Client(standin.url, { connect: { ca: pem?.cert } });
      try {
        const options = { method: 'GET' as const, headers: authed() };
        const res = await first.request({ ...options, path: '/owa/1' });
        await res.body.dump();
        expect(res.headers['keep-alive']).toBe('timeout=120');
        await (await first.request({ ...options, path: '/owa/2' })).body.dump();
        await (await second.request({ ...options, path: '/owa/3' })).body.dump();
      } finally {
        await Promise.all([first.close(), second.close()]);
      }
      const [a, b, c] = standin.requests.map((r) => r.socketId);
      expect(a).toBe(b);
      expect(c).not.toBe(a);
    });
  });

  describe('MAPI over HTTP', () => {
    const mapiHeaders = (requestType: string, extra: Record<string, string> = {}) =>
      authed({ 'content-type': 'application/mapi-http', 'x-requesttype': requestType, ...extra });

    it('streams NotificationWait: PROCESSING, PENDING every period, DONE with trailing meta headers', async () => {
      const res = await call('/mapi/emsmdb/?MailboxId=alice@lab.test', {
        method: 'POST',
        body: Buffer.alloc(8),
        headers: mapiHeaders('NotificationWait', {
          'x-requestid': '{0B5D2C3A-0000-0000-0000-000000000000}:7',
          'x-standin-pending-ms': '50',
          'x-standin-wait-ms': '300',
        }),
      });
      expect(res.statusCode).toBe(200);
      expect(res.headers).toMatchObject({
        'content-type': 'application/mapi-http',
        'transfer-encoding': 'chunked',
        'x-requesttype': 'NotificationWait',
        'x-responsecode': '0',
        'x-pendingperiod': '50',
        'x-requestid': '{0B5D2C3A-0000-0000-0000-000000000000}:7',
      });
      expect(res.headers['set-cookie']).toBeUndefined();

      const { data, arrivals } = await collect(res.body);
      const text = data.toString('latin1');
      const done = text.indexOf('DONE\r\n');
      expect(text.startsWith('PROCESSING\r\nPENDING\r\n')).toBe(true);
      expect(text.slice(0, done).split('PENDING\r\n').length - 1).toBeGreaterThanOrEqual(3);
      expect(text.slice(done)).toMatch(
        /^DONE\r\nX-ResponseCode: 0\r\nX-ElapsedTime: \d+\r\nX-StartTime: .+ GMT\r\n\r\n/,
      );
      expect(data.length - (text.indexOf('\r\n\r\n') + 4)).toBe(16);

      const processingAt = arrivalOf('PROCESSING', text, arrivals);
      const pendingAt = arrivalOf('PENDING', text, arrivals);
      const doneAt = arrivalOf('DONE', text, arrivals);
      expect(pendingAt).toBeGreaterThan(processingAt);
      expect(doneAt).toBeGreaterThan(pendingAt);
      expect(doneAt - processingAt).toBeGreaterThanOrEqual(250);
    });

    it('stops its PENDING and DONE timers when the client goes away', async () => {
      const before = activeTimers();
      const res = await call('/mapi/emsmdb/?t=gone', {
        method: 'POST',
        body: Buffer.alloc(8),
        headers: mapiHeaders('NotificationWait', { 'x-standin-pending-ms': '20', 'x-standin-wait-ms': '60000' }),
      });
      const chunks = res.body[Symbol.asyncIterator]();
      expect(String((await chunks.next()).value)).toBe('PROCESSING\r\n');
      expect(activeTimers()).toBeGreaterThanOrEqual(before + 2); // the PENDING interval and the DONE timeout
      res.body.destroy();
      const line = await logLineFor('?t=gone');
      expect(line).toMatch(/POST \/mapi\/emsmdb\/\?t=gone 200 .+ \(closed before the response ended\)$/);
      expect(activeTimers()).toBeLessThanOrEqual(before);
    });

    it('answers Connect at once with the envelope and MapiContext/MapiSequence cookies', async () => {
      const res = await call('/MAPI/emsmdb/?MailboxId=alice@lab.test', {
        method: 'POST',
        body: Buffer.alloc(32),
        headers: mapiHeaders('Connect', { 'x-standin-wait-ms': '60000' }),
      });
      expect(res.headers['x-requesttype']).toBe('Connect');
      expect(res.headers['x-pendingperiod']).toBe('30000');
      const cookies = res.headers['set-cookie'];
      expect(cookies).toEqual([
        expect.stringMatching(/^MapiContext=[^;]+; path=\/mapi\/emsmdb\/$/),
        expect.stringMatching(/^MapiSequence=[^;]+; path=\/mapi\/emsmdb\/$/),
      ]);
      const text = (await res.body.arrayBuffer().then(Buffer.from)).toString('latin1');
      expect(text).toMatch(/^PROCESSING\r\nDONE\r\nX-ResponseCode: 0\r\nX-ElapsedTime: \d+\r\n/);
    });

    it('serves the address book endpoint the same way, with cookies scoped to /mapi/nspi/', async () => {
      const res = await call('/mapi/nspi/?MailboxId=alice@lab.test', {
        method: 'POST',
        body: Buffer.alloc(8),
        headers: mapiHeaders('Bind'),
      });
      expect(await res.body.text()).toContain('DONE\r\n');
      expect(res.headers['set-cookie']).toEqual([
        expect.stringContaining('; path=/mapi/nspi/'),
        expect.stringContaining('; path=/mapi/nspi/'),
      ]);
    });
  });

  describe('ActiveSync', () => {
    it('advertises protocol versions and commands on OPTIONS', async () => {
      const res = await call('/Microsoft-Server-ActiveSync', { method: 'OPTIONS', headers: authed() });
      await res.body.dump();
      expect(res.statusCode).toBe(200);
      expect(res.headers['ms-asprotocolversions']).toBe('2.0,2.1,2.5,12.0,12.1,14.0,14.1,16.0,16.1');
      expect(String(res.headers['ms-asprotocolcommands']).split(',')).toContain('Ping');
    });

    it('reads a Ping body at once but sends no headers until the heartbeat passes', async () => {
      const started = Date.now();
      let headersAt = 0;
      const pending = call(EAS_PING, {
        method: 'POST',
        body: PING_REQUEST,
        headers: authed({ 'content-type': WBXML, 'ms-asprotocolversion': '16.1', 'x-standin-heartbeat-ms': '300' }),
      }).then((res) => {
        headersAt = Date.now();
        return res;
      });
      await waitFor(() => standin.seen((r) => r.url.includes('Cmd=Ping')) === 1);
      await sleep(100);
      expect(headersAt).toBe(0);

      const res = await pending;
      expect(headersAt - started).toBeGreaterThanOrEqual(290);
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toBe(WBXML);
      expect(Buffer.from(await res.body.arrayBuffer())).toEqual(PING_EXPIRED);
    });

    it('sends not a single byte of a Ping response before the heartbeat ends', async () => {
      const socket = await connectRaw();
      const reading = readAll(socket);
      const sentAt = Date.now();
      socket.write(
        `POST ${EAS_PING} HTTP/1.1\r\nHost: exchange\r\nAuthorization: ${AUTH}\r\nContent-Type: ${WBXML}\r\n` +
          `X-Standin-Heartbeat-Ms: 250\r\nContent-Length: ${PING_REQUEST.length}\r\nConnection: close\r\n\r\n`,
      );
      socket.write(PING_REQUEST);
      const { firstByteAt, text } = await reading;
      expect(firstByteAt - sentAt).toBeGreaterThanOrEqual(245);
      expect(text.startsWith('HTTP/1.1 200 OK\r\n')).toBe(true);
    });

    it('answers other commands at once', async () => {
      const started = Date.now();
      const res = await call('/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=D1&DeviceType=Phone', {
        method: 'POST',
        body: 'x',
        headers: authed({ 'content-type': WBXML, 'x-standin-heartbeat-ms': '5000' }),
      });
      await res.body.dump();
      expect(res.statusCode).toBe(200);
      expect(Date.now() - started).toBeLessThan(1_000);
    });
  });

  describe('EWS', () => {
    it('hashes a 4 MiB upload as it streams and reports bytes, sha256 and user', async () => {
      const payload = randomBytes(4 * 1024 * 1024);
      const res = await call('/EWS/Exchange.asmx', {
        method: 'POST',
        body: payload,
        headers: authed({ 'content-type': 'text/xml; charset=utf-8' }),
      });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toContain('application/json');
      expect(await res.body.json()).toEqual({ bytes: payload.length, sha256: sha256(payload), user: USER });
      expect(standin.requests[0]).toMatchObject({ bodyBytes: payload.length, bodySha256: sha256(payload) });
    });

    it('streams GetStreamingEvents-like keep-alive chunks when X-Standin-Stream-Ms is set', async () => {
      const started = Date.now();
      const res = await call('/ews/exchange.asmx', {
        method: 'POST',
        body: '<GetStreamingEvents/>',
        headers: authed({ 'x-standin-stream-ms': '40', 'x-standin-stream-count': '3' }),
      });
      const headersAt = Date.now();
      expect(res.headers['transfer-encoding']).toBe('chunked');
      const { data, arrivals } = await collect(res.body);
      expect(data.toString().match(/<ConnectionStatus>OK<\/ConnectionStatus>/g)).toHaveLength(3);
      expect(arrivals[0]?.at).toBeGreaterThan(headersAt);
      expect(Date.now() - started).toBeGreaterThanOrEqual(110);
    });

    it('ends the client response with an error when the upstream cuts the connection', async () => {
      const res = await call('/ews/standin/cut', { headers: authed() });
      expect(res.statusCode).toBe(200);
      await expect(res.body.text()).rejects.toThrow();
    });

    it('waits ?ms before sending anything on slow-headers', async () => {
      const started = Date.now();
      const res = await call('/ews/standin/slow-headers?ms=200', { headers: authed() });
      await res.body.dump();
      expect(Date.now() - started).toBeGreaterThanOrEqual(195);
      const impatient = call('/ews/standin/slow-headers?ms=2000', { headers: authed(), headersTimeout: 100 });
      await expect(impatient).rejects.toBeInstanceOf(errors.HeadersTimeoutError);
    });
  });

  describe('Autodiscover', () => {
    it('answers autodiscover.json anonymously, in both the query and path forms', async () => {
      for (const path of [
        '/autodiscover/autodiscover.json?Email=alice@lab.test&Protocol=EWS',
        '/Autodiscover/Autodiscover.json/v1.0/alice@lab.test?Protocol=EWS',
      ]) {
        const res = await call(path);
        expect(res.statusCode).toBe(200);
        const Url = `https://127.0.0.1:${standin.port}/EWS/Exchange.asmx`;
        expect(await res.body.json()).toEqual({ Protocol: 'EWS', Url });
      }
      expect(standin.seen((r) => r.user === null)).toBe(2);
    });

    it('answers POX autodiscover.xml naming the logon user, and challenges it without credentials', async () => {
      const body = '<Autodiscover><Request><EMailAddress>shared@lab.test</EMailAddress></Request></Autodiscover>';
      const res = await call('/autodiscover/autodiscover.xml', { method: 'POST', body, headers: authed() });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toContain('text/xml');
      expect(await res.body.text()).toContain(`<DisplayName>${USER}</DisplayName>`);

      const anonymous = await call('/autodiscover/autodiscover.xml', { method: 'POST', body });
      await anonymous.body.dump();
      expect(anonymous.statusCode).toBe(401);
    });
  });

  describe('OWA', () => {
    it('streams ?bytes=N bytes with the documented pattern to a slow reader', async () => {
      const size = 5 * 1024 * 1024 + 123;
      const res = await call(`/owa/standin/big?bytes=${size}`, { headers: authed() });
      expect(res.headers['transfer-encoding']).toBe('chunked');
      const parts: Buffer[] = [];
      for await (const chunk of res.body) {
        parts.push(chunk as Buffer);
        if (parts.length % 16 === 0) await sleep(5); // let the server's buffers fill so write() returns false
      }
      const data = Buffer.concat(parts);
      const expected = Buffer.from(Array.from({ length: size }, (_, i) => i & 0xff));
      expect(data.length).toBe(size);
      expect(data.equals(expected)).toBe(true);
    });
  });

  describe('close()', () => {
    it('does not hang on held NotificationWait and Ping requests, and clears their timers', async () => {
      const own = await startExchangeStandin({ tls: pem });
      const dispatcher = new Agent({ connect: { ca: pem?.cert } });
      try {
        const wait = request(`${own.url}/mapi/emsmdb/`, {
          dispatcher,
          method: 'POST',
          body: Buffer.alloc(8),
          headers: authed({ 'x-requesttype': 'NotificationWait' }),
        });
        const ping = request(`${own.url}${EAS_PING}`, {
          dispatcher,
          method: 'POST',
          body: PING_REQUEST,
          headers: authed(),
        });
        ping.catch(() => undefined);
        const waitRes = await wait;
        expect(waitRes.headers['x-pendingperiod']).toBe('30000');
        await waitFor(() => own.seen() === 2);

        const started = Date.now();
        await own.close();
        expect(Date.now() - started).toBeLessThan(1_000);
        await expect(waitRes.body.text()).rejects.toThrow();
        await expect(ping).rejects.toThrow();
        await own.close(); // a second close is harmless
      } finally {
        await dispatcher.destroy();
      }
    });
  });
});

// ---------------------------------------------------------------------------------------------
// NTLM (ntlmUsers): the server-side pieces, then the handshake per TCP connection with real curl
// and with messages built here (which can carry a MIC, like Windows clients).

const NTLM_USERS: Record<string, string> = {
  alice: 'Al1ce-Passw0rd!',
  bob: 'Bob:has:colons:in:it',
  zoë: 'Zoë-Pw3',
  ...Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`user${i}`, `Pw-${i}-${'x'.repeat(i)}`])),
};
const NTLM_FLAG = { UNICODE: 0x1, OEM: 0x2, NTLM: 0x200, ESS: 0x80000, TARGET_INFO: 0x800000, KEY_EXCH: 0x40000000 };
/** Type 1 flags as Windows sends them (UNICODE, OEM, REQUEST_TARGET, SIGN, LM_KEY, NTLM, ALWAYS_SIGN, ESS, VERSION, 128, KEY_EXCH, 56). */
const WINDOWS_TYPE1_FLAGS = 0xe2088297;

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');

function ntlmType1(flags = WINDOWS_TYPE1_FLAGS): Buffer {
  const msg = Buffer.alloc(40);
  msg.write('NTLMSSP\0', 0, 'latin1');
  msg.writeUInt32LE(1, 8);
  msg.writeUInt32LE(flags >>> 0, 12);
  msg.writeUInt32LE(40, 20); // empty DomainNameFields / WorkstationFields point past the header
  msg.writeUInt32LE(40, 28);
  return msg;
}

interface Type2View {
  flags: number;
  challenge: Buffer;
  targetInfo: Buffer;
}

function readType2(message: Buffer): Type2View {
  expect(message.subarray(0, 8).toString('latin1')).toBe('NTLMSSP\0');
  expect(message.readUInt32LE(8)).toBe(2);
  const infoLen = message.readUInt16LE(40);
  const infoAt = message.readUInt32LE(44);
  expect(infoAt + infoLen).toBeLessThanOrEqual(message.length);
  return {
    flags: message.readUInt32LE(20),
    challenge: message.subarray(24, 32),
    targetInfo: message.subarray(infoAt, infoAt + infoLen),
  };
}

interface Type3Spec {
  type1: Buffer;
  type2: Buffer;
  user: string;
  domain: string;
  password: string;
  /** Announce a MIC in MsvAvFlags and fill it in (with KEY_EXCH: under a fresh exported key). */
  mic?: boolean;
  keyExch?: boolean;
  /** Replace the NT response (e.g. an NTLMv1-sized one). */
  ntResponse?: Buffer;
}

/** An AUTHENTICATE_MESSAGE computed as a client would (MS-NLMP 3.1.5.1.2, 3.3.2), UNICODE, with Version and MIC fields. */
function ntlmType3(spec: Type3Spec): Buffer {
  const { challenge, targetInfo } = readType2(spec.type2);
  const pairs = readAvPairs(targetInfo);
  if (!pairs) throw new Error('bad target info');
  const clientPairs = [...pairs].map(([id, value]) => avPair(id, value));
  if (spec.mic) clientPairs.push(avPair(6, Buffer.from([2, 0, 0, 0])));
  const temp = Buffer.concat([
    Buffer.from([1, 1, 0, 0, 0, 0, 0, 0]),
    pairs.get(7) ?? Buffer.alloc(8),
    randomBytes(8),
    Buffer.alloc(4),
    ...clientPairs,
    avPair(0, Buffer.alloc(0)),
    Buffer.alloc(4),
  ]);
  const key = ntowfV2(spec.password, spec.user, spec.domain);
  const proof = hmacMd5(key, challenge, temp);
  const nt = spec.ntResponse ?? Buffer.concat([proof, temp]);
  const exported = randomBytes(16);
  const sessionKey = spec.keyExch ? rc4(hmacMd5(key, proof), exported) : Buffer.alloc(0);
  const flags = (readType2(spec.type2).flags & ~(spec.keyExch ? 0 : NTLM_FLAG.KEY_EXCH)) >>> 0;
  const payload = [
    Buffer.alloc(24), // LmChallengeResponse: Z(24) when MsvAvTimestamp is present
    nt,
    Buffer.from(spec.domain, 'utf16le'),
    Buffer.from(spec.user, 'utf16le'),
    Buffer.from('WORKSTATION', 'utf16le'),
    sessionKey,
  ];
  const header = Buffer.alloc(88);
  header.write('NTLMSSP\0', 0, 'latin1');
  header.writeUInt32LE(3, 8);
  let offset = header.length;
  payload.forEach((part, i) => {
    header.writeUInt16LE(part.length, 12 + i * 8);
    header.writeUInt16LE(part.length, 14 + i * 8);
    header.writeUInt32LE(offset, 16 + i * 8);
    offset += part.length;
  });
  header.writeUInt32LE(flags, 60);
  Buffer.from([10, 0, 0x5a, 0x29, 0, 0, 0, 15]).copy(header, 64);
  const message = Buffer.concat([header, ...payload]);
  if (spec.mic)
    hmacMd5(spec.keyExch ? exported : hmacMd5(key, proof), spec.type1, spec.type2, message).copy(message, 72);
  return message;
}

describe('NTLM server pieces (src/standin/ntlm-server.ts)', () => {
  it('computes MD4 per the RFC 1320 test suite', () => {
    const vectors: Array<[string, string]> = [
      ['', '31d6cfe0d16ae931b73c59d7e0c089c0'],
      ['a', 'bde52cb31de33e46245e05fbdbd6fb24'],
      ['abc', 'a448017aaf21d8525fc10ae87aa6729d'],
      ['message digest', 'd9130a8164549fe818874806e1c7014b'],
      ['abcdefghijklmnopqrstuvwxyz', 'd79e1c308aa5bbcdeea8ed63df412da9'],
      ['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', '043f8582f241db351ce627e153e7f0e4'],
      ['1234567890'.repeat(8), 'e33b4ddc9c38f2199c3e7b164fcc0536'],
    ];
    for (const [input, digest] of vectors) expect(md4(Buffer.from(input, 'latin1')).toString('hex')).toBe(digest);
    // the NT hash of "password", a widely published value; and lengths around the 55/56/64-byte padding edges
    expect(md4(Buffer.from('password', 'utf16le')).toString('hex')).toBe('8846f7eaee8fb117ad06bdd830b7586c');
    for (const n of [55, 56, 63, 64, 65, 119, 120]) expect(md4(Buffer.alloc(n, 0x61))).toHaveLength(16);
  });

  it('computes NTOWFv2 and NTProofStr as in the MS-NLMP 4.2.4 example', () => {
    const key = ntowfV2('Password', 'User', 'Domain');
    expect(key.toString('hex')).toBe('0c868a403bfd7a93a3001ef22ef02e3f');
    const serverChallenge = hex('0123456789abcdef');
    const temp = Buffer.concat([
      hex('0101000000000000'),
      Buffer.alloc(8), // Time
      Buffer.alloc(8, 0xaa), // ClientChallenge
      Buffer.alloc(4),
      avPair(2, Buffer.from('Domain', 'utf16le')),
      avPair(1, Buffer.from('Server', 'utf16le')),
      avPair(0, Buffer.alloc(0)),
      Buffer.alloc(4),
    ]);
    const proof = hmacMd5(key, serverChallenge, temp);
    expect(proof.toString('hex')).toBe('68cd0ab851e51c96aabc927bebef6a1c');
    expect(hmacMd5(key, proof).toString('hex')).toBe('8de40ccadbc14a82f15cb0ad0de95ca3'); // SessionBaseKey
  });

  it('upper-cases the user one code unit at a time, like Windows', () => {
    expect(upcase('alice')).toBe('ALICE');
    expect(upcase('zoë')).toBe('ZOË');
    expect(upcase('straße')).toBe('STRAßE'); // not STRASSE: the length never changes
  });

  it('builds a Type 2 with the required flags, target info and an 8-byte challenge', () => {
    const challenge = randomBytes(8);
    const type2 = buildType2({
      challenge,
      clientFlags: 0,
      domain: 'LAB',
      computer: 'EXCH-FE01',
      dnsDomain: 'lab.test',
    });
    const view = readType2(type2);
    for (const flag of [NTLM_FLAG.UNICODE, NTLM_FLAG.NTLM, NTLM_FLAG.ESS, NTLM_FLAG.TARGET_INFO]) {
      expect(view.flags & flag).toBe(flag);
    }
    expect(view.flags & NTLM_FLAG.KEY_EXCH).toBe(0); // echoed only when the client asks
    expect(
      readType2(
        buildType2({
          challenge,
          clientFlags: WINDOWS_TYPE1_FLAGS,
          domain: 'LAB',
          computer: 'X',
          dnsDomain: 'lab.test',
        }),
      ).flags & NTLM_FLAG.KEY_EXCH,
    ).toBe(NTLM_FLAG.KEY_EXCH);
    expect(view.challenge.equals(challenge)).toBe(true);
    const pairs = readAvPairs(view.targetInfo);
    expect(pairs?.get(2)?.toString('utf16le')).toBe('LAB');
    expect(pairs?.get(1)?.toString('utf16le')).toBe('EXCH-FE01');
    expect(pairs?.get(4)?.toString('utf16le')).toBe('lab.test');
    expect(pairs?.get(7)).toHaveLength(8);
    expect(view.targetInfo.subarray(-4).equals(Buffer.alloc(4))).toBe(true); // MsvAvEOL last
    // TargetName is the NetBIOS domain in UTF-16
    expect(
      type2.subarray(type2.readUInt32LE(16), type2.readUInt32LE(16) + type2.readUInt16LE(12)).toString('utf16le'),
    ).toBe('LAB');
  });

  it('verifies a Type 3 only with the right password, challenge, names and (when announced) MIC', () => {
    const type1 = ntlmType1();
    const challenge = randomBytes(8);
    const type2 = buildType2({
      challenge,
      clientFlags: WINDOWS_TYPE1_FLAGS,
      domain: 'LAB',
      computer: 'EXCH-FE01',
      dnsDomain: 'lab.test',
    });
    const handshake = { type1, type2, challenge };
    const check = (message: Buffer, password: string | null = 'Al1ce-Passw0rd!', hs = handshake) => {
      const parsed = readType3(message);
      if (!parsed) throw new Error('unreadable');
      return verifyType3(hs, message, parsed, password ?? undefined);
    };
    const base = { type1, type2, user: 'alice', domain: 'LAB', password: 'Al1ce-Passw0rd!' };
    expect(check(ntlmType3(base))).toEqual({ ok: true });
    expect(check(ntlmType3({ ...base, user: 'ALICE' }))).toEqual({ ok: true }); // the user is upper-cased in NTOWFv2
    expect(check(ntlmType3({ ...base, mic: true }))).toEqual({ ok: true });
    expect(check(ntlmType3({ ...base, mic: true, keyExch: true }))).toEqual({ ok: true });
    expect(check(ntlmType3(base), 'wrong')).toEqual({ ok: false, reason: 'wrong NTProofStr' });
    expect(check(ntlmType3(base), null)).toEqual({ ok: false, reason: 'no such account' });
    const otherChallenge = { ...handshake, challenge: randomBytes(8) };
    expect(check(ntlmType3(base), 'Al1ce-Passw0rd!', otherChallenge)).toEqual({
      ok: false,
      reason: 'wrong NTProofStr',
    });
    expect(check(ntlmType3({ ...base, ntResponse: randomBytes(24) }))).toEqual({
      ok: false,
      reason: 'not an NTLMv2 response',
    });
    expect(check(ntlmType3({ ...base, user: '', ntResponse: Buffer.alloc(0) }))).toEqual({
      ok: false,
      reason: 'anonymous',
    });

    // The domain is part of the proof: a message computed for LAB does not verify as another domain.
    const relabelled = ntlmType3(base);
    relabelled.write('X', relabelled.readUInt32LE(32), 'utf16le'); // LAB → XAB
    expect(check(relabelled)).toEqual({ ok: false, reason: 'wrong NTProofStr' });

    // With a MIC, a Type 1 or Type 2 changed on the way (say, by a proxy) is caught.
    const withMic = ntlmType3({ ...base, mic: true, keyExch: true });
    const otherType1 = ntlmType1(WINDOWS_TYPE1_FLAGS ^ 0x10); // SIGN dropped
    expect(check(withMic, 'Al1ce-Passw0rd!', { ...handshake, type1: otherType1 })).toEqual({
      ok: false,
      reason: 'wrong MIC',
    });
    const tampered = Buffer.from(withMic);
    tampered[80] = (tampered[80] ?? 0) ^ 1;
    expect(check(tampered)).toEqual({ ok: false, reason: 'wrong MIC' });
  });
});

const execFileAsync = promisify(execFile);

describe.each([{ scheme: 'http' }, { scheme: 'https' }])('Exchange stand-in NTLM over $scheme', ({ scheme }) => {
  let pem: Pem | undefined;
  let caFile: string | undefined;
  let tmp: string;
  let standin: ExchangeStandin;
  const logLines: string[] = [];

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'standin-ntlm-'));
    pem = scheme === 'https' ? makeCert() : undefined;
    if (pem) {
      caFile = join(tmp, 'ca.pem');
      writeFileSync(caFile, pem.cert);
    }
    standin = await startExchangeStandin({ tls: pem, ntlmUsers: NTLM_USERS, log: (line) => logLines.push(line) });
  });

  afterAll(async () => {
    await standin.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  afterEach(() => {
    standin.reset();
    logLines.length = 0;
  });

  /** curl --ntlm; `--fail` is not used, so a final 401 is a status, not an error. */
  async function curlNtlm(credentials: string, paths: string[] = ['/owa/'], extra: string[] = []) {
    const args = [
      '--silent',
      '--show-error',
      '--ntlm',
      '--user',
      credentials,
      ...(caFile ? ['--cacert', caFile] : []),
      ...extra,
    ];
    const urls = paths.flatMap((path, i) => [
      ...(i > 0 ? ['--next', '--ntlm', '--user', credentials, ...(caFile ? ['--cacert', caFile] : [])] : []),
      '--write-out',
      '\n%{http_code}',
      `${standin.url}${path}`,
    ]);
    const { stdout } = await execFileAsync('curl', [...args, ...urls], { timeout: 15_000 });
    const lines = stdout.split('\n');
    return { status: Number(lines.at(-1)), body: lines.slice(0, -1).join('\n') };
  }

  function client(): Client {
    return new Client(standin.url, { connect: { ca: pem?.cert }, pipelining: 1 });
  }

  async function get(c: Client, authorization?: string, path = '/owa/') {
    const res = await c.request({ method: 'GET', path, headers: authorization ? { authorization } : {} });
    return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
  }

  /** Sends a Type 1 on `c` and returns the Type 2 bytes from the 401. */
  async function negotiate(c: Client, type1 = ntlmType1(), scheme = 'NTLM'): Promise<Buffer> {
    const res = await get(c, `${scheme} ${type1.toString('base64')}`);
    expect(res.status).toBe(401);
    const header = String(res.headers['www-authenticate']);
    expect(header.startsWith(`${scheme} `)).toBe(true);
    return Buffer.from(header.slice(scheme.length + 1), 'base64');
  }

  it('challenges an anonymous request with Negotiate, NTLM and Basic', async () => {
    const c = client();
    try {
      const res = await get(c);
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toEqual(CHALLENGES);
      expect(standin.requests[0]).toMatchObject({ user: null, ntlm: null });
    } finally {
      await c.close();
    }
  });

  it('authenticates curl --ntlm per connection and records the legs, never the tokens', async () => {
    const res = await curlNtlm('LAB\\alice:Al1ce-Passw0rd!', ['/owa/', '/owa/second']);
    expect(res.status).toBe(200);
    const [type1, type3, session] = standin.requests;
    expect(type1).toMatchObject({ url: '/owa/', ntlm: 'type1', user: null });
    expect(type3).toMatchObject({ url: '/owa/', ntlm: 'type3', user: 'LAB\\alice', socketId: type1?.socketId });
    // curl reuses the authenticated connection and sends no Authorization on it: IIS runs that as alice
    expect(session).toMatchObject({
      url: '/owa/second',
      ntlm: 'session',
      user: 'LAB\\alice',
      socketId: type1?.socketId,
    });
    expect(session?.headers.authorization).toBeUndefined();
    expect(res.body).toContain(`hello LAB\\alice (socket ${type1?.socketId}): GET /owa/\n`);
    expect(res.body).toContain(`hello LAB\\alice (socket ${type1?.socketId}): GET /owa/second\n`);
    expect(standin.seen()).toBe(3);
    const stored = JSON.stringify(standin.requests);
    expect(stored).not.toContain('TlRMTVNTUA'); // base64 of "NTLMSSP"
    expect(stored).not.toContain('Al1ce');
  });

  it('refuses a wrong password with 401 and the challenges again', async () => {
    const res = await curlNtlm('LAB\\alice:not-her-password', ['/owa/'], ['--include']);
    expect(res.status).toBe(401);
    expect(standin.requests.map((r) => r.ntlm)).toEqual(['type1', 'type3']);
    expect(standin.requests[1]?.user).toBe('LAB\\alice'); // the claim is recorded even when it fails
    expect(res.body.match(/^WWW-Authenticate: .*$/gim)?.slice(-3)).toEqual(
      CHALLENGES.map((c) => `WWW-Authenticate: ${c}`),
    );
    expect(await logLineFor(logLines, 'wrong NTProofStr')).toMatch(
      /^standin GET \/owa\/ 401 LAB\\alice ntlm=wrong NTProofStr$/,
    );
  });

  it('accepts colons in the password, an empty domain, the DNS domain and non-ASCII passwords', async () => {
    expect((await curlNtlm('LAB\\bob:Bob:has:colons:in:it')).status).toBe(200);
    expect((await curlNtlm('alice:Al1ce-Passw0rd!')).body).toMatch(/^hello alice \(socket \d+\): GET \/owa\/$/m);
    expect((await curlNtlm('lab.test\\alice:Al1ce-Passw0rd!')).body).toMatch(/^hello lab\.test\\alice /m);
    expect((await curlNtlm('LAB\\user3:Pw-3-xxx')).status).toBe(200);
    expect((await curlNtlm('OTHER\\alice:Al1ce-Passw0rd!')).status).toBe(401); // a domain the stand-in does not know
    expect((await curlNtlm('LAB\\mallory:Al1ce-Passw0rd!')).status).toBe(401); // no such account
  });

  it('authenticates 10 concurrent curls with different users, each on its own connection', async () => {
    const users = Array.from({ length: 10 }, (_, i) => `user${i}`);
    const results = await Promise.all(users.map((u) => curlNtlm(`LAB\\${u}:${NTLM_USERS[u]}`, [`/owa/?u=${u}`])));
    results.forEach((res, i) => {
      expect(res.status).toBe(200);
      expect(res.body).toMatch(new RegExp(`^hello LAB\\\\user${i} \\(socket \\d+\\): GET /owa/\\?u=user${i}\n$`));
    });
    const type3s = standin.requests.filter((r) => r.ntlm === 'type3');
    expect(type3s).toHaveLength(10);
    expect(new Set(type3s.map((r) => r.socketId)).size).toBe(10);
  });

  it('accepts a Type 3 only on the connection that got its challenge', async () => {
    const [a, b] = [client(), client()];
    try {
      const type1 = ntlmType1();
      const type2 = await negotiate(a, type1);
      const type3 = `NTLM ${ntlmType3({ type1, type2, user: 'alice', domain: 'LAB', password: NTLM_USERS.alice ?? '' }).toString('base64')}`;

      // b never got a challenge, then b gets its own: a's Type 3 fails on it either way
      const noChallenge = await get(b, type3);
      expect(noChallenge.status).toBe(401);
      expect(noChallenge.headers['www-authenticate']).toEqual(CHALLENGES);
      await negotiate(b);
      expect((await get(b, type3)).status).toBe(401);
      expect((await get(b)).status).toBe(401); // and b is not authenticated

      // on a, the connection that got the challenge, the same message verifies
      const ok = await get(a, type3);
      expect(ok.status).toBe(200);
      const socketA = standin.requests[0]?.socketId;
      const type3s = standin.requests.filter((r) => r.ntlm === 'type3');
      expect(type3s.map((r) => r.socketId === socketA)).toEqual([false, false, true]);
      expect(ok.body).toBe(`hello LAB\\alice (socket ${socketA}): GET /owa/\n`);
      expect(await logLineFor(logLines, 'no challenge on this connection')).toContain('401 LAB\\alice');

      // the challenge is used up: replaying the Type 3 on a fails and drops a's session
      expect((await get(a, type3)).status).toBe(401);
      expect((await get(a)).status).toBe(401);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('keeps an authenticated connection for later anonymous requests, but never another connection', async () => {
    const [a, b] = [client(), client()];
    try {
      const type1 = ntlmType1();
      const type2 = await negotiate(a, type1);
      const type3 = ntlmType3({
        type1,
        type2,
        user: 'zoë',
        domain: 'LAB',
        password: 'Zoë-Pw3',
        mic: true,
        keyExch: true,
      });
      expect((await get(a, `NTLM ${type3.toString('base64')}`)).status).toBe(200);
      const later = await get(a, undefined, '/ews/exchange.asmx');
      expect(later.status).toBe(200);
      expect(standin.requests.at(-1)).toMatchObject({ ntlm: 'session', user: 'LAB\\zoë' });
      expect((await get(b)).status).toBe(401);
      expect(standin.requests.at(-1)).toMatchObject({ ntlm: null, user: null });
      // Basic on the same server still works as before, unchecked
      expect((await get(b, AUTH)).body).toBe(`hello ${USER}: GET /owa/\n`);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('runs the handshake under Negotiate with raw NTLMSSP, answering in the same scheme', async () => {
    const c = client();
    try {
      const type1 = ntlmType1();
      const type2 = await negotiate(c, type1, 'Negotiate');
      const type3 = ntlmType3({
        type1,
        type2,
        user: 'alice',
        domain: 'LAB',
        password: NTLM_USERS.alice ?? '',
        mic: true,
      });
      expect((await get(c, `Negotiate ${type3.toString('base64')}`)).status).toBe(200);
      expect(standin.requests.map((r) => r.ntlm)).toEqual(['type1', 'type3']);
    } finally {
      await c.close();
    }
  });

  it('catches a Type 2 altered on the way when the client sends a MIC', async () => {
    const c = client();
    try {
      const type1 = ntlmType1();
      const type2 = await negotiate(c, type1);
      // a proxy that dropped KEY_EXCH from the challenge: the client's MIC covers what it saw
      const seenByClient = Buffer.from(type2);
      seenByClient.writeUInt32LE((seenByClient.readUInt32LE(20) & ~NTLM_FLAG.KEY_EXCH) >>> 0, 20);
      const type3 = ntlmType3({
        type1,
        type2: seenByClient,
        user: 'alice',
        domain: 'LAB',
        password: NTLM_USERS.alice ?? '',
        mic: true,
      });
      expect((await get(c, `NTLM ${type3.toString('base64')}`)).status).toBe(401);
      expect(await logLineFor(logLines, 'ntlm=')).toContain('ntlm=wrong MIC');
    } finally {
      await c.close();
    }
  });

  it('answers Kerberos, SPNEGO, malformed and NTLMv1 tokens with the 401 challenges', async () => {
    const c = client();
    try {
      for (const header of [
        'Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXeg',
        'NTLM !!!',
        'NTLM',
        `NTLM ${Buffer.from('NTLMSSP\0\x02\0\0\0').toString('base64')}`,
      ]) {
        const res = await get(c, header);
        expect(res.status).toBe(401);
        expect(res.headers['www-authenticate']).toEqual(CHALLENGES);
      }
      const type1 = ntlmType1();
      const type2 = await negotiate(c, type1);
      const v1 = ntlmType3({
        type1,
        type2,
        user: 'alice',
        domain: 'LAB',
        password: NTLM_USERS.alice ?? '',
        ntResponse: randomBytes(24),
      });
      expect((await get(c, `NTLM ${v1.toString('base64')}`)).status).toBe(401);
      expect(await logLineFor(logLines, 'ntlm=not an')).toContain('ntlm=not an NTLMv2 response');
    } finally {
      await c.close();
    }
  });
});

async function logLineFor(lines: string[], marker: string): Promise<string> {
  let found: string | undefined;
  await waitFor(() => (found = lines.find((line) => line.includes(marker))) !== undefined);
  return found ?? '';
}
