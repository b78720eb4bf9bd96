// Tests for the Exchange stand-in (src/standin/exchange.ts), run once over plain HTTP and once over
// HTTPS with a throwaway certificate. Timings use the X-Standin-* overrides so the suite stays fast.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import { Agent, Client, errors, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startExchangeStandin, type ExchangeStandin } from '../../src/standin/exchange.js';

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
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=localhost',
        '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1', '-keyout', keyPath, '-out', certPath],
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
