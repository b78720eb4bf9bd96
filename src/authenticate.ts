/**
 * authenticate: the `Authorization` header → an Identity, or the reason there is none.
 *
 * Basic only for now (NTLM identification comes with issue 4). The order is fixed and cheap checks
 * come first, so garbage never costs an LDAP round trip:
 *   parse header → parse logon name (our domain only) → refuse an empty password (an empty LDAP
 *   simple bind is an anonymous bind and "succeeds") → find exactly one account → bind as it →
 *   read its policy-relevant groups (transitively).
 * A directory fault is never a "no": it becomes `directory-unavailable` (503), never an allow.
 */
import { parseBasic, parseLogon, type LogonDomain } from './credentials.js';
import type { Account, Directory } from './directory/directory.js';
import { DirectoryUnavailableError, type CredentialReason } from './errors.js';
import type { Principal } from './authorize.js';

/** An authenticated user with the memberships the policy asks about. */
export interface Identity extends Account, Principal {}

export type AuthOutcome =
  | { readonly ok: true; readonly identity: Identity; readonly cache: 'hit' | 'miss' }
  | {
    readonly ok: false;
    readonly reason: CredentialReason | 'directory-unavailable';
    /** The name to log: normalized when the account was found, as typed otherwise, null without credentials. */
    readonly user: string | null;
    readonly detail?: string;
  };

export interface AuthenticatorDeps {
  readonly directory: Directory;
  readonly domain: LogonDomain;
}

/** Authenticates Basic credentials against the directory. One per gateway state. */
export class Authenticator {
  constructor(private readonly deps: AuthenticatorDeps) {}

  /** `groupDns`: the groups the current policy names; only these memberships are looked up. */
  async authenticate(header: string | undefined, groupDns: readonly string[]): Promise<AuthOutcome> {
    const credential = parseBasic(header);
    if (credential === null) return { ok: false, reason: 'no-credentials', user: null };
    if (credential === 'malformed') return { ok: false, reason: 'bad-credentials', user: null, detail: 'malformed Basic header' };
    const logon = parseLogon(credential.user, this.deps.domain);
    if (logon.kind === 'refused') return { ok: false, reason: 'bad-credentials', user: logon.display, detail: logon.why };
    if (credential.password === '') return { ok: false, reason: 'bad-credentials', user: logon.display, detail: 'empty password' };
    if (credential.password.includes('\0')) return { ok: false, reason: 'bad-credentials', user: logon.display, detail: 'NUL in password' };
    try {
      const account = await this.deps.directory.findAccount(logon);
      if (!account) return { ok: false, reason: 'bad-credentials', user: logon.display, detail: 'no such account' };
      const check = await this.deps.directory.verifyPassword(account, credential.password);
      if (!check.ok) return { ok: false, reason: check.reason, user: account.user };
      const groups = await this.deps.directory.memberships(account, groupDns);
      return { ok: true, identity: { ...account, groups }, cache: 'miss' };
    } catch (err) {
      if (err instanceof DirectoryUnavailableError) {
        return { ok: false, reason: 'directory-unavailable', user: logon.display, detail: err.message };
      }
      throw err;
    }
  }
}
