/**
 * TLS session tickets shared by two gateways through Redis (issue 15): a client that made its session on
 * one gateway resumes on the other, and at the next rotation both change key together. Real Redis.
 */
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXTERNAL, startHarness, type Harness } from '../helpers/gateway-harness.js';
import { startRedis, type RedisProcess } from '../helpers/redis.js';

/** One TLS 1.3 connection: its session ticket (once it arrived) and whether it resumed `session`. */
async function handshake(h: Harness, session?: Buffer): Promise<{ reused: boolean; ticket: Buffer | undefined }> {
  const socket: TLSSocket = connect({
    host: '127.0.0.1',
    port: h.port,
    servername: EXTERNAL,
    rejectUnauthorized: false,
    ...(session ? { session } : {}),
  });
  let ticket: Buffer | undefined;
  socket.on('session', (s: Buffer) => {
    ticket = s;
  });
  let reused = false;
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => {
      reused = socket.isSessionReused();
      resolve();
    });
    socket.once('error', reject);
  });
  // TLS 1.3 tickets come after the handshake: one request/answer round brings them.
  socket.write(`GET /owa/auth/logon.aspx HTTP/1.1\r\nHost: ${EXTERNAL}\r\nConnection: close\r\n\r\n`);
  socket.resume();
  await new Promise((r) => socket.once('close', r));
  return { reused, ticket };
}

describe('two gateways on one Redis: TLS session tickets', () => {
  let redis: RedisProcess;
  let g1: Harness;
  let g2: Harness;
  beforeAll(async () => {
    redis = await startRedis();
    // Rotation every 3 s: the test sees a boundary without waiting long.
    const gateway = { state: { redis: { url: redis.url, keyPrefix: 'tickets:' }, instances: 2 }, tls: undefined };
    const tls = () => ({ cert: 'gateway.crt', key: 'gateway.key', selfSigned: true, ticketKeyRotationSeconds: 3 });
    g1 = await startHarness({ directory: 'file', forms: true, gateway: { ...gateway, tls: tls() } });
    g2 = await startHarness({ directory: 'file', forms: true, gateway: { ...gateway, tls: tls() } });
  });
  afterAll(async () => {
    await g1?.close();
    await g2?.close();
    await redis?.stop();
  });

  it('a session made on gateway 1 resumes on gateway 2, and the other way, after a rotation too', async () => {
    // Just past a 3 s boundary, so that the three handshakes fall into one period.
    await new Promise((r) => setTimeout(r, 3000 - (Date.now() % 3000) + 300));
    const first = await handshake(g1);
    expect(first.reused).toBe(false);
    expect(first.ticket).toBeDefined();
    const on2 = await handshake(g2, first.ticket);
    expect(on2.reused).toBe(true);
    const back = await handshake(g1, on2.ticket ?? first.ticket);
    expect(back.reused).toBe(true);

    await new Promise((r) => setTimeout(r, 3000 - (Date.now() % 3000) + 600)); // the next period: a new key
    const fresh = await handshake(g2, first.ticket);
    expect(fresh.reused).toBe(false); // a ticket of the old key: a full handshake, once
    const after = await handshake(g1, fresh.ticket);
    expect(after.reused).toBe(true); // both gateways moved to the same new key
  });
});
