import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { basic, EXTERNAL, startHarness, TEST_POLICY, type Harness } from '../helpers/gateway-harness.js';
import { negTokenResp, type3 } from '../helpers/ntlm-client.js';
import { startRawExchangeBehind, type RawExchange } from '../helpers/raw-exchange.js';
import { buildType2 } from '../../src/standin/ntlm-server.js';

const POLICY =
  TEST_POLICY.replace('services: [rpc, ecp, powershell, mrsproxy, api]', 'services: [ecp, powershell, mrsproxy, api]') +
  '  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n';

const ALICE = basic(USERS.alice.sam, USERS.alice.password);
const BOB = basic(USERS.bob.sam, USERS.bob.password);
const HOST = `Host: ${EXTERNAL}\r\n`;
/** The request a smuggler wants Exchange to serve unjudged: ECP, denied to everyone. */
const SMUGGLED = `GET /ecp/ HTTP/1.1\r\n${HOST}X-Smuggled: yes\r\n\r\n`;
const EWS = 'POST /EWS/Exchange.asmx HTTP/1.1\r\n';
const RPC = 'RPC_IN_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001 HTTP/1.1\r\n';

let h: Harness;
let exchange: RawExchange;
let raw: Awaited<ReturnType<typeof startRawExchangeBehind>>;

beforeAll(async () => {
  raw = await startRawExchangeBehind();
  exchange = raw.exchange;
  h = await startHarness({
    directory: 'file',
    policy: POLICY,
    gateway: {
      upstream: raw.upstream,
      services: { mapi: { auth: 'basic+ntlm' } },
    },
  });
});
afterAll(async () => {
  await h?.close();
  await raw?.close();
});
beforeEach(() => exchange.reset());

/** Writes `bytes` on a fresh TLS connection; resolves with what came back once the gateway closed or fell silent. */
async function exchangeRaw(bytes: string | Buffer, quietMs = 800): Promise<string> {
  const socket: TLSSocket = await new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () => resolve(s));
    s.once('error', reject);
  });
  socket.on('error', () => {});
  const parts: Buffer[] = [];
  return new Promise((resolve) => {
    let timer = setTimeout(done, quietMs);
    function done() {
      socket.destroy();
      resolve(Buffer.concat(parts).toString('latin1'));
    }
    socket.on('data', (d: Buffer) => {
      parts.push(d);
      clearTimeout(timer);
      timer = setTimeout(done, quietMs);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      done();
    });
    socket.write(bytes);
  });
}

function statuses(reply: string): number[] {
  return [...reply.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
}

/** What no variant may achieve: Exchange serving the smuggled request. */
function expectNothingSmuggled(): void {
  expect(exchange.lines().filter((l) => l.includes('/ecp/'))).toEqual([]);
  expect(exchange.requests.filter((r) => r.headers.some(([n]) => n === 'x-smuggled'))).toEqual([]);
}

const body = (s: string) => `Content-Length: ${Buffer.byteLength(s)}\r\n`;
const chunked = (s: string) => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n0\r\n\r\n`;

/** Variants refused before anything is forwarded: [name, request bytes, status]. */
const REFUSED_HTTP: [string, string, number][] = [
  [
    'CL.TE',
    `${EWS}${HOST}Authorization: ${ALICE}\r\n${body(chunked(SMUGGLED))}Transfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'TE.CL',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'TE.TE two lines',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'TE.TE xchunked',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding: xchunked\r\n\r\n${chunked(SMUGGLED)}`,
    501,
  ],
  [
    'TE.TE list',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding: chunked, identity\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'TE.TE space before colon',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding : chunked\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'TE.TE obs-fold',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'TE.TE vertical tab',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding:\x0bchunked\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'two Content-Length',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nContent-Length: 0\r\n${body(SMUGGLED)}\r\n${SMUGGLED}`,
    400,
  ],
  [
    'signed Content-Length',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nContent-Length: +${SMUGGLED.length}\r\n\r\n${SMUGGLED}`,
    400,
  ],
  [
    'Connection names Content-Length',
    `${EWS}${HOST}Authorization: ${ALICE}\r\n${body(SMUGGLED)}Connection: Content-Length\r\n\r\n${SMUGGLED}`,
    400,
  ],
  [
    'Connection names Transfer-Encoding',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, Transfer-Encoding\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  [
    'Connection names Host',
    `${EWS}${HOST}Authorization: ${ALICE}\r\nContent-Length: 0\r\nConnection: Host\r\n\r\n`,
    400,
  ],
  [
    'second Connection line names Content-Length',
    `${EWS}${HOST}Authorization: ${ALICE}\r\n${body(SMUGGLED)}Connection: keep-alive\r\nConnection: content-length\r\n\r\n${SMUGGLED}`,
    400,
  ],
  [
    'header-count overflow hides a routing cookie (NTLM Type 1, MAPI)',
    `POST /mapi/emsmdb/ HTTP/1.1\r\n${HOST}Authorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==\r\n` +
      'TE: x\r\n'.repeat(997) +
      'Cookie: X-BEResource=localhost/ecp/default.flt?~1942062522\r\nContent-Length: 0\r\n\r\n',
    431,
  ],
  [
    'header-count overflow hides X-AnonResource-Backend (EWS)',
    `${EWS}${HOST}` +
      'TE: x\r\n'.repeat(997) +
      'Cookie: X-AnonResource-Backend=localhost/ecp/default.flt?~3\r\nContent-Length: 0\r\n\r\n',
    431,
  ],
  [
    'routing cookie on a second Cookie line',
    `GET /EWS/Exchange.asmx HTTP/1.1\r\n${HOST}Authorization: ${ALICE}\r\nCookie: a=b\r\nCookie: X-BEResource=localhost/ecp/x\r\n\r\n`,
    400,
  ],
  [
    'bare LF line ends',
    `GET /EWS/Exchange.asmx HTTP/1.1\n${HOST}Authorization: ${ALICE}\nContent-Length: ${SMUGGLED.length}\n\n${SMUGGLED}`,
    400,
  ],
];

describe('HTTP path: framings refused before Exchange', () => {
  it.each(REFUSED_HTTP)('%s', async (_name, request, status) => {
    const reply = await exchangeRaw(request);
    expect(statuses(reply)[0]).toBe(status);
    expect(exchange.requests).toEqual([]);
  });
});

/** NTLM structures where two readers could see two users: each refused with 400, nothing forwarded. */
describe('HTTP path: duplicated fields in SPNEGO and NTLM structures', () => {
  const type2 = buildType2({
    challenge: Buffer.alloc(8, 7),
    clientFlags: 0xe2888207,
    domain: 'LAB',
    computer: 'EX1',
    dnsDomain: 'lab.test',
  });
  const bob = type3(type2, 'bob', 'LAB', USERS.bob.password);
  const alice = type3(type2, 'alice', 'LAB', 'whatever');
  const overlapped = Buffer.from(alice);
  overlapped.copy(overlapped, 44, 36, 44); // WorkstationFields := UserNameFields
  it.each([
    [
      'two SPNEGO responseTokens (bob, then a claim of alice)',
      `Negotiate ${negTokenResp(bob, alice).toString('base64')}`,
    ],
    ['a Type 3 whose name buffers share bytes', `NTLM ${overlapped.toString('base64')}`],
  ])('%s', async (_name, authorization) => {
    const reply = await exchangeRaw(
      `POST /mapi/emsmdb/ HTTP/1.1\r\n${HOST}Authorization: ${authorization}\r\nContent-Length: 0\r\n\r\n`,
    );
    expect(statuses(reply)).toEqual([400]);
    expect(exchange.requests).toEqual([]);
  });
});

describe('HTTP path: what is forwarded is exactly what was judged', () => {
  it('a request smuggled in a declared body stays a body', async () => {
    const reply = await exchangeRaw(`${EWS}${HOST}Authorization: ${ALICE}\r\n${body(SMUGGLED)}\r\n${SMUGGLED}`);
    expect(statuses(reply)).toEqual([200]);
    expect(exchange.lines()).toEqual(['POST /EWS/Exchange.asmx']);
    expect(exchange.requests[0]?.body.toString('latin1')).toBe(SMUGGLED);
    expectNothingSmuggled();
  });

  it('a chunked body is re-framed, never passed on raw', async () => {
    const reply = await exchangeRaw(
      `${EWS}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`,
    );
    expect(statuses(reply)).toEqual([200]);
    expect(exchange.lines()).toEqual(['POST /EWS/Exchange.asmx']);
    expect(exchange.requests[0]?.body.toString('latin1')).toBe(SMUGGLED);
    expectNothingSmuggled();
  });

  it('a denied request pipelined behind allowed ones is judged on its own and never forwarded', async () => {
    const allowed = `${EWS}${HOST}Authorization: ${ALICE}\r\nContent-Length: 0\r\n\r\n`;
    const ecp = `GET /ecp/ HTTP/1.1\r\n${HOST}Authorization: ${ALICE}\r\nX-Smuggled: yes\r\n\r\n`;
    const asBob = `${EWS}${HOST}Authorization: ${BOB}\r\nContent-Length: 0\r\n\r\n`;
    const reply = await exchangeRaw(allowed + ecp + allowed + asBob + allowed);
    expect(statuses(reply)).toEqual([200, 403, 200, 403, 200]);
    expect(exchange.lines()).toEqual(['POST /EWS/Exchange.asmx', 'POST /EWS/Exchange.asmx', 'POST /EWS/Exchange.asmx']);
    expectNothingSmuggled();
  });

  it('a request smuggled after a zero-length body is judged as a request of its own', async () => {
    const reply = await exchangeRaw(`${EWS}${HOST}Authorization: ${ALICE}\r\nContent-Length: 0\r\n\r\n${SMUGGLED}`);
    expect(statuses(reply)).toEqual([200, 403]);
    expect(exchange.lines()).toEqual(['POST /EWS/Exchange.asmx']);
    expectNothingSmuggled();
  });
});

const RPC_REFUSED: [string, string, number][] = [
  [
    'Connection names Content-Length (the reported exploit)',
    `${RPC}${HOST}Authorization: ${ALICE}\r\n${body(SMUGGLED)}Connection: Content-Length\r\n\r\n${SMUGGLED}`,
    400,
  ],
  [
    'Connection names Host',
    `${RPC}${HOST}Authorization: ${ALICE}\r\n${body(SMUGGLED)}Connection: Host\r\n\r\n${SMUGGLED}`,
    400,
  ],
  [
    'Connection names Authorization',
    `${RPC}${HOST}Authorization: ${ALICE}\r\nContent-Length: 0\r\nConnection: Authorization\r\n\r\n`,
    400,
  ],
  [
    'CL.TE',
    `${RPC}${HOST}Authorization: ${ALICE}\r\n${body(chunked(SMUGGLED))}Transfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`,
    400,
  ],
  ['TE only', `${RPC}${HOST}Authorization: ${ALICE}\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`, 400],
  [
    'two Content-Length',
    `${RPC}${HOST}Authorization: ${ALICE}\r\nContent-Length: 0\r\n${body(SMUGGLED)}\r\n${SMUGGLED}`,
    400,
  ],
  [
    'header-count overflow',
    `${RPC}${HOST}Authorization: ${ALICE}\r\n${'TE: x\r\n'.repeat(997)}Cookie: X-BEResource=localhost/ecp/x\r\nContent-Length: 0\r\n\r\n`,
    431,
  ],
  [
    'routing cookie on a second Cookie line',
    `${RPC}${HOST}Authorization: ${ALICE}\r\nCookie: a=b\r\nCookie: X-BEResource=x\r\nContent-Length: 0\r\n\r\n`,
    400,
  ],
  [
    'a head over 16 KiB that ends in the same read',
    `${RPC}${HOST}Authorization: ${ALICE}\r\nX-Pad: ${'a'.repeat(20_000)}\r\nContent-Length: 0\r\n\r\n`,
    431,
  ],
];

describe('Outlook Anywhere tunnel: framings refused before Exchange', () => {
  it.each(RPC_REFUSED)('%s', async (_name, request, status) => {
    const reply = await exchangeRaw(request);
    expect(statuses(reply)[0]).toBe(status);
    expect(exchange.requests).toEqual([]);
  });
});

describe('Outlook Anywhere tunnel: exactly one declared body, with the framing it declared', () => {
  it('bytes beyond the declared body in the same read end the tunnel before anything is relayed', async () => {
    await exchangeRaw(`${RPC}${HOST}Authorization: ${ALICE}\r\nContent-Length: 5\r\n\r\nhello${SMUGGLED}`);
    expect(exchange.requests).toEqual([]);
    expectNothingSmuggled();
  });

  it('bytes beyond the declared body never reach Exchange', async () => {
    const socket: TLSSocket = await new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () => resolve(s));
      s.once('error', reject);
    });
    socket.on('error', () => {});
    socket.resume();
    const closed = new Promise((resolve) => socket.once('close', resolve));
    socket.write(`${RPC}${HOST}Authorization: ${ALICE}\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\nhello`);
    await expect.poll(() => exchange.requests.length, { timeout: 5000 }).toBe(1);
    socket.write(SMUGGLED);
    await closed;
    expect(exchange.lines()).toEqual(['RPC_IN_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001']);
    expect(exchange.requests[0]?.body.toString()).toBe('hello');
    const forwarded = exchange.requests[0]?.headers ?? [];
    expect(forwarded.filter(([n]) => n === 'content-length')).toEqual([['content-length', '5']]);
    expect(forwarded.filter(([n]) => n === 'host')).toEqual([['host', EXTERNAL]]);
    expectNothingSmuggled();
  });

  it('Expect: 100-continue is answered once allowed, and the body then flows', async () => {
    const socket: TLSSocket = await new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () => resolve(s));
      s.once('error', reject);
    });
    const got: Buffer[] = [];
    socket.on('data', (d: Buffer) => got.push(d));
    socket.write(`${RPC}${HOST}Authorization: ${ALICE}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n`);
    await expect
      .poll(() => Buffer.concat(got).toString('latin1'), { timeout: 5000 })
      .toContain('HTTP/1.1 100 Continue\r\n\r\n');
    expect(exchange.requests).toEqual([]); // the body has not been sent yet
    socket.write('hello');
    await expect.poll(() => exchange.requests.length, { timeout: 5000 }).toBe(1);
    expect(exchange.requests[0]?.body.toString()).toBe('hello');
    expect(exchange.requests[0]?.headers.some(([n]) => n === 'expect')).toBe(false);
    await expect.poll(() => Buffer.concat(got).toString('latin1'), { timeout: 5000 }).toContain('HTTP/1.1 200 OK');
    socket.destroy();
  });

  it('Expect: 100-continue from a user who is not allowed gets the refusal, never a 100', async () => {
    const reply = await exchangeRaw(
      `${RPC}${HOST}Authorization: ${BOB}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n`,
    );
    expect(reply).not.toContain('100 Continue');
    expect(statuses(reply)).toEqual([403]);
    expect(exchange.requests).toEqual([]);
  });

  it('an Expect other than 100-continue is refused with 417', async () => {
    const reply = await exchangeRaw(
      `${RPC}${HOST}Authorization: ${ALICE}\r\nContent-Length: 0\r\nExpect: 200-ok\r\n\r\n`,
    );
    expect(statuses(reply)).toEqual([417]);
    expect(exchange.requests).toEqual([]);
  });
});
