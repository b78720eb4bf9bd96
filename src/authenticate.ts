/**
 * authenticate: the `Authorization` header → an Identity, or the reason there is none.
 *
 * Basic only for now (NTLM identification comes with issue 4). Cheap checks come first, so that
 * garbage and attacks never cost an LDAP round trip, and the gateway's own lockout comes before
 * any bind, so that AD never sees what the gateway refuses:
 *
 *   parse header → source address spraying? (429) → parse the logon name (our domain only) →
 *   refuse an empty password → find the account (cached) → account locked at the gateway? (401,
 *   no bind) → the password: cached verdict, or one bind (coalesced, bounded) → the account's
 *   standing: state and policy-relevant groups (cached for groupTtlSeconds).
 *
 * A directory fault is never a "no": it becomes `directory-unavailable` (503), or, within
 * `staleIfErrorSeconds`, an answer from expired cache entries, logged `cache: stale`.
 */
import type { Principal } from './authorize.js';
import { parseBasic, parseLogon, type Logon, type LogonDomain } from './credentials.js';
import { DecisionCache, type CacheSettings, type Standing } from './decision-cache.js';
import { dnKey, type Account, type Directory, type PasswordRefusal } from './directory/directory.js';
import { DirectoryUnavailableError, type CredentialReason } from './errors.js';
import { Lockout, type LockoutSettings } from './lockout.js';

/** An authenticated user with the memberships the policy asks about. */
export interface Identity extends Account, Principal {}

/** Where an answer came from: `hit` no directory call, `miss` at least one, `stale` an expired entry. */
export type CacheUse = 'hit' | 'miss' | 'stale';

export type AuthOutcome =
  | { readonly ok: true; readonly identity: Identity; readonly cache: CacheUse }
  | {
    readonly ok: false;
    readonly reason: CredentialReason | 'directory-unavailable';
    /** The name to log: normalized when the account was found, as typed otherwise, null without credentials. */
    readonly user: string | null;
    readonly cache: CacheUse | null;
    readonly detail?: string;
    /** 429 for a source address that sprays many accounts. */
    readonly status?: number;
  };

/** One authentication question. */
export interface AuthRequest {
  readonly header: string | undefined;
  /** The client's address (lockout keeps familiar and unfamiliar sources apart). */
  readonly source: string;
  /** The groups the current policy names; only these memberships are looked up. */
  readonly groupDns: readonly string[];
  /** The current policy's version: standing cached under another policy is not reused. */
  readonly policyVersion: string;
}

export interface AuthenticatorDeps {
  readonly directory: Directory;
  readonly domain: LogonDomain;
  readonly cache: CacheSettings;
  readonly lockout: LockoutSettings;
}

/** Tracks whether a request's answer needed the directory. */
class Trace {
  use: CacheUse = 'hit';
  miss(): void {
    if (this.use === 'hit') this.use = 'miss';
  }
  stale(): void {
    this.use = 'stale';
  }
}

type Failure = Extract<AuthOutcome, { ok: false }>;

/** Authenticates Basic credentials. One per gateway state; its caches die with it on reload. */
export class Authenticator {
  readonly cache: DecisionCache;
  readonly lockout: Lockout;

  constructor(
    private readonly deps: AuthenticatorDeps,
    carry: { readonly cache?: DecisionCache | undefined; readonly lockout?: Lockout | undefined } = {},
    now: () => number = Date.now,
  ) {
    this.cache = carry.cache ?? new DecisionCache(deps.cache, now);
    this.lockout = carry.lockout ?? new Lockout(deps.lockout, now);
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    const credential = parseBasic(req.header);
    if (credential === null) return fail('no-credentials', null, null);
    if (credential === 'malformed') return fail('bad-credentials', null, null, 'malformed Basic header');
    if (this.lockout.check(null, req.source) === 'source-blocked') {
      return { ...fail('gateway-lockout', credential.user, null, 'source address failed for too many accounts'), status: 429 };
    }
    const logon = parseLogon(credential.user, this.deps.domain);
    const refuse = (why: string): Failure => {
      this.lockout.failure(null, req.source, this.cache.credentialKey(credential.user, credential.password));
      return fail('bad-credentials', logon.display, null, why);
    };
    if (logon.kind === 'refused') return refuse(logon.why);
    if (credential.password === '') return refuse('empty password');
    if (credential.password.includes('\0')) return refuse('NUL in password');

    const trace = new Trace();
    try {
      const account = await this.account(logon, trace);
      if (!account) return { ...refuse('no such account'), cache: trace.use };
      const who = dnKey(account.dn);
      const key = this.cache.credentialKey(who, credential.password);
      const attempt = this.lockout.reserve(who, req.source, key);
      if (attempt.verdict === 'source-blocked') return { ...fail('gateway-lockout', account.user, trace.use, 'source address failed for too many accounts'), status: 429 };
      if (attempt.verdict === 'account-locked') return fail('gateway-lockout', account.user, trace.use, 'too many wrong passwords from this kind of source');
      let refusal: PasswordRefusal | null;
      try {
        refusal = await this.password(account, credential.password, key, trace);
      } finally {
        attempt.release();
      }
      if (refusal) {
        if (refusal === 'bad-credentials') this.lockout.failure(who, req.source, key);
        return fail(refusal, account.user, trace.use);
      }
      const standing = await this.standing(account, req, trace);
      if (standing.refusal) return fail(standing.refusal, account.user, trace.use, 'account state changed since the password was checked');
      this.lockout.success(who, req.source);
      return { ok: true, identity: { ...account, groups: standing.groups }, cache: trace.use };
    } catch (err) {
      if (err instanceof DirectoryUnavailableError) return fail('directory-unavailable', logon.display, trace.use, err.message);
      throw err;
    }
  }

  /** The account a logon names (null: none), from the cache or one search. */
  private async account(logon: Logon & { kind: 'sam' | 'upn' }, trace: Trace): Promise<Account | null> {
    const key = logon.kind === 'sam' ? `sam:${logon.sam.toLowerCase()}` : `upn:${logon.upn.toLowerCase()}`;
    const cached = this.cache.accounts.fresh(key);
    if (cached) return cached.account;
    return this.orStale(trace, () => this.cache.accounts.stale(key)?.account, async () => {
      const account = await this.cache.coalesce(`account\0${key}`, () => this.deps.directory.findAccount(logon));
      this.cache.accounts.set(key, { account });
      return account;
    });
  }

  /** Why the password does not open the account (null: it does), from the caches or one bind. */
  private async password(account: Account, password: string, key: string, trace: Trace): Promise<PasswordRefusal | null> {
    if (this.cache.auth.fresh(key)) return null;
    const known = this.cache.negative.fresh(key);
    if (known) return known.reason;
    return this.orStale(trace, () => (this.cache.auth.stale(key) ? null : undefined), async () => {
      const check = await this.cache.coalesce(`password\0${key}`, () => this.deps.directory.verifyPassword(account, password));
      if (check.ok) this.cache.auth.set(key, account);
      else this.cache.negative.set(key, { reason: check.reason });
      return check.ok ? null : check.reason;
    });
  }

  /** The account's state and policy-relevant groups, refreshed every groupTtlSeconds. */
  private async standing(account: Account, req: AuthRequest, trace: Trace): Promise<Standing> {
    const key = `${req.policyVersion}\0${dnKey(account.dn)}`;
    const cached = this.cache.standing.fresh(key);
    if (cached) return cached;
    return this.orStale(trace, () => this.cache.standing.stale(key), async () => {
      const standing = await this.cache.coalesce(`standing\0${key}`, async () => {
        const [refusal, groups] = await Promise.all([
          this.deps.directory.accountStatus(account),
          this.deps.directory.memberships(account, req.groupDns),
        ]);
        return { refusal, groups };
      });
      this.cache.standing.set(key, standing);
      return standing;
    });
  }

  /** Runs a directory lookup; if the directory is down, falls back to a stale cache entry. */
  private async orStale<T>(trace: Trace, stale: () => T | undefined, fetch: () => Promise<T>): Promise<T> {
    trace.miss();
    try {
      return await fetch();
    } catch (err) {
      if (!(err instanceof DirectoryUnavailableError)) throw err;
      const fallback = stale();
      if (fallback === undefined) throw err;
      trace.stale();
      return fallback;
    }
  }
}

function fail(reason: Failure['reason'], user: string | null, cache: CacheUse | null, detail?: string): Failure {
  return detail === undefined ? { ok: false, reason, user, cache } : { ok: false, reason, user, cache, detail };
}
