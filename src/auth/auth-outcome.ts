/**
 * What authentication answers (AuthOutcome and its kin), and the small helpers the Authenticator
 * builds its answers with: refusals with their reasons, the trace of cache use, lockout refusals.
 */
import type { Principal } from '../pipeline/authorize.js';
import type { Logon, LogonDomain } from './credentials.js';
import type { CacheSettings } from './decision-cache.js';
import type { Account, Directory, PasswordRefusal } from '../directory/directory.js';
import type { CredentialReason, DirectoryUnavailableError } from '../errors.js';
import type { LockoutSettings, LockoutVerdict } from './lockout.js';

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

/** One authentication question, whatever front-end (Basic, NTLM, a form) asks it. */
export interface AuthRequest {
  /** The client's address (lockout keeps familiar and unfamiliar sources apart). */
  readonly source: string;
  /** The groups the current policy names; only these memberships are looked up. */
  readonly groupDns: readonly string[];
  /** The current policy's version: standing cached under another policy is not reused. */
  readonly policyVersion: string;
  /** The client connection and what it presented (its Basic header): credentials a connection
   * already proved are not checked again while their cache entries are fresh (a phone or Outlook
   * repeats the same Basic header on every request). */
  readonly connection?: object;
  readonly proof?: string;
}

/** What a connection proved: its credentials (as presented), the identity, and until when that holds. */
export interface Proven {
  readonly proof: string;
  readonly identity: Identity;
  readonly until: number;
  readonly policyVersion: string;
}

/** An NTLM claim: the logon a Type 3 names, and a fingerprint of that attempt. */
export interface ClaimRequest extends AuthRequest {
  readonly logon: Logon;
  readonly fingerprint: string;
}

export type ClaimOutcome =
  | { readonly ok: true; readonly identity: Identity; readonly cache: CacheUse; settle(accepted: boolean | null): void }
  | Failure;

export interface AuthenticatorDeps {
  readonly directory: Directory;
  readonly domain: LogonDomain;
  readonly cache: CacheSettings;
  readonly lockout: LockoutSettings;
  /** Told when stale entries answer because the directory is down. */
  readonly onStale?: (err: DirectoryUnavailableError) => void;
}

export type Failure = Extract<AuthOutcome, { ok: false }>;

/** Tracks whether a request's answer needed the directory. */
export class Trace {
  use: CacheUse = 'hit';
  miss(): void {
    if (this.use === 'hit') this.use = 'miss';
  }
  stale(): void {
    this.use = 'stale';
  }
}

/** What a password check found: a refusal, or the time the password was last verified by a bind. */
export type PasswordVerdict =
  | { readonly refusal: PasswordRefusal }
  | { readonly refusal: null; readonly verifiedAt: number; readonly bound: boolean };

export const SOURCE_BLOCKED = 'source address failed for too many accounts';
const LOCKED = 'too many wrong passwords from this kind of source';
const BUSY = 'too many sign-ins of this account in flight; try again';

export function accountKey(logon: Logon & { kind: 'sam' | 'upn' }): string {
  return logon.kind === 'sam' ? `sam:${logon.sam.toLowerCase()}` : `upn:${logon.upn.toLowerCase()}`;
}

export function fail(reason: Failure['reason'], user: string | null, cache: CacheUse | null, detail?: string): Failure {
  return detail === undefined ? { ok: false, reason, user, cache } : { ok: false, reason, user, cache, detail };
}

export function blocked(user: string): Failure {
  return { ...fail('gateway-lockout', user, null, SOURCE_BLOCKED), status: 429 };
}

export function lockedOut(user: string, cache: CacheUse, v: { status?: number }): Failure {
  if (v.status === 503) return { ...fail('gateway-lockout', user, cache, BUSY), status: 503 };
  return v.status
    ? { ...fail('gateway-lockout', user, cache, SOURCE_BLOCKED), status: v.status }
    : fail('gateway-lockout', user, cache, LOCKED);
}

/** A lockout refusal's status: 429 for a spraying source, 503 (try again) when the wait for a
 * reservation ran out, else the 401 of a wrong password. */
export function refusalOf(verdict: Exclude<LockoutVerdict, 'open'>): { status?: number } {
  return verdict === 'source-blocked' ? { status: 429 } : verdict === 'busy' ? { status: 503 } : {};
}
