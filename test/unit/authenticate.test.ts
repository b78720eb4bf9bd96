// Unit tests for the Authenticator (src/authenticate.ts): cheap refusals, the decision caches,
// coalescing, smart lockout, account standing and DC outages, on an injected clock.
//
// The directory is a real FileDirectory (users YAML in a temp dir, scrypt N=1024) inside a thin
// decorator that counts calls per method, can hold answers back (to test coalescing), can be
// switched "down" (DirectoryUnavailableError), and can swap the directory behind it or override
// accountStatus (to simulate changes in AD). It observes; it does not mock LDAP.
import { randomBytes, scryptSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Authenticator, type AuthOutcome, type Identity } from '../../src/authenticate.js';
import type { Logon } from '../../src/credentials.js';
import type { CacheSettings } from '../../src/decision-cache.js';
import type { Account, Directory, GroupRef, PasswordCheck, PasswordRefusal } from '../../src/directory/directory.js';
import { FileDirectory } from '../../src/directory/file.js';
import { DirectoryUnavailableError } from '../../src/errors.js';
import type { LockoutSettings } from '../../src/lockout.js';

const DOMAIN = { netbios: 'LAB', upnSuffixes: ['lab.test'] };
const PASSWORD = 'Right-Password-1';
const GROUP = 'cn=allowexternalaccess,cn=users,dc=lab,dc=test';
const OTHER_GROUP = 'cn=mobileusers,cn=users,dc=lab,dc=test';
const HOME = '198.51.100.7';       // becomes familiar to alice by signing in
const ATTACKER = '203.0.113.5';    // never succeeds: unfamiliar
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'] as const;

const CACHE: CacheSettings = { max: 100, authTtlSeconds: 300, groupTtlSeconds: 60, negativeTtlSeconds: 30, staleIfErrorSeconds: 0 };
const LOCKOUT: LockoutSettings = { threshold: 3, windowSeconds: 600, sourceAccounts: 4, sourceFailures: 50, familiarSeconds: 600, max: 100 };
const S = 1000;

/** A users-file hash with scrypt N=1024 (fast; the file directory accepts any power of two). */
function fastHash(password: string): string {
  const salt = randomBytes(16);
  const hash = scryptSync(password, salt, 32, { N: 1024, r: 8, p: 1 });
  return `scrypt$1024$8$1$${salt.toString('base64')}$${hash.toString('base64')}`;
}

type Counted = 'findAccount' | 'verifyPassword' | 'accountStatus' | 'memberships';

/** Wraps a real Directory to count, hold back, fail or alter its answers. */
class ObservedDirectory implements Directory {
  readonly calls: Record<Counted, number> = { findAccount: 0, verifyPassword: 0, accountStatus: 0, memberships: 0 };
  /** Thrown by every call while set (a DirectoryUnavailableError: the DC is down). */
  failure: Error | null = null;
  /** While set, every answer waits for it. */
  hold: Promise<void> | null = null;
  /** When set, accountStatus answers this instead of asking the inner directory. */
  status: PasswordRefusal | null | undefined = undefined;

  constructor(public inner: Directory) {}

  get total(): number {
    return Object.values(this.calls).reduce((a, b) => a + b, 0);
  }

  down(): void { this.failure = new DirectoryUnavailableError('test: the DC is down'); }
  up(): void { this.failure = null; }

  private async call<T>(method: Counted, answer: () => Promise<T>): Promise<T> {
    this.calls[method]++;
    if (this.hold) await this.hold;
    if (this.failure) throw this.failure;
    return answer();
  }

  findAccount(logon: Logon & { kind: 'sam' | 'upn' }): Promise<Account | null> {
    return this.call('findAccount', () => this.inner.findAccount(logon));
  }
  verifyPassword(account: Account, password: string): Promise<PasswordCheck> {
    return this.call('verifyPassword', () => this.inner.verifyPassword(account, password));
  }
  accountStatus(account: Account): Promise<PasswordRefusal | null> {
    return this.call('accountStatus', async () => (this.status !== undefined ? this.status : this.inner.accountStatus(account)));
  }
  memberships(account: Account, groupDns: readonly string[]): Promise<ReadonlySet<string>> {
    return this.call('memberships', () => this.inner.memberships(account, groupDns));
  }
  groupsOf(account: Account): Promise<readonly GroupRef[]> { return this.inner.groupsOf(account); }
  resolveGroup(name: string): Promise<GroupRef | null> { return this.inner.resolveGroup(name); }
  ping(): Promise<void> { return this.inner.ping(); }
  close(): Promise<void> { return this.inner.close(); }
}

let dir: string;
/** Every user in AllowExternalAccess. */
let withGroup: FileDirectory;
/** The same users, alice removed from AllowExternalAccess. */
let aliceRemoved: FileDirectory;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'exgate-authenticate-'));
  const hash = fastHash(PASSWORD);
  const write = (name: string, members: readonly string[]) => {
    const path = join(dir, name);
    writeFileSync(path, [
      'users:',
      ...USERS.map((u) => `  ${u}: { password: '${hash}', mail: ${u}@lab.test }`),
      'groups:',
      `  AllowExternalAccess: { members: [${members.join(', ')}] }`,
      '  MobileUsers: { members: [bob] }',
    ].join('\n'));
    return FileDirectory.load({ type: 'file', path, baseDn: 'DC=lab,DC=test', netbiosDomain: 'LAB', upnSuffixes: ['lab.test'] });
  };
  withGroup = write('users.yaml', USERS);
  aliceRemoved = write('users-alice-removed.yaml', USERS.filter((u) => u !== 'alice'));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

function setup(opts: { cache?: Partial<CacheSettings>; lockout?: Partial<LockoutSettings> } = {}) {
  const clock = { t: 1_700_000_000_000 };
  const directory = new ObservedDirectory(withGroup);
  const auth = new Authenticator(
    { directory, domain: DOMAIN, cache: { ...CACHE, ...opts.cache }, lockout: { ...LOCKOUT, ...opts.lockout } },
    {},
    () => clock.t,
  );
  const login = (user: string, password = PASSWORD, source = HOME, policyVersion = 'v1', groupDns = [GROUP]) =>
    auth.authenticate({ header: basic(user, password), source, groupDns, policyVersion });
  return { auth, directory, login, advance: (ms: number) => { clock.t += ms; } };
}

/** The identity of a successful outcome (fails the test otherwise). */
function identity(o: AuthOutcome): Identity {
  if (!o.ok) expect.fail(`expected ok, got ${o.reason} (${o.detail ?? ''})`);
  return o.identity;
}

/** Reason, cache use and (429 only) status: what the access record shows. */
const seen = (o: AuthOutcome) => (o.ok ? { ok: true, cache: o.cache } : { reason: o.reason, cache: o.cache, status: o.status });

describe('Authenticator: refusals that cost no directory call', () => {
  it.each<[what: string, header: string | undefined, reason: string, user: string | null]>([
    ['no header', undefined, 'no-credentials', null],
    ['another scheme', 'Bearer eyJ.x.y', 'no-credentials', null],
    ['malformed Basic', 'Basic !!!', 'bad-credentials', null],
    ['Basic without a colon', `Basic ${Buffer.from('alice').toString('base64')}`, 'bad-credentials', null],
    ['another NetBIOS domain', basic('OTHER\\alice', PASSWORD), 'bad-credentials', 'OTHER\\alice'],
    ['another UPN suffix', basic('alice@evil.test', PASSWORD), 'bad-credentials', 'alice@evil.test'],
    ['a leading space in the name', basic(' alice', PASSWORD), 'bad-credentials', ' alice'],
    ['an empty password', basic('alice', ''), 'bad-credentials', 'LAB\\alice'],
    ['a NUL in the password', basic('alice', `${PASSWORD}\0`), 'bad-credentials', 'LAB\\alice'],
  ])('%s → %s', async (_what, header, reason, user) => {
    const { auth, directory } = setup();
    const o = await auth.authenticate({ header, source: ATTACKER, groupDns: [GROUP], policyVersion: 'v1' });
    expect(o).toMatchObject({ ok: false, reason, user, cache: null });
    expect(directory.total).toBe(0);
  });
});

describe('Authenticator: decision caches', () => {
  it('answers a second identical request from the cache, with no directory call', async () => {
    const { login, directory } = setup();
    const first = await login('alice');
    expect(seen(first)).toEqual({ ok: true, cache: 'miss' });
    expect(identity(first)).toMatchObject({ user: 'LAB\\alice', sam: 'alice', upn: 'alice@lab.test', mail: 'alice@lab.test' });
    expect([...identity(first).groups]).toEqual([GROUP]);
    expect(directory.calls).toEqual({ findAccount: 1, verifyPassword: 1, accountStatus: 1, memberships: 1 });

    const second = await login('alice');
    expect(seen(second)).toEqual({ ok: true, cache: 'hit' });
    expect(identity(second)).toEqual(identity(first));
    expect(directory.total).toBe(4);
  });

  it('checks a wrong password once (negative cache) and answers bad-credentials both times', async () => {
    const { login, directory } = setup();
    expect(seen(await login('alice', 'wrong'))).toEqual({ reason: 'bad-credentials', cache: 'miss', status: undefined });
    expect(seen(await login('alice', 'wrong'))).toEqual({ reason: 'bad-credentials', cache: 'hit', status: undefined });
    expect(directory.calls.verifyPassword).toBe(1);
    expect(directory.calls.accountStatus + directory.calls.memberships).toBe(0);
  });

  it('asks again once negativeTtlSeconds have passed', async () => {
    const { login, directory, advance } = setup();
    await login('alice', 'wrong');
    advance(29 * S);
    await login('alice', 'wrong');
    expect(directory.calls.verifyPassword).toBe(1);
    advance(1 * S);
    await login('alice', 'wrong');
    expect(directory.calls.verifyPassword).toBe(2);
  });

  it('checks the password again once authTtlSeconds have passed', async () => {
    const { login, directory, advance } = setup();
    await login('alice');
    advance(299 * S);
    await login('alice');
    expect(directory.calls.verifyPassword).toBe(1);
    advance(1 * S);
    expect(seen(await login('alice'))).toEqual({ ok: true, cache: 'miss' });
    expect(directory.calls.verifyPassword).toBe(2);
  });

  it('merges 20 concurrent identical first requests into one call of each kind', async () => {
    const { login, directory } = setup();
    let release!: () => void;
    directory.hold = new Promise((r) => { release = r; });
    const outcomes = Array.from({ length: 20 }, () => login('alice'));
    await new Promise((r) => setImmediate(r));
    directory.hold = null;
    release();
    for (const o of await Promise.all(outcomes)) expect(seen(o)).toEqual({ ok: true, cache: 'miss' });
    expect(directory.calls).toEqual({ findAccount: 1, verifyPassword: 1, accountStatus: 1, memberships: 1 });
  });

  it('merges 20 concurrent identical wrong passwords into one check, counted once by lockout', async () => {
    const { login, directory } = setup();
    const outcomes = await Promise.all(Array.from({ length: 20 }, () => login('alice', 'old-password', ATTACKER)));
    for (const o of outcomes) expect(o).toMatchObject({ ok: false, reason: 'bad-credentials' });
    expect(directory.calls.verifyPassword).toBe(1);
    expect(seen(await login('alice', PASSWORD, ATTACKER))).toEqual({ ok: true, cache: 'miss' });
  });

  it('shares the password cache between LAB\\alice, alice, Alice and alice@lab.test (keyed by DN)', async () => {
    const { login, directory } = setup();
    for (const name of ['alice', 'LAB\\alice', 'lab\\ALICE', 'Alice', 'alice@lab.test', 'ALICE@LAB.TEST']) {
      expect(identity(await login(name)).user).toBe('LAB\\alice');
    }
    expect(directory.calls.verifyPassword).toBe(1);
  });

  it('does not cache across different passwords of one user', async () => {
    const { login, directory } = setup();
    await login('alice');
    expect(await login('alice', `${PASSWORD}x`)).toMatchObject({ ok: false, reason: 'bad-credentials' });
    expect(directory.calls.verifyPassword).toBe(2);
  });

  it('remembers a name that matched no account for groupTtlSeconds', async () => {
    const { login, directory, advance } = setup();
    expect(await login('nobody')).toMatchObject({ ok: false, reason: 'bad-credentials', user: 'LAB\\nobody', detail: 'no such account' });
    await login('nobody');
    expect(directory.calls.findAccount).toBe(1);
    advance(60 * S);
    await login('nobody');
    expect(directory.calls.findAccount).toBe(2);
    expect(directory.calls.verifyPassword).toBe(0);
  });
});

describe('Authenticator: smart lockout', () => {
  it('locks the unfamiliar class: even the right password gets gateway-lockout, with no bind', async () => {
    const { login, directory } = setup();
    for (const p of ['guess-1', 'guess-2', 'guess-3']) {
      expect(await login('alice', p, ATTACKER)).toMatchObject({ ok: false, reason: 'bad-credentials' });
    }
    const binds = directory.calls.verifyPassword;
    const locked = await login('alice', PASSWORD, ATTACKER);
    expect(locked).toMatchObject({ ok: false, reason: 'gateway-lockout', user: 'LAB\\alice' });
    expect(seen(locked).status).toBeUndefined();              // 401, not 429
    expect(directory.calls.verifyPassword).toBe(binds);
  });

  it('keeps a familiar source working while the unfamiliar class is locked', async () => {
    const { login, directory } = setup();
    identity(await login('alice', PASSWORD, HOME));           // HOME becomes familiar
    for (const p of ['guess-1', 'guess-2', 'guess-3', 'guess-4']) await login('alice', p, ATTACKER);
    const binds = directory.calls.verifyPassword;
    expect(await login('alice', PASSWORD, ATTACKER)).toMatchObject({ ok: false, reason: 'gateway-lockout' });
    expect(seen(await login('alice', PASSWORD, HOME))).toEqual({ ok: true, cache: 'hit' });
    expect(directory.calls.verifyPassword).toBe(binds);       // neither asked the DC
  });

  it('counts repeats of one wrong password once', async () => {
    const { login } = setup();
    for (let i = 0; i < 10; i++) await login('alice', 'old-password', ATTACKER);
    await login('alice', 'guess-1', ATTACKER);
    expect(identity(await login('alice', PASSWORD, ATTACKER)).user).toBe('LAB\\alice');
  });

  it('shares the counter between LAB\\alice, alice and alice@lab.test', async () => {
    const { login } = setup();
    await login('alice', 'guess-1', ATTACKER);
    await login('LAB\\alice', 'guess-2', ATTACKER);
    await login('alice@lab.test', 'guess-3', ATTACKER);
    for (const name of ['alice', 'LAB\\alice', 'alice@lab.test']) {
      expect(await login(name, PASSWORD, ATTACKER)).toMatchObject({ ok: false, reason: 'gateway-lockout' });
    }
  });

  it('counts one wrong password typed as LAB\\alice, alice and alice@lab.test once', async () => {
    const { login } = setup();
    for (const name of ['alice', 'LAB\\alice', 'alice@lab.test']) await login(name, 'old-password', ATTACKER);
    expect(identity(await login('alice', PASSWORD, ATTACKER)).user).toBe('LAB\\alice');
  });

  it('opens again once the failures are windowSeconds old, and refused attempts do not extend it', async () => {
    const { login, advance } = setup();
    for (const p of ['guess-1', 'guess-2', 'guess-3']) await login('alice', p, ATTACKER);
    advance(300 * S);
    expect(await login('alice', PASSWORD, ATTACKER)).toMatchObject({ reason: 'gateway-lockout' });
    advance(300 * S);
    expect(identity(await login('alice', PASSWORD, ATTACKER)).user).toBe('LAB\\alice');
  });

  it('does not count directory outages as failures', async () => {
    const { login, directory } = setup();
    directory.down();
    for (const p of ['guess-1', 'guess-2', 'guess-3', 'guess-4']) {
      expect(await login('alice', p, ATTACKER)).toMatchObject({ reason: 'directory-unavailable' });
    }
    directory.up();
    expect(identity(await login('alice', PASSWORD, ATTACKER)).user).toBe('LAB\\alice');
  });

  const sprays: [what: string, names: readonly string[]][] = [
    ['known accounts', ['alice', 'bob', 'carol', 'dave']],
    ['names that match no account', ['nobody1', 'nobody2', 'nobody3', 'nobody4']],
    ['names of other domains', ['OTHER\\a', 'OTHER\\b', 'x@evil.test', 'y@evil.test']],
  ];
  it.each(sprays)('blocks a source that sprays %s: 429 gateway-lockout for every account, no directory call', async (_what, names) => {
    const { login, directory } = setup();
    for (const n of names) expect(await login(n, 'Spring2025!', ATTACKER)).toMatchObject({ ok: false, reason: 'bad-credentials' });
    const calls = directory.total;
    for (const n of ['erin', 'alice', 'nobody9']) {
      expect(seen(await login(n, PASSWORD, ATTACKER))).toEqual({ reason: 'gateway-lockout', cache: null, status: 429 });
    }
    expect(directory.total).toBe(calls);
    expect(identity(await login('erin', PASSWORD, HOME)).user).toBe('LAB\\erin'); // other addresses unaffected
  });
});

describe('Authenticator: lockout under concurrency', () => {
  it('lets no more than threshold distinct wrong passwords reach the DC when sent at once', async () => {
    const { login, directory } = setup();
    const guesses = Array.from({ length: 10 }, (_, i) => login('alice', `guess-${i}`, ATTACKER));
    await Promise.all(guesses);
    expect(directory.calls.verifyPassword).toBeLessThanOrEqual(LOCKOUT.threshold);
  });

  it('lets no more than sourceAccounts accounts be tried from one address at once', async () => {
    const { login, directory } = setup();
    await Promise.all(USERS.map((u) => login(u, 'Spring2025!', ATTACKER)));
    expect(directory.calls.verifyPassword).toBeLessThanOrEqual(LOCKOUT.sourceAccounts);
  });
});

describe('Authenticator: account standing (groups and state)', () => {
  it('applies a group removal after groupTtlSeconds, not before', async () => {
    const { login, directory, advance } = setup();
    expect([...identity(await login('alice')).groups]).toEqual([GROUP]);
    directory.inner = aliceRemoved;
    advance(59_999);
    const before = await login('alice');
    expect([...identity(before).groups]).toEqual([GROUP]);
    expect(before.cache).toBe('hit');
    advance(1);
    const after = await login('alice');
    expect([...identity(after).groups]).toEqual([]);
    expect(after.cache).toBe('miss');
    expect(directory.calls.memberships).toBe(2);
    expect(directory.calls.verifyPassword).toBe(1);           // the password is still cached
  });

  it('refuses an account disabled after it was cached, after groupTtlSeconds, with that reason', async () => {
    const { login, directory, advance } = setup();
    identity(await login('alice'));
    directory.status = 'account-disabled';
    advance(59 * S);
    expect(identity(await login('alice')).user).toBe('LAB\\alice');
    advance(1 * S);
    expect(await login('alice')).toMatchObject({ ok: false, reason: 'account-disabled', user: 'LAB\\alice', cache: 'miss' });
    expect(directory.calls.verifyPassword).toBe(1);
  });

  it.each<PasswordRefusal>(['account-locked', 'account-expired', 'password-expired', 'password-must-change'])(
    'reports a later %s as such',
    async (refusal) => {
      const { login, directory, advance } = setup();
      identity(await login('alice'));
      directory.status = refusal;
      advance(60 * S);
      expect(await login('alice')).toMatchObject({ ok: false, reason: refusal });
    },
  );

  it('refreshes the standing at once when the policy version changes', async () => {
    const { login, directory } = setup();
    expect([...identity(await login('bob', PASSWORD, HOME, 'v1', [GROUP])).groups]).toEqual([GROUP]);
    const v2 = await login('bob', PASSWORD, HOME, 'v2', [GROUP, OTHER_GROUP]);
    expect([...identity(v2).groups].sort()).toEqual([GROUP, OTHER_GROUP].sort());
    expect(v2.cache).toBe('miss');
    expect(directory.calls).toMatchObject({ verifyPassword: 1, memberships: 2, accountStatus: 2 });
  });
});

describe('Authenticator: directory unavailable', () => {
  it('answers directory-unavailable for an uncached user', async () => {
    const { login, directory } = setup();
    directory.down();
    expect(seen(await login('alice'))).toEqual({ reason: 'directory-unavailable', cache: 'miss', status: undefined });
  });

  it('is not noticed by users whose entries are still fresh', async () => {
    const { login, directory, advance } = setup();
    await login('alice');
    directory.down();
    advance(59 * S);
    expect(seen(await login('alice'))).toEqual({ ok: true, cache: 'hit' });
  });

  it('serves expired entries within staleIfErrorSeconds, logged stale', async () => {
    const { login, directory, advance } = setup({ cache: { staleIfErrorSeconds: 600 } });
    await login('alice');
    directory.down();
    advance(301 * S);                                         // past auth and group TTLs
    const o = await login('alice');
    expect(seen(o)).toEqual({ ok: true, cache: 'stale' });
    expect([...identity(o).groups]).toEqual([GROUP]);
  });

  it('recovers without a restart when the directory is back', async () => {
    const { login, directory, advance } = setup({ cache: { staleIfErrorSeconds: 600 } });
    await login('alice');
    directory.down();
    advance(301 * S);
    await login('alice');
    directory.up();
    expect(seen(await login('alice'))).toEqual({ ok: true, cache: 'miss' });
    expect(seen(await login('alice'))).toEqual({ ok: true, cache: 'hit' });
  });

  it('does not serve a stale wrong password as a yes', async () => {
    const { login, directory, advance } = setup({ cache: { staleIfErrorSeconds: 600 } });
    await login('alice');
    directory.down();
    advance(301 * S);
    expect(await login('alice', 'wrong')).toMatchObject({ ok: false, reason: 'directory-unavailable' });
  });
  it('answers directory-unavailable past the stale window', async () => {
    const { login, directory, advance } = setup({ cache: { staleIfErrorSeconds: 600 } });
    await login('alice');
    directory.down();
    advance(901 * S);                                         // auth TTL 300 + 600 (standing went at 660)
    expect(await login('alice')).toMatchObject({ ok: false, reason: 'directory-unavailable' });
  });

  it('answers directory-unavailable once entries expire when staleIfErrorSeconds is 0', async () => {
    const { login, directory, advance } = setup({ cache: { staleIfErrorSeconds: 0 } });
    await login('alice');
    directory.down();
    advance(301 * S);
    expect(await login('alice')).toMatchObject({ ok: false, reason: 'directory-unavailable' });
  });

  it('passes on a fault that is not a DirectoryUnavailableError (a bug, not an outage)', async () => {
    const { login, directory } = setup();
    directory.failure = new TypeError('programming error');
    await expect(login('alice')).rejects.toThrow(TypeError);
  });
});
