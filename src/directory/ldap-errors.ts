/**
 * LDAP and AD answers in words: a DC error for the operational log and `check` (never a secret,
 * with a hint such as setting directory.ca), whether a DC answered at all, and the service
 * account's refused bind as a fatal config error naming the key to fix (never retried).
 */
import {
  ConfidentialityRequiredError,
  InappropriateAuthError,
  InvalidCredentialsError,
  ResultCodeError,
  StrongAuthRequiredError,
} from 'ldapts';
import type { LdapSettings } from '../config/load.js';
import { ServiceAccountRefusedError, systemErrorText } from '../errors.js';

/** AD's sub-code in a bind error's text (`data 52e`). */
export const SUB_CODE = /data ([0-9a-f]{3,4})\b/i;

/** Certificate verification failures that mean the DC's CA is not trusted (`directory.ca` missing or wrong). */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);
const CERT_WORDS: Readonly<Record<string, string>> = {
  CERT_HAS_EXPIRED: "the DC's certificate has expired",
  CERT_NOT_YET_VALID: "the DC's certificate is not valid yet (check the clocks)",
  ERR_TLS_CERT_ALTNAME_INVALID: "the DC's certificate does not name the host in directory.url",
};

/** An error in words, without anything a bind could have put in it beyond the server's text. */
export function describe(err: unknown): string {
  if (err instanceof ResultCodeError) return `the DC answered ${err.name} (LDAP result ${err.code}): ${err.message}`;
  if (!(err instanceof Error)) return String(err);
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (UNTRUSTED.has(code))
    return `the DC's certificate is not trusted (${code}): set directory.ca to the CA that issued it`;
  if (CERT_WORDS[code]) return `${CERT_WORDS[code]} (${code})`;
  if (/^Connection timeout/.test(err.message)) return `no answer within directory.connectTimeoutMs (${err.message})`;
  const words = systemErrorText(err);
  return words === err.message ? `${code || err.name}: ${err.message}` : `${words}: ${err.message}`;
}

/** Whether a DC answered (an LDAP result, a certificate refused): the fault is not reachability. */
export function answered(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return err instanceof ResultCodeError || (typeof code === 'string' && (UNTRUSTED.has(code) || code in CERT_WORDS));
}

/** AD's sub-codes for a refused bind, in words, and whether the fix is the password or the account. */
const BAD_PASSWORD = ['invalid credentials: the password is wrong, or bindDn names no account', 'password'] as const;
const SERVICE_SUB_CODES: Readonly<Record<string, readonly [string, 'password' | 'account']>> = {
  '52e': BAD_PASSWORD,
  '525': ['no such user: bindDn names no account', 'account'],
  '530': ['the account may not log on at this time (logon hours)', 'account'],
  '531': ['the account may not log on from this computer (userWorkstations)', 'account'],
  '532': ['the password has expired: set a new one in AD and in the config', 'password'],
  '533': ['the account is disabled', 'account'],
  '701': ['the account has expired (accountExpires)', 'account'],
  '773': ['the password must be changed: set a new one in AD and in the config', 'password'],
  '775': ['the account is locked out: unlock it in AD (after fixing the password, if that was the cause)', 'account'],
};
/**
 * AD's answers to the service account's bind that a retry cannot fix, in words and with the key
 * to fix (the sub-codes as in SUB_CODES). null for anything else (a DC down or busy is retried).
 */
export function serviceAccountRefusal(err: unknown, s: LdapSettings): ServiceAccountRefusedError | null {
  const pw = `directory.${s.bindPasswordKey ?? 'bindPasswordFile'}`;
  const account = `the domain controller refused the service account (directory.bindDn ${s.bindDn})`;
  if (err instanceof StrongAuthRequiredError || err instanceof ConfidentialityRequiredError) {
    const words = 'the DC requires a signed or encrypted connection for binds; use ldaps:// or startTls: true';
    return new ServiceAccountRefusedError(`${account}: ${words}`, 'directory.url');
  }
  if (err instanceof InappropriateAuthError) {
    return new ServiceAccountRefusedError(`${account}: a simple bind is not allowed for it`, 'directory.bindDn');
  }
  if (!(err instanceof InvalidCredentialsError)) return null;
  const code = SUB_CODE.exec(err.message)?.[1]?.toLowerCase() ?? '';
  const [words, fix] = SERVICE_SUB_CODES[code] ?? BAD_PASSWORD;
  const sub = code ? ` (AD data ${code})` : '';
  const message = `${account}: ${words}${sub}; not retried, so that AD does not lock it out`;
  return new ServiceAccountRefusedError(message, fix === 'password' ? pw : 'directory.bindDn');
}
