/**
 * The Directory: what the gateway needs from Active Directory, and nothing of LDAP leaks out.
 * Two implementations keep this contract: `ldap` (production, ldapts against AD) and `file`
 * (the demo and labs: users, scrypt hashes and nested groups in YAML). One contract test suite
 * runs against both (test/contract/directory.contract.test.ts).
 *
 * "No" is a value, "broken" is an error: a wrong password is `{ ok: false, reason }`; only a
 * technical fault throws, and then always a DirectoryUnavailableError.
 */
import type { Logon } from '../auth/credentials.js';

/** An account found in the directory. DNs are compared case-insensitively everywhere. */
export interface Account {
  readonly dn: string;
  readonly sam: string;
  /** `NETBIOS\sam`, sam lowercased: how the access log and `explain` name the account. */
  readonly user: string;
  readonly upn: string | null;
  readonly mail: string | null;
}

/** A group, named by its DN and its sAMAccountName. */
export interface GroupRef {
  readonly dn: string;
  readonly name: string;
}

/** Why a password check said no (INTERFACE.md reasons). */
export type PasswordRefusal =
  | 'bad-credentials'
  | 'account-disabled'
  | 'account-locked'
  | 'account-expired'
  | 'password-expired'
  | 'password-must-change';

export interface AccountStatus {
  readonly refusal: PasswordRefusal | null;
  /** When the password was last set (ms since the epoch), or null when unknown. */
  readonly passwordSetAt: number | null;
}

export type PasswordCheck = { readonly ok: true } | { readonly ok: false; readonly reason: PasswordRefusal };

export interface Directory {
  /** Finds the one account a logon names; null when there is none (or more than one). */
  findAccount(logon: Logon & { kind: 'sam' | 'upn' }): Promise<Account | null>;
  /** Checks a password against the account, as the DC would at logon: the password first,
   * then the account's state. The password is never empty here (authenticate refuses that). */
  verifyPassword(account: Account, password: string): Promise<PasswordCheck>;
  /** Whether the account can sign in now, without its password: the state AD would report at
   * logon (disabled, locked, expired, must change, password expired; null when it can), and when
   * its password was last set (so that a reset ends cached sign-ins). */
  accountStatus(account: Account): Promise<AccountStatus>;
  /** Which of `groupDns` the account belongs to, directly or through nested groups.
   * Returns lowercased DNs. */
  memberships(account: Account, groupDns: readonly string[]): Promise<ReadonlySet<string>>;
  /** Every group the account belongs to, transitively (for `exgate explain`). */
  groupsOf(account: Account): Promise<readonly GroupRef[]>;
  /** Resolves a group named by sAMAccountName or DN; null when there is no such group. */
  resolveGroup(name: string): Promise<GroupRef | null>;
  /** Every user with a mailbox (mailbox-flags): Exchange's attributes say so in real AD
   * (`homeMDB`); in a directory without the Exchange schema, a user with `mail`. */
  listMailboxes(): Promise<readonly Account[]>;
  /** The users that are members of a group, directly or through nested groups (lowercase DNs). */
  membersOf(groupDn: string): Promise<ReadonlySet<string>>;
  /** Resolves when the directory answers (for /readyz and startup). */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Lowercases a DN for comparison. AD compares DNs case-insensitively. */
export function dnKey(dn: string): string {
  return dn.toLowerCase();
}

/** True when a string looks like a DN rather than a sAMAccountName. */
export function looksLikeDn(name: string): boolean {
  return /^(cn|ou|dc)=/i.test(name.trim());
}
