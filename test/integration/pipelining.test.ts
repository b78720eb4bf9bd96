/**
 * Pipelined requests on one TLS connection, as raw bytes: answered strictly in order, a raw refusal
 * never overtakes an earlier answer, a denied request behind an allowed one is never forwarded, and
 * Node's HPE_PAUSED (its parser paused for backpressure, then handed the next TLS record) ends the
 * connection after the answered requests instead of inventing a 400 that blames the client.
 */
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { basic, EXTERNAL, INTERNAL, startHarness, type Harness } from '../helpers/gateway-harness.js';

const { alice, bob } = USERS;

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ directory: 'ldap' });
});
afterAll(async () => {
  await h?.close();
});

const TLS = { host: '127.0.0.1', servername: EXTERNAL, rejectUnauthorized: false };
const get = (path: string, user = alice) =>
  `GET ${path} HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${basic(user.sam, user.password)}\r\n\r\n`;
/** A path the stand-in answers after 200 ms: what follows it is parsed, and answered, first. */
const slow = (marker: string) => `/ews/standin/slow-headers?ms=200&${marker}`;

interface Response {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: Buffer;
}

interface Exchange {
  readonly responses: Response[];
  /** Bytes after the last whole response. */
  readonly rest: Buffer;
  /** How the connection ended: the server closed it ('end'), a socket error, or still open when we left. */
  readonly ended: string;
}

interface Plan {
  /** Written one after the other, `gapMs` apart. */
  readonly writes: string[];
  readonly gapMs?: number;
  /** The client reads nothing until then (backpressure on the gateway). */
  readonly readFromMs?: number;
  /** Hang up once this many responses are in. */
  readonly expect?: number;
  readonly timeoutMs?: number;
}

/** Runs a plan on one TLS connection; returns the responses, parsed in the order they came. */
function exchange(plan: Plan): Promise<Exchange> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let ended = 'open';
    const done = () => {
      const parsed = parseResponses(Buffer.concat(chunks));
      resolve({ ...parsed, ended });
    };
    const socket = tlsConnect({ ...TLS, port: h.port }, () => {
      if (plan.readFromMs) {
        socket.pause();
        setTimeout(() => socket.resume(), plan.readFromMs);
      }
      plan.writes.forEach((bytes, i) => setTimeout(() => socket.write(bytes, 'latin1'), i * (plan.gapMs ?? 0)));
    });
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      const want = plan.expect;
      if (want !== undefined && parseResponses(Buffer.concat(chunks)).responses.length >= want) socket.destroy();
    });
    socket.on('end', () => {
      ended = 'end';
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      ended = `error ${err.code ?? err.message}`;
    });
    const timer = setTimeout(() => socket.destroy(), plan.timeoutMs ?? 10_000);
    socket.on('close', () => {
      clearTimeout(timer);
      done();
    });
  });
}

/** Reads HTTP/1.1 responses off raw bytes (Content-Length or chunked; no trailers). */
function parseResponses(raw: Buffer): { responses: Response[]; rest: Buffer } {
  const responses: Response[] = [];
  let at = 0;
  for (;;) {
    const headEnd = raw.indexOf('\r\n\r\n', at);
    if (headEnd < 0) break;
    const [line = '', ...fields] = raw.subarray(at, headEnd).toString('latin1').split('\r\n');
    const headers: Record<string, string> = {};
    for (const f of fields) headers[f.slice(0, f.indexOf(':')).toLowerCase()] = f.slice(f.indexOf(':') + 1).trim();
    let next = headEnd + 4;
    let body: Buffer;
    if (headers['transfer-encoding'] === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        const sizeEnd = raw.indexOf('\r\n', next);
        if (sizeEnd < 0) return { responses, rest: raw.subarray(at) };
        const size = parseInt(raw.subarray(next, sizeEnd).toString('latin1'), 16);
        if (raw.length < sizeEnd + 2 + size + 2) return { responses, rest: raw.subarray(at) };
        parts.push(raw.subarray(sizeEnd + 2, sizeEnd + 2 + size));
        next = sizeEnd + 2 + size + 2;
        if (size === 0) break;
      }
      body = Buffer.concat(parts);
    } else {
      const length = Number(headers['content-length'] ?? 0);
      if (raw.length < next + length) break;
      body = raw.subarray(next, next + length);
      next += length;
    }
    responses.push({ status: Number(line.split(' ')[1]), headers, body });
    at = next;
  }
  return { responses, rest: raw.subarray(at) };
}

/** The stand-in answers `hello <user>: GET <target>`: the request a response belongs to. */
const echoed = (r: Response) => r.body.toString('latin1');
const seenUrls = (marker: string) =>
  h.standin.requests.filter((r) => r.url.includes(marker)).map((r) => `${r.user} ${r.url}`);

describe('pipelined requests are answered strictly in order', () => {
  it('1,000 allowed GETs written at once: 1,000 real answers, in order, no 400', async () => {
    const paths = Array.from({ length: 1000 }, (_, i) => `/owa/pl-a/${i}`);
    const writes = [paths.map((p) => get(p)).join('')];
    const { responses, rest } = await exchange({ writes, expect: 1000, timeoutMs: 30_000 });
    expect(responses.map((r) => r.status)).toEqual(paths.map(() => 200));
    expect(responses.map(echoed)).toEqual(paths.map((p) => `hello alice: GET ${p}\n`));
    expect(rest.length).toBe(0);
    expect(seenUrls('/pl-a/')).toEqual(paths.map((p) => `alice ${p}`));
    expect(h.access.filter((r) => r.status === 400)).toEqual([]);
  });

  it("Node's HPE_PAUSED under backpressure: no 400, earlier answers whole, then a clean close", async () => {
    // The client reads nothing while a 16 MiB answer fills the socket, then sends 999 more GETs:
    // Node pauses its parser, TLS still hands it the next record, and Node reports HPE_PAUSED.
    // Before the fix the gateway wrote a 400 into the middle of the 16 MiB body and cut it.
    const big = 16 << 20;
    const paths = Array.from({ length: 999 }, (_, i) => `/owa/pl-p/${i + 1}`);
    const mark = h.mark();
    const { responses, rest, ended } = await exchange({
      writes: [get(`/owa/standin/big?bytes=${big}&pl-p`), paths.map((p) => get(p)).join('')],
      gapMs: 700,
      readFromMs: 1500,
      timeoutMs: 20_000,
    });
    const [first, ...others] = responses;
    expect(first?.status).toBe(200);
    expect(first?.body.length).toBe(big);
    expect(first?.body.every((b, i) => b === (i & 0xff))).toBe(true);
    expect(others.map((r) => r.status)).toEqual(others.map(() => 200));
    expect(others.map(echoed)).toEqual(paths.slice(0, others.length).map((p) => `hello alice: GET ${p}\n`));
    expect(rest.toString('latin1')).toBe('');
    // Exactly the answered requests reached Exchange: none parsed after the lost record.
    expect(seenUrls('pl-p')).toHaveLength(responses.length);
    // Where Node did pause (every run here so far: about 170 answered), it is said, and the close is clean.
    const paused = others.length < paths.length;
    expect(h.allLogText().includes('closed after the answered ones')).toBe(paused);
    if (paused) {
      expect(ended).toBe('end');
      expect(others.at(-1)?.headers.connection).toBe('close');
    }
    expect(h.access.slice(mark).filter((r) => r.status === 400)).toEqual([]);
  });

  it('allowed, denied (bob), allowed: 200, 403, 200 in order; only the allowed ones reach Exchange', async () => {
    const { responses } = await exchange({
      writes: [get(slow('pl-b=1')) + get('/owa/pl-b/2', bob) + get('/owa/pl-b/3')],
      expect: 3,
    });
    expect(responses.map((r) => r.status)).toEqual([200, 403, 200]);
    expect(echoed(responses[0] as Response)).toBe(`hello alice: GET ${slow('pl-b=1')}\n`);
    expect(echoed(responses[2] as Response)).toBe('hello alice: GET /owa/pl-b/3\n');
    expect(seenUrls('pl-b')).toEqual([`alice ${slow('pl-b=1')}`, 'alice /owa/pl-b/3']);
  });

  it('allowed, /ecp/ (denied to all), allowed: each judged on its own, the 403 keeps the connection', async () => {
    const { responses } = await exchange({
      writes: [get(slow('pl-e=1')) + get('/ecp/pl-e/2') + get('/owa/pl-e/3')],
      timeoutMs: 3000,
    });
    expect(responses.map((r) => [r.status, r.headers.connection])).toEqual([
      [200, 'keep-alive'],
      [403, 'keep-alive'],
      [200, 'keep-alive'],
    ]);
    expect(seenUrls('pl-e')).toEqual([`alice ${slow('pl-e=1')}`, 'alice /owa/pl-e/3']);
    expect(seenUrls('/ecp/')).toEqual([]);
  });

  it('allowed, an internal name (421, closes), allowed: nothing after the closing refusal forwarded', async () => {
    // The refusal says `Connection: close`, so the third request can never be answered on this
    // connection: it must not reach Exchange either (RFC 9112 §9.6).
    const internal = `GET /owa/pl-f/2 HTTP/1.1\r\nHost: ${INTERNAL}\r\nAuthorization: ${basic(alice.sam, alice.password)}\r\n\r\n`;
    const { responses, ended } = await exchange({
      writes: [get(slow('pl-f=1')) + internal + get('/owa/pl-f/3')],
      timeoutMs: 3000,
    });
    expect(responses.map((r) => [r.status, r.headers.connection])).toEqual([
      [200, 'keep-alive'],
      [421, 'close'],
    ]);
    expect(echoed(responses[0] as Response)).toBe(`hello alice: GET ${slow('pl-f=1')}\n`);
    expect(ended).toBe('end');
    expect(seenUrls('pl-f')).toEqual([`alice ${slow('pl-f=1')}`]);
    // Parsed while the 421 was undecided, never served: logged when its connection closes (gateway.ts
    // notServed); parsed after it, never handled at all (OwedResponses). Either way, never forwarded.
    await new Promise((r) => setTimeout(r, 300));
    h.mark();
    for (const r of h.access.filter((x) => x.path === '/owa/pl-f/3'))
      expect(r).toMatchObject({ decision: 'deny', status: 499 });
  });
});

describe('a raw refusal waits for the answers owed to earlier requests', () => {
  it('allowed, then a malformed request: the 200 first, then the 400, then the close', async () => {
    const mark = h.mark();
    const { responses, rest, ended } = await exchange({
      writes: [get(slow('pl-c=1')) + `GET /owa/pl-c/2 HTTP/1.1\r\nHost: ${EXTERNAL}\r\nBad Header: x\r\n\r\n`],
    });
    expect(responses.map((r) => r.status)).toEqual([200, 400]);
    expect(echoed(responses[0] as Response)).toBe(`hello alice: GET ${slow('pl-c=1')}\n`);
    expect(responses[1]?.headers.connection).toBe('close');
    expect(rest.length).toBe(0);
    expect(ended).toBe('end');
    expect(seenUrls('pl-c')).toEqual([`alice ${slow('pl-c=1')}`]);
    // Logged in the order answered, the refusal under its own request line.
    expect(h.access.slice(mark).map((r) => [r.path, r.status])).toEqual([
      ['/ews/standin/slow-headers', 200],
      ['/owa/pl-c/2', 400],
    ]);
  });

  it('allowed, then CONNECT: the 200 first, then the 405', async () => {
    const { responses, ended } = await exchange({
      writes: [get(slow('pl-d=1')) + `CONNECT ${EXTERNAL}:443 HTTP/1.1\r\nHost: ${EXTERNAL}:443\r\n\r\n`],
    });
    expect(responses.map((r) => r.status)).toEqual([200, 405]);
    expect(ended).toBe('end');
  });
});
