/**
 * authenticate: a logon name and password → an Identity, or the reason there is none (NTLM is
 * verified by Exchange; `claim` prepares it, see ntlm-auth.ts). Cheap checks first, the gateway's
 * lockout before any bind (AD never sees what the gateway refuses): the name (our domain only), an
 * empty password, a spraying source, the account (cached), the lockout, a wrong password already
 * refused, then the password (cached, or one bind) and the account's standing (cached for
 * groupTtlSeconds). A directory fault is never a "no": 503, or within `staleIfErrorSeconds` while
 * the DCs are unreachable, an answer from expired cache entries (`cache: stale`).
 */ import { accountKey, blocked, fail, lockedOut, refusalOf, Trace } from './auth-outcome.js';
import type {
  AuthOutcome,
  AuthRequest,
  AuthenticatorDeps,
  CacheUse,
  ClaimOutcome,
  ClaimRequest,
} from './auth-outcome.js';
import type { Failure, Identity, PasswordVerdict, Proven } from './auth-outcome.js';
import { parseLogon, type Logon } from './credentials.js';
import { DecisionCache, type Standing } from './decision-cache.js';
import { dnKey, type Account } from '../directory/directory.js';
import { DirectoryUnavailableError } from '../errors.js';
import { Lockout } from './lockout.js';

export type { AuthOutcome, AuthRequest, AuthenticatorDeps, CacheUse } from './auth-outcome.js';
export type { ClaimOutcome, ClaimRequest, Identity } from './auth-outcome.js';

/** Verifies logons for every front-end. Its caches and lockout survive a reload (state.ts). */
export class Authenticator {
  readonly cache: DecisionCache;
  readonly lockout: Lockout;
  readonly #proven = new WeakMap<object, Proven>();

  constructor(
    private readonly deps: AuthenticatorDeps,
    carry: { readonly cache?: DecisionCache | undefined; readonly lockout?: Lockout | undefined } = {},
    private readonly now: () => number = Date.now,
  ) {
    this.cache = carry.cache ?? new DecisionCache(deps.cache, now);
    this.lockout = carry.lockout ?? new Lockout(deps.lockout, now);
    if (carry.lockout) carry.lockout.reconfigure(deps.lockout);
  }

  /** A logon name as typed (`LAB\\user`, `user@suffix`, `user`) and its password: Basic and forms ask this. */
  async verify(user: string, password: string, req: AuthRequest): Promise<AuthOutcome> {
    const proven = this.provenOn(req);
    if (proven) return { ok: true, identity: proven, cache: 'hit' };
    const logon = parseLogon(user, this.deps.domain);
    const unknown = (why: string, cache: CacheUse | null): Failure => {
      this.lockout.failure(null, req.source, `name:${logon.display.toLowerCase()}`);
      return fail('bad-credentials', logon.display, cache, why);
    };
    if (logon.kind === 'refused') return unknown(logon.why, null);
    if (password === '') return unknown('empty password', null);
    if (password.includes('\0')) return unknown('NUL in password', null);
    if (this.sourceBlocked(logon, req.source)) return blocked(logon.display);

    const trace = new Trace();
    try {
      const account = await this.account(logon, trace);
      if (!account) return unknown('no such account', trace.use);
      const who = dnKey(account.dn);
      const key = this.cache.credentialKey(who, password);
      let verdict = await this.checkPassword(account, password, key, req.source, trace);
      if (verdict.refusal === 'gateway-lockout') return lockedOut(account.user, trace.use, verdict);
      if (verdict.refusal) return fail(verdict.refusal, account.user, trace.use);
      const standing = await this.standing(account, req, trace);
      // A password set after the cached check (an admin reset): check the typed one again.
      if (!verdict.bound && standing.passwordSetAt !== null && verdict.verifiedAt < standing.passwordSetAt) {
        this.cache.auth.delete(key);
        verdict = await this.checkPassword(account, password, key, req.source, trace);
        if (verdict.refusal === 'gateway-lockout') return lockedOut(account.user, trace.use, verdict);
        if (verdict.refusal) return fail(verdict.refusal, account.user, trace.use);
      }
      if (standing.refusal)
        return fail(standing.refusal, account.user, trace.use, 'account state changed since the password was checked');
      this.lockout.success(who, req.source, verdict.bound, accountKey(logon));
      const identity = { ...account, groups: standing.groups };
      if (req.connection && req.proof !== undefined && trace.use !== 'stale')
        this.remember(req.connection, req.proof, identity, key, req);
      return { ok: true, identity, cache: trace.use };
    } catch (err) {
      if (err instanceof DirectoryUnavailableError)
        return fail('directory-unavailable', logon.display, trace.use, err.message);
      throw err;
    }
  }

  /** The identity a connection already proved with these credentials, while that holds. */
  private provenOn(req: AuthRequest): Identity | null {
    const p = req.connection && req.proof !== undefined ? this.#proven.get(req.connection) : undefined;
    const holds = p && p.proof === req.proof && p.policyVersion === req.policyVersion && this.now() < p.until;
    return holds ? p.identity : null;
  }

  /** Remembers a proven header on its connection, until its password or standing entry ages. */
  private remember(connection: object, proof: string, identity: Identity, key: string, req: AuthRequest): void {
    const until = Math.min(
      this.cache.auth.freshUntil(key) ?? 0,
      this.cache.standing.freshUntil(`${req.policyVersion}\0${dnKey(identity.dn)}`) ?? 0,
    );
    if (until > this.now()) this.#proven.set(connection, { proof, identity, until, policyVersion: req.policyVersion });
  }

  /**
   * NTLM: the account a Type 3 claims, its state and groups — everything but the password, which
   * Exchange's DC checks when the message is forwarded. `settle(accepted)` must be called with
   * Exchange's verdict (null: no verdict, e.g. the client left): it feeds the lockout, and the
   * attempt counts as in flight until then.
   */
  async claim(req: ClaimRequest): Promise<ClaimOutcome> {
    const unknown = (why: string, cache: CacheUse | null): Failure => {
      this.lockout.failure(null, req.source, `name:${req.logon.display.toLowerCase()}`);
      return fail('bad-credentials', req.logon.display, cache, why);
    };
    if (req.logon.kind === 'refused') return unknown(req.logon.why, null);
    if (this.sourceBlocked(req.logon, req.source)) return blocked(req.logon.display);
    const trace = new Trace();
    try {
      const account = await this.account(req.logon, trace);
      if (!account) return unknown('no such account', trace.use);
      const who = dnKey(account.dn);
      const attempt = await this.lockout.reserveShared(who, req.source, req.fingerprint);
      if (attempt.verdict !== 'open') return lockedOut(account.user, trace.use, refusalOf(attempt.verdict));
      let standing: Standing;
      try {
        standing = await this.standing(account, req, trace);
      } catch (err) {
        attempt.release();
        throw err;
      }
      if (standing.refusal) {
        attempt.release();
        return fail(standing.refusal, account.user, trace.use);
      }
      const settle = (accepted: boolean | null) => {
        attempt.release();
        // Exchange's 2xx says the DC accepted it, but the gateway saw no bind of its own: the
        // source becomes familiar, the counts stay (only a bind it verified resets them).
        if (accepted === true)
          this.lockout.success(
            who,
            req.source,
            false,
            req.logon.kind === 'refused' ? undefined : accountKey(req.logon),
          );
        if (accepted === false) this.lockout.failure(who, req.source, req.fingerprint);
      };
      return { ok: true, identity: { ...account, groups: standing.groups }, cache: trace.use, settle };
    } catch (err) {
      if (err instanceof DirectoryUnavailableError)
        return fail('directory-unavailable', req.logon.display, trace.use, err.message);
      throw err;
    }
  }

  /**
   * An identity Exchange already accepted on this connection (NTLM), with its state and groups
   * as of now (cached for groupTtlSeconds): a removal from a group reaches open connections too.
   */
  async refresh(account: Account, req: AuthRequest): Promise<AuthOutcome> {
    const trace = new Trace();
    try {
      const standing = await this.standing(account, req, trace);
      if (standing.refusal) return fail(standing.refusal, account.user, trace.use);
      return { ok: true, identity: { ...account, groups: standing.groups }, cache: trace.use };
    } catch (err) {
      if (err instanceof DirectoryUnavailableError)
        return fail('directory-unavailable', account.user, trace.use, err.message);
      throw err;
    }
  }

  /**
   * An address spraying many accounts is refused before any lookup, except for an account whose
   * cached record says the address is familiar to it (a family behind one NAT keeps working).
   */
  private sourceBlocked(logon: Logon, source: string): boolean {
    if (this.lockout.check(null, source) !== 'source-blocked') return false;
    if (logon.kind === 'refused') return true;
    const account = this.cache.accounts.fresh(accountKey(logon))?.account;
    return !(
      (account && this.lockout.isFamiliar(dnKey(account.dn), source)) ||
      this.lockout.familiarName(accountKey(logon), source)
    );
  }

  /**
   * Whether the password opens the account: the gateway's lockout first (no bind when locked, or
   * when this wrong password was already refused), then the caches, then one bind. The attempt
   * counts as in flight until the bind has answered.
   */
  private async checkPassword(
    account: Account,
    password: string,
    key: string,
    source: string,
    trace: Trace,
  ): Promise<PasswordVerdict | { refusal: 'gateway-lockout'; status?: number }> {
    const who = dnKey(account.dn);
    const cached = this.cache.auth.fresh(key);
    if (cached) {
      // no bind: a plain check is enough
      const verdict = this.lockout.check(who, source);
      if (verdict !== 'open')
        return { refusal: 'gateway-lockout', ...(verdict === 'source-blocked' ? { status: 429 } : {}) };
      return { refusal: null, verifiedAt: cached.verifiedAt, bound: false };
    }
    const attempt = await this.lockout.reserveShared(who, source, key);
    if (attempt.verdict !== 'open') return { refusal: 'gateway-lockout', ...refusalOf(attempt.verdict) };
    try {
      if (this.lockout.knownBad(who, key)) return { refusal: 'bad-credentials' };
      const known = this.cache.negative.fresh(key);
      if (known) return { refusal: known.reason };
      const verdict = await this.orStale<PasswordVerdict>(
        trace,
        () => {
          const old = this.cache.auth.stale(key);
          return old ? { refusal: null, verifiedAt: old.verifiedAt, bound: false } : undefined;
        },
        async () => {
          const check = await this.cache.coalesce(`password\0${key}`, () =>
            this.deps.directory.verifyPassword(account, password),
          );
          if (check.ok) {
            const verifiedAt = this.now();
            this.cache.auth.set(key, { account, verifiedAt });
            return { refusal: null, verifiedAt, bound: true };
          }
          this.cache.negative.set(key, { reason: check.reason });
          return { refusal: check.reason };
        },
      );
      if (verdict.refusal === 'bad-credentials') this.lockout.failure(who, source, key);
      return verdict;
    } finally {
      attempt.release();
    }
  }

  /** The account a logon names (null: none), from the cache or one search. */
  private async account(logon: Logon & { kind: 'sam' | 'upn' }, trace: Trace): Promise<Account | null> {
    const key = accountKey(logon);
    const cached = this.cache.accounts.fresh(key);
    if (cached) return cached.account;
    return this.orStale(
      trace,
      () => this.cache.accounts.stale(key)?.account,
      async () => {
        const account = await this.cache.coalesce(`account\0${key}`, () => this.deps.directory.findAccount(logon));
        this.cache.accounts.set(key, { account });
        return account;
      },
    );
  }

  /** The account's state, password age and policy-relevant groups, refreshed every groupTtlSeconds. */
  private async standing(
    account: Account,
    req: Pick<AuthRequest, 'groupDns' | 'policyVersion'>,
    trace: Trace,
  ): Promise<Standing> {
    const key = `${req.policyVersion}\0${dnKey(account.dn)}`;
    const cached = this.cache.standing.fresh(key);
    if (cached) return cached;
    return this.orStale(
      trace,
      () => this.cache.standing.stale(key),
      async () => {
        const standing = await this.cache.coalesce(`standing\0${key}`, async () => {
          const [status, groups] = await Promise.all([
            this.deps.directory.accountStatus(account),
            this.deps.directory.memberships(account, req.groupDns),
          ]);
          return { refusal: status.refusal, passwordSetAt: status.passwordSetAt, groups };
        });
        this.cache.standing.set(key, standing);
        return standing;
      },
    );
  }

  /**
   * Runs a directory lookup; if the DCs are unreachable (not merely busy), falls back to a
   * stale cache entry, and says so.
   */
  private async orStale<T>(trace: Trace, stale: () => T | undefined, fetch: () => Promise<T>): Promise<T> {
    trace.miss();
    try {
      return await fetch();
    } catch (err) {
      if (!(err instanceof DirectoryUnavailableError) || err.overload) throw err;
      const fallback = stale();
      if (fallback === undefined) throw err;
      trace.stale();
      this.deps.onStale?.(err);
      return fallback;
    }
  }
}
