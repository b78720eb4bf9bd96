/**
 * `workers: 2`: node:cluster workers behind one port, one smart lockout for all of them, one
 * Outlook Anywhere tunnel cap per address for all of them, metrics aggregated by the primary,
 * and a clean stop.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify, parse } from 'yaml';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  basic,
  EXTERNAL,
  freePort,
  makeCert,
  send,
  startHarness,
  TEST_POLICY,
  type Harness,
} from '../helpers/gateway-harness.js';
import { startRpcUpstream, type RpcUpstream } from '../helpers/rpc-upstream.js';

let h: Harness;
let child: ChildProcess;
let port: number;
let adminPort: number;
let stderr = '';
let file: string;

beforeAll(async () => {
  h = await startHarness({ directory: 'file', standin: { formsUsers: { alice: USERS.alice.password } } });
  await h.running.close(); // keep the stand-in and the files; serve as processes
  port = await freePort();
  adminPort = await freePort();
  const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
  Object.assign(config, {
    workers: 2,
    listen: { host: '127.0.0.1', port },
    admin: { host: '127.0.0.1', port: adminPort },
    lockout: { threshold: 3, windowSeconds: 600, sourceAccounts: 1000, sourceFailures: 100000 },
  });
  file = join(h.dir, 'workers.yaml');
  writeFileSync(file, stringify(config));
  child = serveWorkers(file, (d) => {
    stderr += d;
  });
  await listening(() => stderr);
});
afterAll(async () => {
  child?.kill('SIGKILL');
  await h?.standin.close();
});

const target = () => ({ ...h, origin: `https://127.0.0.1:${port}`, port });

describe('workers', () => {
  it('serves from both workers on one port', async () => {
    for (let i = 0; i < 6; i++)
      expect((await send(target(), '/owa/', { user: 'alice', password: USERS.alice.password })).status).toBe(200);
    const pids = new Set([...stderr.matchAll(/"pid":(\d+)[^\n]*"msg":"exgate listening"/g)].map((m) => m[1]));
    expect(pids.size).toBe(2);
  });

  it('keeps one lockout across workers: failures seen by one lock the account in all', async () => {
    for (const guess of ['w1', 'w2', 'w3']) {
      expect((await send(target(), '/owa/', { user: 'grace', password: guess })).status).toBe(401); // a new connection each: spread over workers
    }
    await new Promise((r) => setTimeout(r, 200)); // the relay through the primary
    for (let i = 0; i < 4; i++) {
      const r = await send(target(), '/owa/', { user: 'grace', password: USERS.grace.password });
      expect(r.status).toBe(401); // gateway-lockout on every worker
    }
    expect(h.standin.seen((r) => r.user === 'grace')).toBe(0);
  });

  it("aggregates the workers' metrics in the primary's admin listener", async () => {
    const text = await (await request(`http://127.0.0.1:${adminPort}/metrics`)).body.text();
    const allowed = /exgate_requests_total\{service="owa",decision="allow",reason="allowed"\} (\d+)/.exec(text);
    expect(Number(allowed?.[1])).toBeGreaterThanOrEqual(6);
    expect(text).toMatch(/exgate_lockouts_total\{kind="account"\} 4/);
    // The primary's probes and the workers' certificate, merged into one exposition.
    expect(text).toMatch(/\nexgate_directory_up 1\n/);
    expect(text).toMatch(/\nexgate_upstream_up 1\n/);
    expect(text).toMatch(/\nexgate_certificate_expiry_timestamp_seconds\{cert="gateway"\} \d{10}\n/);
    expect(text).toMatch(/\nexgate_certificate_expiry_timestamp_seconds\{cert="upstream"\} \d{10}\n/);
    expect(text.match(/^# TYPE exgate_requests_total /gm)).toHaveLength(1);
    expect((await request(`http://127.0.0.1:${adminPort}/healthz`)).statusCode).toBe(200);
    const ready = await request(`http://127.0.0.1:${adminPort}/readyz`);
    expect(ready.statusCode).toBe(200);
    expect(await ready.body.json()).toEqual({ gateway: 'ok', directory: 'ok', upstream: 'ok' });
  });

  it('counts attempts in flight on every worker: a parallel burst of wrong passwords gets at most the threshold of binds', async () => {
    const badCredentials = async () => {
      const text = await (await request(`http://127.0.0.1:${adminPort}/metrics`)).body.text();
      return [...text.matchAll(/exgate_requests_total\{[^}]*reason="bad-credentials"\} (\d+)/g)].reduce(
        (n, m) => n + Number(m[1]),
        0,
      );
    };
    const before = await badCredentials();
    const guesses = Array.from({ length: 12 }, (_, i) => `burst-${i}`);
    const statuses = await Promise.all(
      guesses.map((g) => send(target(), '/owa/', { user: 'henry', password: g }).then((r) => r.status)),
    );
    expect(statuses.every((s) => s === 401)).toBe(true);
    expect((await badCredentials()) - before).toBeLessThanOrEqual(3); // threshold 3: the rest are refused before a bind
    expect(h.standin.seen((r) => r.user === 'henry')).toBe(0);
  });

  it('applies a new lockout threshold on SIGHUP in every worker and in the primary', async () => {
    const config = parse(readFileSync(file, 'utf8')) as { lockout: Record<string, unknown> };
    config.lockout.threshold = 10; // grace, locked at 3, may try again
    writeFileSync(file, stringify(config));
    const reloads = () => (stderr.match(/"msg":"reloaded"/g) ?? []).length;
    const before = reloads();
    child.kill('SIGHUP');
    const end = Date.now() + 10_000;
    while (reloads() < before + 2) {
      if (Date.now() > end) throw new Error(`workers did not reload:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    for (let i = 0; i < 4; i++)
      expect((await send(target(), '/owa/', { user: 'grace', password: USERS.grace.password })).status).toBe(200);
  });

  it('stops every worker and the primary on SIGTERM, exit 0', async () => {
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    void EXTERNAL;
  });
});

/** `exgate serve` as a process; its stderr goes to `onErr`. */
function serveWorkers(config: string, onErr: (text: string) => void): ChildProcess {
  const p = spawn(
    process.execPath,
    [join(import.meta.dirname, '..', '..', 'bin', 'exgate.js'), 'serve', '--config', config],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  p.stderr!.on('data', (d: Buffer) => onErr(d.toString()));
  return p;
}

async function listening(stderrText: () => string): Promise<void> {
  const end = Date.now() + 15_000;
  while ((stderrText().match(/"msg":"exgate listening"/g) ?? []).length < 2) {
    if (Date.now() > end) throw new Error(`workers did not start:\n${stderrText()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// The tunnel count was a module global of each worker, so with two workers one address held two
// tunnels under `maxTunnelsPerSource: 1` (issue 12): it is counted by the primary now.
describe('workers: one Outlook Anywhere tunnel cap for all of them', () => {
  let rpc: RpcUpstream;
  let gw: ChildProcess;
  let rpcPort: number;
  let err = '';
  beforeAll(async () => {
    const cert = makeCert(h.dir, 'rpc', ['exchange-be.lab.test']);
    writeFileSync(join(h.dir, 'rpc-ca.pem'), cert.cert);
    rpc = await startRpcUpstream(cert, 1 << 30, 0); // RPC_IN_DATA: holds the tunnel open
    rpcPort = await freePort();
    writeFileSync(
      join(h.dir, 'rpc-policy.yaml'),
      TEST_POLICY.replace(
        'services: [rpc, ecp, powershell, mrsproxy, api]',
        'services: [ecp, powershell, mrsproxy, api]',
      ) + '  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n',
    );
    const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
    Object.assign(config, {
      workers: 2,
      listen: { host: '127.0.0.1', port: rpcPort },
      upstream: { url: rpc.url, ca: 'rpc-ca.pem', servername: 'exchange-be.lab.test' },
      policyFile: 'rpc-policy.yaml',
      services: { rpc: { maxTunnelsPerSource: 1 } },
    });
    writeFileSync(join(h.dir, 'rpc-workers.yaml'), stringify(config));
    gw = serveWorkers(join(h.dir, 'rpc-workers.yaml'), (d) => {
      err += d;
    });
    await listening(() => err);
  });
  afterAll(async () => {
    gw?.kill('SIGKILL');
    await rpc?.close();
  });

  it('allows one tunnel per address across both workers; the others get 429 and reach nothing', async () => {
    const sockets: TLSSocket[] = [];
    const replies: string[] = ['', '', '', ''];
    for (let i = 0; i < 4; i++) {
      // round robin: both workers get two
      const s = await new Promise<TLSSocket>((resolve, reject) => {
        const c = connect({ host: '127.0.0.1', port: rpcPort, servername: EXTERNAL, ca: h.gatewayCa }, () =>
          resolve(c),
        );
        c.once('error', reject);
      });
      s.on('data', (d: Buffer) => {
        replies[i] += d.toString('latin1');
      });
      s.on('error', () => {});
      s.write(
        `RPC_IN_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001 HTTP/1.1\r\nHost: ${EXTERNAL}\r\n` +
          `Authorization: ${basic('alice', USERS.alice.password)}\r\nContent-Length: 1073741824\r\nUser-Agent: MSRPC\r\n\r\n`,
      );
      sockets.push(s);
      await new Promise((r) => setTimeout(r, 300)); // settled before the next one
    }
    const refused = replies.filter((r) => r.startsWith('HTTP/1.1 429 Too Many Requests')).length;
    expect(replies.filter((r) => r === '').length).toBe(1); // the one tunnel: open, nothing answered yet
    expect(refused).toBe(3);
    expect(rpc.seen.filter((x) => x.head.startsWith('RPC_IN_DATA')).length).toBe(1);
    const pids = new Set([...err.matchAll(/"pid":(\d+)[^\n]*"msg":"exgate listening"/g)].map((m) => m[1]));
    expect(pids.size).toBe(2);
    for (const s of sockets) s.destroy();
  });
});

// Browser sessions live on the state bus: one made on a worker is valid on the other, and a sign-out
// on one ends it on both (INTERFACE.md "Browser sign-in": sessions work across workers).
describe('workers: one browser session for all of them', () => {
  let gw: ChildProcess;
  let formsPort: number;
  let err = '';
  beforeAll(async () => {
    formsPort = await freePort();
    const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
    Object.assign(config, { workers: 2, listen: { host: '127.0.0.1', port: formsPort }, services: {} });
    const forms = join(h.dir, 'forms-workers.yaml');
    writeFileSync(forms, stringify(config));
    gw = serveWorkers(forms, (d) => {
      err += d;
    });
    gw.stdout!.resume();
    await listening(() => err);
  });
  afterAll(() => {
    gw?.kill('SIGKILL');
  });

  const at = () => ({ ...h, origin: `https://127.0.0.1:${formsPort}`, port: formsPort });
  it('a session made on one worker works on the other; a sign-out on one ends it on both', async () => {
    const form =
      `destination=${encodeURIComponent(`https://${EXTERNAL}/owa/`)}&flags=4&username=alice` +
      `&password=${encodeURIComponent(USERS.alice.password)}`;
    const signIn = await send(at(), '/owa/auth.owa', {
      method: 'POST',
      body: form,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(signIn.status).toBe(302);
    const raw = signIn.headers['set-cookie'];
    const cookie = (Array.isArray(raw) ? raw : [String(raw)]).map((c) => c.split(';')[0]).join('; ');
    expect(cookie).toContain('exgate-session=');
    await new Promise((r) => setTimeout(r, 200)); // the relay through the primary
    // A new connection each: the cluster hands connections to the workers in turn, so both serve it.
    for (let i = 0; i < 6; i++) expect((await send(at(), '/owa/', { headers: { cookie } })).status).toBe(200);

    expect((await send(at(), '/owa/logoff.owa', { headers: { cookie } })).status).toBe(302);
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 0; i < 6; i++) {
      const r = await send(at(), '/owa/', { headers: { cookie } });
      expect(r.status).toBe(302);
      expect(r.headers.location).toMatch(/\/owa\/auth\/logon\.aspx\?url=/);
    }
  });

  it('a worker that starts later hears the sessions made before it', async () => {
    const form =
      `destination=${encodeURIComponent(`https://${EXTERNAL}/owa/`)}&flags=4&username=alice` +
      `&password=${encodeURIComponent(USERS.alice.password)}`;
    const signIn = await send(at(), '/owa/auth.owa', {
      method: 'POST',
      body: form,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    const raw = signIn.headers['set-cookie'];
    const cookie = (Array.isArray(raw) ? raw : [String(raw)]).map((c) => c.split(';')[0]).join('; ');
    const before = new Set([...err.matchAll(/"pid":(\d+)[^\n]*"msg":"exgate listening"/g)].map((m) => m[1]));
    for (const pid of before) process.kill(Number(pid), 'SIGKILL'); // the primary forks new workers
    const end = Date.now() + 20_000;
    while ([...err.matchAll(/"msg":"exgate listening"/g)].length < 4 && Date.now() < end)
      await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 4; i++) expect((await send(at(), '/owa/', { headers: { cookie } })).status).toBe(200);
  });
});
