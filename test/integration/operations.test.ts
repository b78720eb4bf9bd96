/**
 * Running it like infrastructure: reloads that keep the old state on error and take effect when
 * valid, the admin listener's health, readiness and metrics, `exgate explain` against the real
 * decisions, and a graceful stop during a long-poll.
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decide } from '../../src/commands/explain.js';
import type { Service } from '../../src/pipeline/services.js';
import { SERVICE_ACCOUNT, USERS } from '../helpers/ad-fixtures.js';
import {
  basic,
  clientFor,
  expectNotForwarded,
  EXTERNAL,
  send,
  startHarness,
  TEST_POLICY,
  type Harness,
  watchForwarded,
} from '../helpers/gateway-harness.js';

const until = async (cond: () => boolean | Promise<boolean>, ms = 5000) => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe('hot reload', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('keeps serving under the old policy when the new one is broken, and logs file and key', async () => {
    const henry = { user: 'henry', password: USERS.henry.password };
    expect((await expectNotForwarded(h, () => send(h, '/owa/', henry))).status).toBe(403);
    writeFileSync(
      join(h.dir, 'policy.yaml'),
      TEST_POLICY.replace('groups: [AllowExternalAccess]', 'groups: [NoSuchGroup]'),
    );
    await until(() => h.allLogText().includes('reload failed'));
    expect(h.allLogText()).toMatch(
      /policy\.yaml.*rules\[1\]\.allow\.groups\[0\]|rules\[1\]\.allow\.groups\[0\].*NoSuchGroup/,
    );
    expect((await send(h, '/owa/', { user: 'alice', password: USERS.alice.password })).status).toBe(200);
    expect((await expectNotForwarded(h, () => send(h, '/owa/', henry))).status).toBe(403);
  });

  it('takes a new group into effect on SIGHUP-style reload, without reusing decisions cached under the old policy', async () => {
    const henry = { user: 'henry', password: USERS.henry.password };
    expect((await expectNotForwarded(h, () => send(h, '/owa/', henry))).status).toBe(403); // cached standing under the old policy
    writeFileSync(
      join(h.dir, 'policy.yaml'),
      TEST_POLICY.replace('groups: [AllowExternalAccess]', 'groups: [AllowExternalAccess, MobileUsers]'),
    );
    expect(await h.running.reload()).toBe(true);
    expect((await send(h, '/owa/', henry)).status).toBe(200);
    writeFileSync(join(h.dir, 'policy.yaml'), TEST_POLICY);
    await until(async () => (await send(h, '/owa/', henry)).status === 403); // the file watch reloads by itself
    expect((await expectNotForwarded(h, () => send(h, '/owa/', henry))).status).toBe(403); // and denied again means not forwarded
  });

  it('lets a request in flight finish across a reload', async () => {
    const client = clientFor(h);
    const pending = client.request({
      path: '/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=reload&DeviceType=t',
      method: 'POST',
      body: 'x',
      headers: {
        host: EXTERNAL,
        authorization: basic('alice', USERS.alice.password),
        'x-standin-heartbeat-ms': '1500',
      },
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(await h.running.reload()).toBe(true);
    const res = await pending;
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    await client.close();
  });
});

describe('admin listener', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap', gateway: { admin: { host: '127.0.0.1', port: 0 } } });
  });
  afterAll(async () => {
    await h?.close();
  });
  const admin = (path: string) => request(`http://127.0.0.1:${h.running.admin!.port}${path}`);

  it('answers /healthz and /readyz', async () => {
    const health = await admin('/healthz');
    expect(health.statusCode).toBe(200);
    expect(await health.body.text()).toBe('ok\n');
    const ready = await admin('/readyz');
    expect(ready.statusCode).toBe(200);
    expect(await ready.body.json()).toEqual({ directory: 'ok', upstream: 'ok', lastReload: null });
  });

  const gauge = (text: string, series: string) => {
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? undefined : Number(line.slice(series.length + 1));
  };
  const notAfter = (pem: string) => Math.floor(new Date(new X509Certificate(pem).validTo).getTime() / 1000);

  it("exports both certificates' expiry (Exchange's as the probe saw it) and the probes' answers", async () => {
    const text = await (await admin('/metrics')).body.text();
    expect(gauge(text, 'exgate_certificate_expiry_timestamp_seconds{cert="gateway"}')).toBe(notAfter(h.gatewayCa));
    const upstream = readFileSync(join(h.dir, 'upstream.crt'), 'utf8');
    expect(notAfter(upstream)).not.toBe(notAfter(h.gatewayCa));
    expect(gauge(text, 'exgate_certificate_expiry_timestamp_seconds{cert="upstream"}')).toBe(notAfter(upstream));
    expect(gauge(text, 'exgate_directory_up')).toBe(1);
    expect(gauge(text, 'exgate_upstream_up')).toBe(1);
  });

  it('counts a failed reload, shows it in /readyz (file and key, no secret), clears it on a good one', async () => {
    const good = readFileSync(h.configFile, 'utf8');
    const metric = async (name: string) => gauge(await (await admin('/metrics')).body.text(), name);
    const failures = () => metric('exgate_config_reload_failures_total');
    const before = await failures();
    expect(before).toBe(0);
    try {
      writeFileSync(h.configFile, `${good}noSuchKey: 1\n`);
      expect(await h.running.reload()).toBe(false);
      const ready = await admin('/readyz');
      expect(ready.statusCode).toBe(200); // the old state still serves
      const body = (await ready.body.json()) as { lastReload: { time: string; ok: boolean; error: string } };
      expect(body.lastReload).toMatchObject({ ok: false });
      expect(body.lastReload.error).toMatch(/gateway\.yaml:\d+: noSuchKey: unknown key/);
      expect(Date.now() - Date.parse(body.lastReload.time)).toBeLessThan(60_000);
      expect(JSON.stringify(body)).not.toContain(SERVICE_ACCOUNT.password);
      expect(await failures()).toBeGreaterThanOrEqual(1); // the file watch may have reloaded too
      expect(await metric('exgate_config_last_reload_successful')).toBe(0);
    } finally {
      writeFileSync(h.configFile, good);
    }
    expect(await h.running.reload()).toBe(true);
    const after = (await (await admin('/readyz')).body.json()) as { lastReload: unknown };
    expect(after.lastReload).toMatchObject({ ok: true });
    expect(await metric('exgate_config_last_reload_successful')).toBe(1);
  });

  it('counts requests by service, decision and reason in /metrics, with process metrics', async () => {
    const metric = async (line: RegExp) => {
      const text = await (await admin('/metrics')).body.text();
      return Number(line.exec(text)?.[1] ?? 0);
    };
    const allowed = /exgate_requests_total\{service="owa",decision="allow",reason="allowed"\} (\d+)/;
    const notAllowed = /exgate_requests_total\{service="owa",decision="deny",reason="not-allowed"\} (\d+)/;
    const before = [await metric(allowed), await metric(notAllowed)];
    await send(h, '/owa/', { user: 'alice', password: USERS.alice.password });
    await expectNotForwarded(h, () => send(h, '/owa/', { user: 'bob', password: USERS.bob.password }));
    await until(
      async () => (await metric(allowed)) === before[0]! + 1 && (await metric(notAllowed)) === before[1]! + 1,
    );
    const text = await (await admin('/metrics')).body.text();
    for (const name of [
      'exgate_auth_duration_seconds_bucket',
      'exgate_open_connections',
      'exgate_requests_in_flight',
      'exgate_auth_cache_total',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_seconds',
    ]) {
      expect(text, name).toContain(name);
    }
  });
});

describe('request ID', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });

  it("puts a fresh ID in every access record and sends Exchange the same one, never the client's", async () => {
    const alice = { user: 'alice', password: USERS.alice.password };
    const r = await send(h, '/owa/?marker=rid', { ...alice, headers: { 'X-Request-Id': 'forged-by-client' } });
    expect(r.status).toBe(200);
    const record = await h.record((x) => x.path === '/owa/' && x.decision === 'allow');
    expect(record.requestId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const seen = h.standin.requests.filter((x) => x.url === '/owa/?marker=rid');
    expect(seen.map((x) => x.headers['x-request-id'])).toEqual([record.requestId]);
    await expectNotForwarded(h, () => send(h, '/nowhere', alice)); // refused: logged with an ID too
    await send(h, '/owa/', { ...alice, headers: { 'X-Request-Id': 'forged-by-client' } });
    const ids = h.access.map((x) => x.requestId);
    expect(ids.length).toBeGreaterThanOrEqual(3);
    expect(ids.every((id) => typeof id === 'string' && id.length === 36)).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    expect(h.standin.requests.some((x) => JSON.stringify(x.headers).includes('forged-by-client'))).toBe(false);
  });
});

describe('exgate explain', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });

  const cases: [string, Service][] = [
    ['alice', 'ews'],
    ['carol', 'mapi'],
    ['bob', 'ews'],
    ['mallory', 'owa'],
    ['henry', 'activesync'],
    ['henry', 'ews'],
    ['dave', 'ews'],
    ['erin', 'owa'],
    ['frank', 'mapi'],
    ['zoe', 'oab'],
    ['alice', 'ecp'],
  ];
  const paths: Record<string, string> = {
    ews: '/ews/exchange.asmx',
    mapi: '/mapi/emsmdb/',
    owa: '/owa/',
    activesync: '/Microsoft-Server-ActiveSync?Cmd=Sync',
    oab: '/oab/x.lzx',
    ecp: '/ecp/',
  };

  it.each(cases)("matches the gateway's real decision for %s on %s", async (sam, service) => {
    const u = USERS[sam as keyof typeof USERS];
    const explained = await decide(h.configFile, sam, service);
    const forwarded = watchForwarded(h);
    const mark = h.mark();
    await send(h, paths[service]!, {
      user: u.sam,
      password: u.password,
      method: service === 'activesync' ? 'POST' : 'GET',
      body: service === 'activesync' ? 'x' : null,
    });
    const real = await h.next(mark);
    expect({ decision: explained.decision, reason: explained.reason, rule: explained.rule }).toEqual({
      decision: real.decision,
      reason: real.reason,
      rule: real.rule,
    });
    expect(explained.user).toBe(`LAB\\${sam}`);
    if (real.decision === 'deny') await forwarded.expectNone();
  });

  it('lists transitive groups by name', async () => {
    expect((await decide(h.configFile, 'carol', 'ews')).groups).toEqual(
      expect.arrayContaining(['AllowExternalAccess', 'ExternalStaff']),
    );
  });
});

describe('graceful stop', () => {
  it('on SIGTERM stops accepting, finishes a long-poll within its grace, cuts a longer one, and exits 0', async () => {
    const h = await startHarness({ directory: 'file' });
    const config =
      readFileSync(h.configFile, 'utf8').replace(/port: \d+/, 'port: 0') +
      'http:\n  shutdownGraceMs: 8000\n  longPollGraceMs: 4000\n';
    const file = join(h.dir, 'serve.yaml');
    writeFileSync(file, config);
    await h.running.close(); // keep the stand-in, run the gateway as a process
    const child = spawn(
      process.execPath,
      [join(import.meta.dirname, '..', '..', 'bin', 'exgate.js'), 'serve', '--config', file],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    try {
      await until(() => /"msg":"exgate listening"/.test(stderr), 10_000);
      const port = Number(/"port":(\d+)/.exec(stderr)![1]);
      const client = clientFor({ ...h, origin: `https://127.0.0.1:${port}`, port });
      const ping = client.request({
        path: '/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=term&DeviceType=t',
        method: 'POST',
        body: 'x',
        headers: {
          host: EXTERNAL,
          authorization: basic('alice', USERS.alice.password),
          'x-standin-heartbeat-ms': '2000',
        },
      });
      await until(() => h.standin.seen((r) => r.url.includes('DeviceId=term')) === 1);
      const client2 = clientFor({ ...h, origin: `https://127.0.0.1:${port}`, port });
      const endless = client2
        .request({
          path: '/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=endless&DeviceType=t',
          method: 'POST',
          body: 'x',
          headers: {
            host: EXTERNAL,
            authorization: basic('alice', USERS.alice.password),
            'x-standin-heartbeat-ms': '600000',
          },
        })
        .then(
          () => 'answered',
          () => 'cut',
        );
      await until(() => h.standin.seen((r) => r.url.includes('DeviceId=endless')) === 1);
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      const stopped = Date.now();
      child.kill('SIGTERM');
      const res = await ping; // within longPollGraceMs: answered
      expect(res.statusCode).toBe(200);
      expect(res.headers.connection).toBe('close');
      await res.body.dump();
      await client.close();
      expect(await endless).toBe('cut'); // past it: cut, the client reconnects
      await client2.destroy();
      expect(await exited).toBe(0);
      expect(Date.now() - stopped).toBeLessThan(8000);
    } finally {
      child.kill('SIGKILL');
      await h.standin.close();
      rmSync(h.dir, { recursive: true, force: true });
    }
  });
});
