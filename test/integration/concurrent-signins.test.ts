/**
 * A user's concurrent sign-ins wait for each other, they do not fail: Outlook opens several
 * connections at once, each with its own NTLM handshake, and the smart lockout reserves a slot for
 * every check in flight. Under CPU pressure (when the handshakes overlap), 40 correct sign-ins of
 * two users all get 200; 40 wrong ones for one account still reach Exchange or AD at most
 * `threshold` times.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createUser, readAttributes } from '../helpers/ad-admin.js';
import { USERS } from '../helpers/ad-fixtures.js';
import { clientFor, EXTERNAL, send, startHarness, type Harness } from '../helpers/gateway-harness.js';
import { signIn } from '../helpers/ntlm-client.js';
import { sambaAdmin } from '../helpers/samba.js';

const run = promisify(execFile);
const tag = () => randomBytes(3).toString('hex');

/** A fine-grained password policy with AD's own lockout threshold, so that AD counts badPwdCount. */
async function lockoutPolicy(sam: string, threshold: number): Promise<void> {
  const admin = sambaAdmin(inject('ldapUrl'));
  const name = `ExgateConc${tag()}`;
  await admin.run([
    'domain',
    'passwordsettings',
    'pso',
    'create',
    name,
    '10',
    `--account-lockout-threshold=${threshold}`,
    '--account-lockout-duration=30',
    '--reset-account-lockout-after=30',
    '--complexity=off',
    '--min-pwd-length=1',
  ]);
  await admin.run(['domain', 'passwordsettings', 'pso', 'apply', name, sam]);
}
const THRESHOLD = 5;
let h: Harness;
let ca: string;
let busy: ChildProcess[] = [];

beforeAll(async () => {
  const ntlmUsers = Object.fromEntries(Object.values(USERS).map((u) => [u.sam, u.password]));
  h = await startHarness({
    directory: 'ldap',
    // A DC that takes 1 s per NTLM check: the 40 handshakes overlap for sure.
    standin: { ntlmUsers, ntlmDomain: 'LAB', ntlmVerifyDelayMs: 1000 },
    gateway: {
      services: { ews: { auth: 'basic+ntlm' }, mapi: { auth: 'ntlm' } },
      lockout: { threshold: THRESHOLD, sourceAccounts: 1000, sourceFailures: 100_000 },
    },
  });
  ca = join(h.dir, 'gateway-ca.pem');
  writeFileSync(ca, h.gatewayCa);
  // Two busy loops beside the gateway: on a loaded machine the handshakes overlap.
  busy = [0, 1].map(() =>
    spawn(process.execPath, ['-e', 'const end = Date.now() + 120000; while (Date.now() < end) {}'], {
      stdio: 'ignore',
    }),
  );
});
afterAll(async () => {
  for (const p of busy) p.kill('SIGKILL');
  await h?.close();
});

async function curlNtlm(user: string, password: string, path: string): Promise<string> {
  const args = [
    '-s',
    '-o',
    '/dev/null',
    '-w',
    '%{http_code}',
    '--cacert',
    ca,
    '--resolve',
    `${EXTERNAL}:${h.port}:127.0.0.1`,
    '--ntlm',
    '-u',
    `${user}:${password}`,
    `https://${EXTERNAL}:${h.port}${path}`,
  ];
  return (await run('curl', args, { timeout: 30_000 })).stdout.trim();
}

const type3s = (sam: string) =>
  h.standin.seen((r) => r.ntlm === 'type3' && (r.user ?? '').toLowerCase() === `lab\\${sam}`);

describe('concurrent NTLM sign-ins', () => {
  it('lets 40 concurrent correct handshakes of two users in, with the lockout threshold at 5', async () => {
    const users = [USERS.alice, USERS.carol];
    const clients = Array.from({ length: 40 }, () => clientFor(h));
    try {
      const replies = await Promise.all(
        clients.map((c, i) => {
          const u = users[i % 2]!;
          return signIn(c, `/mapi/emsmdb/?c=${i}`, EXTERNAL, u.sam, 'LAB', u.password);
        }),
      );
      expect(replies.map((r) => r.status)).toEqual(Array(40).fill(200));
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
    expect(h.access.filter((r) => r.reason === 'gateway-lockout')).toEqual([]);
  });

  it('lets at most threshold of 40 concurrent wrong Type 3s for one account reach Exchange', async () => {
    const before = type3s('grace');
    const codes = await Promise.all(
      Array.from({ length: 40 }, (_, i) => curlNtlm('LAB\\grace', `wrong-${i}`, `/mapi/emsmdb/?w=${i}`)),
    );
    expect(codes.every((c) => c === '401' || c === '503')).toBe(true);
    expect(type3s('grace') - before).toBeLessThanOrEqual(THRESHOLD);
  });
});

describe('concurrent Basic sign-ins', () => {
  it('lets correct sign-ins in while wrong passwords of the same account are in flight', async () => {
    const u = await createUser(inject('ldapUrl'), `conc${tag()}`, 'Conc-Passw0rd!', ['AllowExternalAccess']);
    const wrong = Array.from({ length: THRESHOLD - 1 }, (_, i) =>
      send(h, `/ews/exchange.asmx?bw=${i}`, { user: u.sam, password: `old-${i}` }),
    );
    const right = Array.from({ length: 20 }, (_, i) =>
      send(h, `/ews/exchange.asmx?br=${i}`, { user: u.sam, password: u.password }),
    );
    const [w, r] = await Promise.all([Promise.all(wrong), Promise.all(right)]);
    expect(w.map((x) => x.status)).toEqual(Array(THRESHOLD - 1).fill(401));
    expect(r.map((x) => x.status)).toEqual(Array(20).fill(200));
  });

  it('binds at most threshold of 40 concurrent distinct wrong passwords for one account', async () => {
    const ldapUrl = inject('ldapUrl');
    const u = await createUser(ldapUrl, `burst${tag()}`, 'Burst-Passw0rd!', ['AllowExternalAccess']);
    await lockoutPolicy(u.sam, 10);
    const replies = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        send(h, `/ews/exchange.asmx?bb=${i}`, { user: u.sam, password: `guess-${i}` }),
      ),
    );
    expect(replies.every((x) => x.status === 401 || x.status === 503)).toBe(true);
    const ad = await readAttributes(ldapUrl, u.dn, ['badPwdCount']);
    expect(Number(ad.badPwdCount)).toBeLessThanOrEqual(THRESHOLD);
    expect(Number(ad.badPwdCount)).toBeGreaterThan(0);
  });
});

describe('a sign-in that waited past the bound', () => {
  let tight: Harness;
  beforeAll(async () => {
    tight = await startHarness({
      directory: 'ldap',
      gateway: {
        lockout: { threshold: THRESHOLD, maxWaiting: 4, waitMs: 1, sourceAccounts: 1000, sourceFailures: 100_000 },
      },
    });
  });
  afterAll(async () => {
    await tight?.close();
  });

  it('gets 503 with Retry-After (the gateway is busy), never a 401 that asks for a password', async () => {
    const u = await createUser(inject('ldapUrl'), `wait${tag()}`, 'Wait-Passw0rd!', ['AllowExternalAccess']);
    const replies = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        send(tight, `/ews/exchange.asmx?bx=${i}`, { user: u.sam, password: `guess-${i}` }),
      ),
    );
    const busyReplies = replies.filter((x) => x.status === 503);
    expect(busyReplies.length).toBeGreaterThan(0);
    for (const b of busyReplies) expect(b.headers['retry-after']).toBeDefined();
    const record = await tight.record((x) => x.user === `LAB\\${u.sam}` && x.status === 503);
    expect(record).toMatchObject({
      reason: 'gateway-lockout',
      detail: 'too many sign-ins of this account in flight; try again',
    });
  });
});
