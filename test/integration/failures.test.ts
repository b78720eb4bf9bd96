/**
 * When something behind the gateway fails: the directory (503, fast, never an allow), Exchange
 * (502 / 504), a client that goes away (the upstream request is aborted), and per-service
 * timeouts that decide when a silent upstream counts as dead.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  clientFor,
  EXTERNAL,
  basic,
  expectNotForwarded,
  freePort,
  send,
  startHarness,
  type Harness,
} from '../helpers/gateway-harness.js';
import { startTcpRelay, type TcpRelay } from '../helpers/tcp-relay.js';

const { alice } = USERS;
const creds = { user: alice.sam, password: alice.password };

describe('directory down', () => {
  let relay: TcpRelay;
  let h: Harness;
  beforeAll(async () => {
    relay = await startTcpRelay(Number(new URL(inject('ldapUrl')).port || 389));
    h = await startHarness({
      directory: 'ldap',
      directoryOverrides: {
        url: `ldap://127.0.0.1:${relay.port}`,
        connectTimeoutMs: 1000,
        timeoutMs: 1500,
        dcRetrySeconds: 1,
      },
    });
  });
  afterAll(async () => {
    await h?.close();
    await relay?.close();
  });
  afterEach(async () => {
    await relay.restore();
  });

  it('answers 503 with Retry-After when the DC refuses connections, and never forwards', async () => {
    expect((await send(h, '/owa/', creds)).status).toBe(200);
    await relay.refuse();
    const before = h.standin.requests.length;
    const started = Date.now();
    const r = await send(h, '/owa/', { user: 'carol', password: USERS.carol.password });
    expect(r.status).toBe(503);
    expect(Number(r.headers['retry-after'])).toBeGreaterThan(0);
    expect(Date.now() - started).toBeLessThan(5000); // answered, not hung
    expect(await h.record((x) => x.status === 503)).toMatchObject({
      reason: 'directory-unavailable',
      decision: 'deny',
      user: 'LAB\\carol',
    });
    expect(h.standin.requests.length).toBe(before);
  });

  it('answers 503 when the DC accepts but never answers (timeouts), and recovers without a restart', async () => {
    await relay.blackhole();
    const zoe = { user: 'zoe', password: USERS.zoe.password }; // not cached yet
    const started = Date.now();
    const r = await expectNotForwarded(h, () => send(h, '/owa/', zoe));
    expect(r.status).toBe(503);
    expect(Date.now() - started).toBeLessThan(8000);
    await relay.restore();
    await new Promise((r) => setTimeout(r, 1100)); // the DC's circuit breaker cooldown (dcRetrySeconds: 1)
    expect((await send(h, '/owa/', zoe)).status).toBe(200);
  });
});

describe('directory down at startup', () => {
  it('answers 503 with Retry-After on the port until the DC answers, forwards nothing, then serves without a restart', async () => {
    const relay = await startTcpRelay(Number(new URL(inject('ldapUrl')).port || 389));
    const h = await startHarness({
      directory: 'ldap',
      directoryOverrides: { url: `ldap://127.0.0.1:${relay.port}`, connectTimeoutMs: 1000, timeoutMs: 1500 },
    });
    await h.running.close(); // keep the stand-in and the files; serve as a process
    const port = await freePort();
    const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(h.configFile, stringify({ ...config, listen: { host: '127.0.0.1', port } }));
    await relay.refuse();
    let stdout = '';
    let stderr = '';
    const child = spawn(
      process.execPath,
      [join(import.meta.dirname, '..', '..', 'bin', 'exgate.js'), 'serve', '--config', h.configFile],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const target = { ...h, origin: `https://127.0.0.1:${port}`, port };
    try {
      await until(
        () => stderr.includes('answering 503'),
        15_000,
        () => stderr,
      );
      const r = await send(target, '/owa/', creds);
      expect(r.status).toBe(503);
      expect(Number(r.headers['retry-after'])).toBeGreaterThan(0);
      expect(h.standin.requests.length).toBe(0);
      await until(
        () => stdout.includes('"directory-unavailable"'),
        3000,
        () => stdout,
      );
      const record = JSON.parse(stdout.split('\n').find((l) => l.includes('"directory-unavailable"'))!) as Record<
        string,
        unknown
      >;
      expect(record).toMatchObject({
        decision: 'deny',
        reason: 'directory-unavailable',
        status: 503,
        path: '/owa/',
        host: EXTERNAL,
      });
      expect(stdout).not.toContain(alice.password);

      await relay.restore(); // the DC is back: the gateway starts by itself
      await until(
        async () => (await send(target, '/owa/', creds)).status === 200,
        20_000,
        () => stderr,
      );
      expect(h.standin.seen((x) => x.user === alice.sam)).toBeGreaterThan(0);
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
      await h.standin.close();
      await relay.close();
    }
  }, 60_000);
});

/** Waits until `check` holds; fails with `context()` after `timeoutMs`. */
async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, context: () => string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (
    !(await Promise.resolve()
      .then(check)
      .catch(() => false))
  ) {
    if (Date.now() > end) throw new Error(`timed out; output so far:\n${context()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('Exchange failing', () => {
  it('answers 502 when Exchange is unreachable', async () => {
    const h = await startHarness({
      directory: 'file',
      gateway: { upstream: { url: 'https://127.0.0.1:1', servername: 'exchange-be.lab.test', ca: 'upstream-ca.pem' } },
    });
    try {
      const r = await send(h, '/owa/', creds);
      expect(r.status).toBe(502);
      expect(await h.record((x) => x.status === 502)).toMatchObject({
        reason: 'upstream-error',
        decision: 'allow',
        user: 'LAB\\alice',
      });
    } finally {
      await h.close();
    }
  });

  it('refuses an Exchange certificate the configured CA did not issue (502)', async () => {
    const h = await startHarness({ directory: 'file', gateway: {} });
    try {
      // Point the trust at the gateway's own certificate instead of the stand-in's CA.
      const { writeFileSync, readFileSync } = await import('node:fs');
      const { join } = await import('node:path');
      writeFileSync(join(h.dir, 'upstream-ca.pem'), readFileSync(join(h.dir, 'gateway.crt')));
      expect(await h.running.reload()).toBe(true);
      const before = h.standin.requests.length;
      const r = await send(h, '/owa/', creds);
      expect(r.status).toBe(502);
      expect((await h.record((x) => x.status === 502)).detail).toMatch(/certificate|self.signed|verify/i);
      expect(h.standin.requests.length).toBe(before);
    } finally {
      await h.close();
    }
  });

  describe('with short per-service timeouts', () => {
    let h: Harness;
    const lines: string[] = [];
    beforeAll(async () => {
      h = await startHarness({
        directory: 'file',
        gateway: { services: { ews: { idleTimeoutSeconds: 1 }, activesync: { idleTimeoutSeconds: 2 } } },
        standin: { log: (l) => lines.push(l) },
      });
    });
    afterAll(async () => {
      await h?.close();
    });

    it('answers 504 when Exchange stays silent past the service idle timeout', async () => {
      const r = await send(h, '/ews/standin/slow-headers?ms=3000', creds);
      expect(r.status).toBe(504);
      expect((await h.record((x) => x.status === 504)).reason).toBe('upstream-timeout');
    });

    it('waits out an ActiveSync Ping whose heartbeat is inside the service timeout', async () => {
      const r = await send(h, '/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=d&DeviceType=t', {
        ...creds,
        method: 'POST',
        body: 'ping',
        headers: { 'x-standin-heartbeat-ms': '1500' },
      });
      expect(r.status).toBe(200);
      expect((await h.record((x) => x.operation === 'Ping')).upstreamMs).toBeGreaterThanOrEqual(1400);
    });

    it('aborts the upstream request when the client goes away', async () => {
      const client = clientFor(h);
      const ac = new AbortController();
      const pending = client
        .request({
          path: '/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=abort&DeviceType=t',
          method: 'POST',
          body: 'ping',
          signal: ac.signal,
          headers: {
            host: EXTERNAL,
            authorization: basic(alice.sam, alice.password),
            'x-standin-heartbeat-ms': '1800',
          },
        })
        .catch((e: unknown) => e);
      await waitFor(() => h.standin.seen((r) => r.url.includes('DeviceId=abort')) === 1);
      ac.abort();
      await pending;
      await client.destroy();
      await waitFor(() =>
        lines.some((l) => l.includes('DeviceId=abort') && l.includes('closed before the response ended')),
      );
      expect(
        (await h.record((x) => x.path.startsWith('/Microsoft-Server-ActiveSync') && x.status === 499)).decision,
      ).toBe('allow');
    });
  });
});

describe('challenges of a service that also speaks NTLM', () => {
  it('passes several WWW-Authenticate headers from Exchange as separate headers, in order, without a bare Negotiate', async () => {
    const h = await startHarness({ directory: 'file', gateway: { services: { ews: { auth: 'basic+ntlm' } } } });
    try {
      const r = await send(h, '/ews/standin/401', creds);
      expect(r.status).toBe(401);
      expect(r.headers['www-authenticate']).toEqual(['NTLM', 'Basic realm="exchange-standin"']);
    } finally {
      await h.close();
    }
  });
});

describe('slow clients', () => {
  it('answers a request whose headers trickle in past http.headersTimeoutMs with 408 and closes it', async () => {
    const h = await startHarness({ directory: 'file', gateway: { http: { headersTimeoutMs: 1000 } } });
    try {
      const { connect } = await import('node:tls');
      const started = Date.now();
      const reply = await new Promise<string>((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () => {
          socket.write(`GET /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\nX-Slow: `);
        });
        let data = '';
        const drip = setInterval(() => socket.write('a'), 200);
        socket.on('data', (d: Buffer) => {
          data += d.toString('latin1');
        });
        socket.on('close', () => {
          clearInterval(drip);
          resolve(data);
        });
        socket.on('error', (e) => {
          clearInterval(drip);
          reject(e);
        });
      });
      expect(reply.startsWith('HTTP/1.1 408')).toBe(true);
      expect(Date.now() - started).toBeLessThan(5000);
      expect(await h.record((x) => x.status === 408)).toMatchObject({ reason: 'bad-request', decision: 'deny' });
      expect(h.standin.requests.length).toBe(0);
    } finally {
      await h.close();
    }
  });
});

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
