/**
 * What an AD account's attributes and bind answers say about its logon state (MS-ADTS 2.2.16):
 * the bind sub-codes as refusal reasons, userAccountControl and its computed flags, FILETIMEs.
 */
import type { Entry } from 'ldapts';
import type { PasswordRefusal } from './directory.js';

/**
 * AD's bind sub-codes (the `data XXX` in the error text) → reasons. The DC checks the password
 * before most account states (disabled, expired, must change), so those are only revealed to
 * someone who knows the password; a locked-out account answers 775 whatever the password.
 */
export const SUB_CODES: Readonly<Record<string, PasswordRefusal>> = {
  '52e': 'bad-credentials',
  '525': 'bad-credentials', // no such user
  '530': 'account-disabled', // not permitted to log on at this time
  '531': 'account-disabled', // not permitted to log on at this workstation
  '532': 'password-expired',
  '533': 'account-disabled',
  '701': 'account-expired',
  '773': 'password-must-change',
  '775': 'account-locked',
};

export const STATUS_ATTRIBUTES = [
  'userAccountControl',
  'msDS-User-Account-Control-Computed',
  'accountExpires',
  'pwdLastSet',
];
const UF_ACCOUNTDISABLE = 0x2;
const UF_LOCKOUT = 0x10;
const UF_PASSWORD_EXPIRED = 0x800000;
const NEVER = 0x7fffffffffffffffn;
const FILETIME_EPOCH_OFFSET = 116_444_736_000_000_000n;

/** A FILETIME attribute (100 ns since 1601) as ms since the epoch; null for 0, never, or none. */
export function fileTimeToMs(value: string | null): number | null {
  if (value === null || value === '0') return null;
  const ft = BigInt(value);
  if (ft === NEVER) return null;
  return Number((ft - FILETIME_EPOCH_OFFSET) / 10_000n);
}

/** The logon state AD would report, read from the account's attributes (MS-ADTS 2.2.16). */
export function statusOf(e: Entry): PasswordRefusal | null {
  const uac = Number(text(e, 'userAccountControl') ?? 0);
  const computed = Number(text(e, 'msDS-User-Account-Control-Computed') ?? 0);
  if (uac & UF_ACCOUNTDISABLE) return 'account-disabled';
  if (computed & UF_LOCKOUT) return 'account-locked';
  const expires = BigInt(text(e, 'accountExpires') ?? '0');
  if (expires !== 0n && expires !== NEVER && expires < BigInt(Date.now()) * 10_000n + FILETIME_EPOCH_OFFSET)
    return 'account-expired';
  if (text(e, 'pwdLastSet') === '0') return 'password-must-change';
  if (computed & UF_PASSWORD_EXPIRED) return 'password-expired';
  return null;
}

export function text(e: Entry, name: string): string | null {
  const key = Object.keys(e).find((k) => k.toLowerCase() === name.toLowerCase());
  const v = key === undefined ? undefined : e[key];
  const first = Array.isArray(v) ? v[0] : v;
  if (first === undefined || first === null) return null;
  return Buffer.isBuffer(first) ? first.toString('utf8') : String(first);
}
