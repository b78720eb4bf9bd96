/**
 * A cached Basic sign-in with `state.redis` against without, side by side in one run (issue 15): the
 * same Authenticator setup, its lockout on the in-process bus or on a RedisBus to a real redis-server
 * (Debian's, started here on a free loopback port). A cached success must not wait on Redis.
 */
import { randomBytes, scryptSync } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Authenticator } from '../src/auth/authenticate.js';
import { authenticateBasic } from '../src/auth/front-ends.js';
import { FileDirectory } from '../src/directory/file.js';
import { localBus } from '../src/state/local-bus.js';
import { RedisBus } from '../src/state/redis-bus.js';
import { DOMAIN } from '../test/helpers/ad-fixtures.js';
import { fmt, median, table } from './stats.js';

const domain = { netbios: 'LAB', upnSuffixes: ['lab.test'] };
const LOCKOUT = {
  threshold: 5,
  windowSeconds: 1800,
  sourceAccounts: 10,
  sourceFailures: 50,
  familiarSeconds: 1_209_600,
  max: 10_000,
};
const CACHE = {
  max: 10_000,
  authTtlSeconds: 3600,
  groupTtlSeconds: 3600,
  negativeTtlSeconds: 30,
  staleIfErrorSeconds: 0,
};

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function pong(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write('PING\r\n'));
    s.once('data', (d) => {
      s.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
    s.once('error', () => resolve(false));
  });
}

async function perCall(n: number, fn: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.min(2000, n / 10); i++) await fn();
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  return Number(process.hrtime.bigint() - t) / 1000 / n;
}

export async function sharedStateBench(rounds = 5, n = 50_000): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'exgate-bench-'));
  const port = await freePort();
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir], {
    stdio: 'ignore',
  });
  let redis: RedisBus | null = null;
  try {
    while (!(await pong(port))) await new Promise((r) => setTimeout(r, 50));
    const salt = randomBytes(16);
    const hash = scryptSync('Passw0rd!', salt, 32, { N: 1024, r: 8, p: 1 });
    const users = { alice: { password: `scrypt$1024$8$1$${salt.toString('base64')}$${hash.toString('base64')}` } };
    writeFileSync(
      join(dir, 'users.yaml'),
      stringify({ users, groups: { AllowExternalAccess: { members: ['alice'] } } }),
    );
    const file = { type: 'file', path: join(dir, 'users.yaml'), baseDn: DOMAIN.baseDn, ...domain } as const;
    const directory = FileDirectory.load({ ...file, netbiosDomain: 'LAB', upnSuffixes: ['lab.test'] });
    const local = new Authenticator({ directory, domain, cache: CACHE, lockout: LOCKOUT });
    local.lockout.connect(localBus(local.lockout));
    const shared = new Authenticator({ directory, domain, cache: CACHE, lockout: LOCKOUT });
    const settings = { url: `redis://127.0.0.1:${port}`, sentinels: [], name: null, tls: false, ca: undefined };
    redis = new RedisBus(shared.lockout, {
      redis: { ...settings, password: null, keyPrefix: 'bench:', commandTimeoutMs: 500 },
      instances: 2,
      log: { warn: () => {}, info: () => {} },
    });
    await redis.whenUp();
    shared.lockout.connect(redis);
    const groupDns = [(await directory.resolveGroup('AllowExternalAccess'))!.dn.toLowerCase()];
    const header = `Basic ${Buffer.from('alice:Passw0rd!').toString('base64')}`;
    const request = { source: '198.51.100.7', groupDns, policyVersion: 'bench' };
    for (const a of [local, shared]) {
      const first = await authenticateBasic(a, header, request); // the one bind (a scrypt check here)
      if (!first.ok) throw new Error(`bench user does not authenticate: ${first.reason}`);
    }
    const withoutRedis: number[] = [];
    const withRedis: number[] = [];
    for (let r = 0; r < rounds; r++) {
      withoutRedis.push(await perCall(n, () => authenticateBasic(local, header, request)));
      withRedis.push(await perCall(n, () => authenticateBasic(shared, header, request)));
    }
    const [a, b] = [median(withoutRedis), median(withRedis)];
    return table(
      ['cached Basic sign-in (in process, median of rounds)', 'µs per request'],
      [
        ['without state.redis (the in-process bus)', fmt(a, 2)],
        ['with state.redis (a RedisBus to a local redis-server)', fmt(b, 2)],
        ['difference', fmt(b - a, 2)],
      ],
    );
  } finally {
    redis?.close();
    await new Promise((r) => setTimeout(r, 200)); // its QUITs answered
    const gone = new Promise((r) => server.once('close', r));
    server.kill('SIGKILL');
    await gone;
    rmSync(dir, { recursive: true, force: true });
  }
}
