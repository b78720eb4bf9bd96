/**
 * The state bus: what the processes (and, later, the gateways) of one deployment share. One
 * implementation per topology: in-process (local-bus.ts), IPC to the primary (ipc-bus.ts), Redis (redis-bus.ts).
 * Its authority is the one place that reserves and counts; a holder that dies gives back what it held.
 */
import type { Attempt, LockoutSettings } from '../auth/lockout-reserve.js';
import type { Account } from '../directory/directory.js';

/** A failure or success, as one member tells the others (lockout.ts `failure`, `success`, `apply`). */
export type LockoutEvent =
  | {
      readonly kind: 'failure';
      readonly account: string | null;
      readonly source: string;
      readonly fingerprint: string;
      readonly t: number;
    }
  | {
      readonly kind: 'success';
      readonly account: string;
      readonly source: string;
      readonly verifiedByBind: boolean;
      readonly name: string | null;
      readonly t: number;
    };

/** One browser session as the members know it (sessions.ts); `key` is a hash of its ID, never the ID. */
export interface SessionRecord {
  readonly key: string;
  readonly account: Account;
  /** The service of its sign-in: a policy that no longer allows it ends the session. */
  readonly service: 'owa' | 'ecp';
  readonly createdAt: number;
  readonly lastSeenAt: number;
  /** When it was ended (sign-out, AD); null while it lives. Final: an ended session never lives again. */
  readonly endedAt: number | null;
}

/** What one member tells the others. */
export type BusEvent =
  /** A failure or success seen by one member; kept for members that join later until `until` (ms). */
  | { readonly kind: 'lockout'; readonly event: LockoutEvent; readonly until: number }
  /** New lockout settings (a reload): the authority's reservations must use them too. */
  | { readonly kind: 'settings'; readonly settings: LockoutSettings }
  /** A session started, used or ended; kept for members that join later until `until` (ms). */
  | { readonly kind: 'session'; readonly session: SessionRecord; readonly until: number };

/** A place held under a cap (e.g. one Outlook Anywhere tunnel of one address); release() once. */
export interface Slot {
  release(): void;
}

export interface StateBus {
  /** Tells every other member (never the publisher itself) and the authority. */
  publish(event: BusEvent): void;
  /** Hears what the other members publish (and, on joining, what they published before that
   * and is still kept). Returns the unsubscribe. */
  subscribe(handler: (event: BusEvent) => void): () => void;
  /** Lockout.acquire run by the authority, which sees every member's attempts in flight. */
  reserve(account: string, source: string, fingerprint: string): Promise<Attempt>;
  /** One of at most `cap` places for `key` across all members; null when all are taken. */
  acquireSlot(key: string, cap: number): Promise<Slot | null>;
  /** Leaves the bus: what this member held is released. */
  close(): void;
}

/** What a bus falls back to, and what its authority runs: a Lockout. */
export interface Authority {
  acquire(account: string, source: string, fingerprint: string): Promise<Attempt>;
  apply(event: LockoutEvent): void;
  reconfigure(settings: LockoutSettings): void;
  readonly settings: LockoutSettings;
  /** Is this address familiar to the account (which counter a failure from it fills)? Absent: never. */
  isFamiliar?(account: string, source: string): boolean;
}

/** Builds the bus of a gateway's state around its Lockout (the authority, or the fallback). */
export type BusFactory = (lockout: Authority) => StateBus;
