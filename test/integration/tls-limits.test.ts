/**
 * TLS limits on every port the gateway answers, the 503 holding server's included: a client that
 * has not finished its handshake within `tls.handshakeTimeoutMs` (silent, stopped halfway through
 * its ClientHello, or trickling it) is disconnected, and TLS 1.2 renegotiation is refused, whether
 * or not the Outlook Anywhere peek is waiting for the first byte.
 */
import { rmSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { holdWith503 } from '../../src/runtime/holding.js';
import { loadTlsMaterial } from '../../src/runtime/tls.js';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  basic,
  EXTERNAL,
  freePort,
  send,
  startHarness,
  TEST_POLICY,
  watchForwarded,
  type Harness,
} from '../helpers/gateway-harness.js';

const HANDSHAKE_MS = 1000;
const N = 50;
/** Generous: the machine running the tests is shared. Still well short of any idle timeout. */
const MARGIN_MS = 4000;
const TLS = { cert: 'gateway.crt', key: 'gateway.key', selfSigned: true, handshakeTimeoutMs: HANDSHAKE_MS };
const RPC_ALLOWED =
  TEST_POLICY.replace('services: [rpc, ecp, powershell, mrsproxy, api]', 'services: [ecp, powershell, mrsproxy, api]') +
  '  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n';
const { alice } = USERS;

let clientHello: Buffer;

beforeAll(async () => {
  clientHello = await captureClientHello();
});

/** The first flight of a real TLS client, recorded by a plain TCP listener. */
async function captureClientHello(): Promise<Buffer> {
  return new Promise((resolve) => {
    const server = createServer((c) =>
      c.once('data', (d: Buffer) => {
        resolve(d);
        c.destroy();
        server.close();
      }),
    );
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      tlsConnect({ host: '127.0.0.1', port, servername: EXTERNAL, rejectUnauthorized: false }).on('error', () => {});
    });
  });
}

type Stall = 'silent' | 'half' | 'trickle';

/**
 * Opens `N` connections of each kind: silent after connecting, half a ClientHello then silent,
 * and a ClientHello trickled a byte every 100 ms (it would take half a minute). Resolves with how
 * many of each the server closed within the handshake timeout plus the margin.
 */
async function stalledHandshakes(port: number): Promise<Record<Stall, number> & { ms: number }> {
  const closed: Record<Stall, number> = { silent: 0, half: 0, trickle: 0 };
  const sockets: Socket[] = [];
  const timers: NodeJS.Timeout[] = [];
  const opened: Promise<void>[] = [];
  const open = (kind: Stall) => {
    const s = createConnection({ host: '127.0.0.1', port });
    sockets.push(s);
    s.on('error', () => {});
    s.once('close', () => {
      closed[kind]++;
    });
    opened.push(
      new Promise((r) =>
        s.once('connect', () => {
          if (kind === 'half') s.write(clientHello.subarray(0, clientHello.length >> 1));
          let sent = 0;
          const drip = () => {
            if (!s.destroyed) s.write(clientHello.subarray(sent, ++sent));
          };
          if (kind === 'trickle') timers.push(setInterval(drip, 100));
          r();
        }),
      ),
    );
  };
  for (let i = 0; i < N; i++) for (const kind of ['silent', 'half', 'trickle'] as const) open(kind);
  await Promise.all(opened);
  const started = Date.now();
  while (closed.silent + closed.half + closed.trickle < 3 * N && Date.now() - started < HANDSHAKE_MS + MARGIN_MS) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const ms = Date.now() - started;
  for (const t of timers) clearInterval(t);
  for (const s of sockets) s.destroy();
  return { ...closed, ms };
}

/**
 * A TLS 1.2 connection that asks to renegotiate before sending anything. Resolves with whether
 * the renegotiation went through and, if not, the error the client saw (a server that refuses
 * answers with a no_renegotiation alert, which a Node client turns into ERR_SSL_NO_RENEGOTIATION).
 */
function renegotiateFirst(port: number): Promise<{ renegotiated: boolean; code?: string; socket: TLSSocket }> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(
      {
        host: '127.0.0.1',
        port,
        servername: EXTERNAL,
        maxVersion: 'TLSv1.2',
        rejectUnauthorized: false,
      },
      () => {
        socket.off('error', reject);
        let settled = false;
        const settle = (renegotiated: boolean, code?: string) => {
          if (!settled) resolve({ renegotiated, code, socket });
          settled = true;
        };
        // The refusal, then perhaps a reset: a second error must not go unhandled.
        socket.on('error', (err: NodeJS.ErrnoException) => settle(false, err.code));
        socket.once('close', () => settle(false, 'closed'));
        const started = socket.renegotiate({ rejectUnauthorized: false }, (err: NodeJS.ErrnoException | null) => {
          settle(!err, err?.code);
        });
        if (!started) settle(false, 'not started');
      },
    );
    socket.once('error', reject);
  });
}

/**
 * Sends a request on the connection whose renegotiation was refused and resolves with whatever
 * came back once the connection is gone (or after the margin).
 */
async function requestAfterRefusal(socket: TLSSocket, marker: string): Promise<string> {
  let reply = '';
  socket.on('data', (d: Buffer) => {
    reply += d.toString('latin1');
  });
  const closed = new Promise<void>((r) => (socket.destroyed ? r() : socket.once('close', () => r())));
  if (!socket.destroyed) {
    const authorization = basic(alice.sam, alice.password);
    socket.write(`GET /owa/?${marker} HTTP/1.1\r\nHost: ${EXTERNAL}\r\nAuthorization: ${authorization}\r\n\r\n`);
  }
  await Promise.race([closed, new Promise((r) => setTimeout(r, MARGIN_MS))]);
  socket.destroy();
  return reply;
}

/** The renegotiation refusal, and a request on the same connection afterwards that goes nowhere. */
async function expectRenegotiationRefused(port: number, standin: Harness | null): Promise<void> {
  const marker = `renegotiated-${Date.now()}`;
  const watch = standin ? watchForwarded(standin, (x) => x.url.includes(marker)) : null;
  const { renegotiated, code, socket } = await renegotiateFirst(port);
  expect(renegotiated, 'the server accepted a TLS 1.2 renegotiation').toBe(false);
  expect(code).toBe('ERR_SSL_NO_RENEGOTIATION');
  expect(await requestAfterRefusal(socket, marker)).toBe('');
  await watch?.expectNone('a request sent after a refused renegotiation reached the stand-in');
}

describe.each([
  ['the Outlook Anywhere peek (rpc allowed)', RPC_ALLOWED],
  ['the plain HTTP path (rpc denied to all)', TEST_POLICY],
])('the gateway, with %s', (_name, policy) => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'file', policy, gateway: { tls: TLS } });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('closes connections that do not finish the handshake in time, and keeps serving', async () => {
    const r = await stalledHandshakes(h.port);
    expect(r, `closed after ${r.ms} ms`).toMatchObject({ silent: N, half: N, trickle: N });
    expect((await send(h, '/owa/', { user: alice.sam, password: alice.password })).status).toBe(200);
  });

  it('refuses a TLS 1.2 renegotiation before the first byte; nothing sent after it is forwarded', async () => {
    await expectRenegotiationRefused(h.port, h);
    expect((await send(h, '/owa/', { user: alice.sam, password: alice.password })).status).toBe(200);
  });

  it('still refuses renegotiation after a reload (which replaces the secure context)', async () => {
    expect(await h.running.reload()).toBe(true);
    await expectRenegotiationRefused(h.port, h);
  });
});

describe('the 503 holding server (directory down at startup)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'file', gateway: { tls: TLS } });
    await h.running.close(); // keep the files: the holding server uses the same config
  });
  afterAll(async () => {
    await h?.standin.close();
    if (h) rmSync(h.dir, { recursive: true, force: true });
  });

  async function holding() {
    const config = loadConfig(h.configFile);
    const port = await freePort();
    const access = pino({ enabled: false });
    const server = await holdWith503(config, loadTlsMaterial(config), access, { port, host: '127.0.0.1' });
    return { port, server };
  }

  it('closes connections that do not finish the handshake in time', async () => {
    const { port, server } = await holding();
    try {
      const r = await stalledHandshakes(port);
      expect(r, `closed after ${r.ms} ms`).toMatchObject({ silent: N, half: N, trickle: N });
    } finally {
      await server.close();
    }
  });

  it('refuses a TLS 1.2 renegotiation', async () => {
    const { port, server } = await holding();
    try {
      await expectRenegotiationRefused(port, null);
    } finally {
      await server.close();
    }
  });
});
