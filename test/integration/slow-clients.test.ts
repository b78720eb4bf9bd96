import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { basic, EXTERNAL, startHarness, type Harness } from '../helpers/gateway-harness.js';
import { startRawExchangeBehind, type RawExchange } from '../helpers/raw-exchange.js';

const ALICE = basic(USERS.alice.sam, USERS.alice.password);
const HOST = `Host: ${EXTERNAL}\r\n`;
const TYPE1 = 'NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==';

let h: Harness;
let exchange: RawExchange;
let raw: Awaited<ReturnType<typeof startRawExchangeBehind>>;

beforeAll(async () => {
  raw = await startRawExchangeBehind();
  exchange = raw.exchange;
  h = await startHarness({
    directory: 'file',
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

async function open(): Promise<{ socket: TLSSocket; text(): string; closed: Promise<number> }> {
  const socket: TLSSocket = await new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () => resolve(s));
    s.once('error', reject);
  });
  socket.on('error', () => {});
  const parts: Buffer[] = [];
  socket.on('data', (d: Buffer) => parts.push(d));
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())));
  return { socket, text: () => Buffer.concat(parts).toString('latin1'), closed };
}

const statuses = (reply: string) => [...reply.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

describe('an anonymous NTLM handshake leg', () => {
  it('gets 10 s for its whole body, however it trickles, and its upstream connection goes with it', async () => {
    const c = await open();
    const started = Date.now();
    c.socket.write(`POST /mapi/emsmdb/ HTTP/1.1\r\n${HOST}Authorization: ${TYPE1}\r\nContent-Length: 1000\r\n\r\n`);
    const trickle = setInterval(() => {
      if (!c.socket.destroyed) c.socket.write('x');
    }, 500);
    try {
      const closedAt = await c.closed;
      expect(closedAt - started).toBeGreaterThanOrEqual(9_000);
      expect(closedAt - started).toBeLessThan(14_000);
    } finally {
      clearInterval(trickle);
    }
    expect(statuses(c.text())).toEqual([408]);
    await expect.poll(() => exchange.open(), { timeout: 3000 }).toBe(0);
    const record = await h.record((r) => r.path === '/mapi/emsmdb/' && r.status === 408);
    expect(record.detail).toBe('NTLM handshake body not received in time');
  }, 20_000);
});

describe('a refusal before a small body that arrives in a second write', () => {
  it('reads and drops the body and keeps the connection for the next request', async () => {
    const c = await open();
    const soap = '<soap:Envelope/>';
    c.socket.write(`POST /EWS/Exchange.asmx HTTP/1.1\r\n${HOST}Content-Length: ${soap.length}\r\n\r\n`);
    await expect.poll(() => statuses(c.text()), { timeout: 3000 }).toEqual([401]);
    expect(c.text()).not.toMatch(/connection: close/i);
    c.socket.write(soap);
    c.socket.write(
      `POST /EWS/Exchange.asmx HTTP/1.1\r\n${HOST}Authorization: ${ALICE}\r\nContent-Length: ${soap.length}\r\n\r\n${soap}`,
    );
    await expect.poll(() => statuses(c.text()), { timeout: 3000 }).toEqual([401, 200]);
    expect(exchange.requests.map((r) => r.body.toString())).toEqual([soap]);
    c.socket.destroy();
  });

  it('cuts the connection when the rest of the body never comes', async () => {
    const c = await open();
    c.socket.write(`POST /EWS/Exchange.asmx HTTP/1.1\r\n${HOST}Content-Length: 100\r\n\r\n`);
    const started = Date.now();
    await expect.poll(() => statuses(c.text()), { timeout: 3000 }).toEqual([401]);
    expect((await c.closed) - started).toBeLessThan(8_000);
    expect(exchange.requests).toEqual([]);
  }, 15_000);

  it.each([
    ['a large body', 'Content-Length: 1000000\r\n'],
    ['a chunked body', 'Transfer-Encoding: chunked\r\n'],
    ['a body held back for 100 Continue', 'Content-Length: 10\r\nExpect: 100-continue\r\n'],
  ])('still closes for %s', async (_what, framing) => {
    const c = await open();
    c.socket.write(`POST /EWS/Exchange.asmx HTTP/1.1\r\n${HOST}${framing}\r\n`);
    await expect.poll(() => statuses(c.text()), { timeout: 3000 }).toEqual([401]);
    expect(c.text()).toMatch(/connection: close/i);
    expect(exchange.requests).toEqual([]);
    c.socket.destroy();
  });
});
