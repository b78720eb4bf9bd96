/**
 * The `ldap` directory: Active Directory through ldapts.
 *
 * - One long-lived service-account connection for searches; a fresh connection for every password
 *   check, because a bind changes the connection's identity (research/node-proxy.md §7).
 * - Search, require exactly one entry, then bind with its DN: more predictable than binding with
 *   the typed name, which AD resolves in several ways (MS-ADTS 5.1.1.1.1).
 * - Filters are built with escapeFilter only. Nested membership with LDAP_MATCHING_RULE_IN_CHAIN.
 * - Both connectTimeout and timeout are always set: `timeout` alone does not cover connect/TLS.
 * - Any technical failure becomes DirectoryUnavailableError (→ 503); a refused bind is a value.
 */
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import {
  Client, ConfidentialityRequiredError, escapeFilter, InappropriateAuthError, InvalidCredentialsError, InvalidDNSyntaxError,
  NoSuchObjectError, ResultCodeError, SizeLimitExceededError, StrongAuthRequiredError,
  type Entry,
} from 'ldapts';
import type { LdapSettings } from '../config/load.js';
import { DcBreaker, Limiter } from './limits.js';
import type { Logon } from '../credentials.js';
import { DirectoryUnavailableError, ServiceAccountRefusedError, systemErrorText } from '../errors.js';
import { dnKey, looksLikeDn, type Account, type AccountStatus, type Directory, type GroupRef, type PasswordCheck, type PasswordRefusal } from './directory.js';

/** LDAP_MATCHING_RULE_IN_CHAIN: walks nested group membership on the DC. */
const IN_CHAIN = '1.2.840.113556.1.4.1941';
const USER_ATTRIBUTES = ['sAMAccountName', 'userPrincipalName', 'mail'];

/**
 * AD's bind sub-codes (the `data XXX` in the error text) → reasons. The DC checks the password
 * before most account states (disabled, expired, must change), so those are only revealed to
 * someone who knows the password; a locked-out account answers 775 whatever the password.
 */
const SUB_CODES: Readonly<Record<string, PasswordRefusal>> = {
  '52e': 'bad-credentials',
  '525': 'bad-credentials',          // no such user
  '530': 'account-disabled',         // not permitted to log on at this time
  '531': 'account-disabled',         // not permitted to log on at this workstation
  '532': 'password-expired',
  '533': 'account-disabled',
  '701': 'account-expired',
  '773': 'password-must-change',
  '775': 'account-locked',
};
const SUB_CODE = /data ([0-9a-f]{3,4})\b/i;

const STATUS_ATTRIBUTES = ['userAccountControl', 'msDS-User-Account-Control-Computed', 'accountExpires', 'pwdLastSet'];
const UF_ACCOUNTDISABLE = 0x2;
const UF_LOCKOUT = 0x10;
const UF_PASSWORD_EXPIRED = 0x800000;
const NEVER = 0x7fffffffffffffffn;
const FILETIME_EPOCH_OFFSET = 116_444_736_000_000_000n;

/** A FILETIME attribute (100 ns since 1601) as ms since the epoch; null for 0, never, or none. */
function fileTimeToMs(value: string | null): number | null {
  if (value === null || value === '0') return null;
  const ft = BigInt(value);
  if (ft === NEVER) return null;
  return Number((ft - FILETIME_EPOCH_OFFSET) / 10_000n);
}

/** The logon state AD would report, read from the account's attributes (MS-ADTS 2.2.16). */
function statusOf(e: Entry): PasswordRefusal | null {
  const uac = Number(text(e, 'userAccountControl') ?? 0);
  const computed = Number(text(e, 'msDS-User-Account-Control-Computed') ?? 0);
  if (uac & UF_ACCOUNTDISABLE) return 'account-disabled';
  if (computed & UF_LOCKOUT) return 'account-locked';
  const expires = BigInt(text(e, 'accountExpires') ?? '0');
  if (expires !== 0n && expires !== NEVER && expires < BigInt(Date.now()) * 10_000n + FILETIME_EPOCH_OFFSET) return 'account-expired';
  if (text(e, 'pwdLastSet') === '0') return 'password-must-change';
  if (computed & UF_PASSWORD_EXPIRED) return 'password-expired';
  return null;
}

/** Minimal logger the directory reports faults to (never with credentials). */
export interface DirectoryLog {
  warn(obj: object, msg: string): void;
}

export class LdapDirectory implements Directory {
  #service: Promise<Client> | null = null;
  #url: string;
  readonly #breaker: DcBreaker;
  #exchangeSchema: Promise<boolean> | null = null;
  readonly #binds: Limiter;
  /** The service account's refusal, once seen: kept until a reload builds a new directory. */
  #refused: ServiceAccountRefusedError | null = null;

  constructor(private readonly settings: LdapSettings, private readonly log: DirectoryLog) {
    this.#url = settings.urls[0] as string;
    this.#breaker = new DcBreaker(settings.dcRetrySeconds * 1000);
    this.#binds = new Limiter(settings.maxConcurrentBinds, settings.maxQueuedBinds, settings.timeoutMs);
  }

  async findAccount(logon: Logon & { kind: 'sam' | 'upn' }): Promise<Account | null> {
    const [attribute, asked] = logon.kind === 'sam' ? ['sAMAccountName', logon.sam] : ['userPrincipalName', logon.upn];
    if (!exactName(asked)) return null;
    const filter = logon.kind === 'sam'
      ? escapeFilter`(&(objectCategory=person)(objectClass=user)(sAMAccountName=${asked}))`
      : escapeFilter`(&(objectCategory=person)(objectClass=user)(userPrincipalName=${asked}))`;
    const entries = await this.search(this.settings.baseDn, filter, USER_ATTRIBUTES, 'sub', 2);
    if (entries === null || entries.length !== 1) return null;
    const entry = entries[0] as Entry;
    // AD matches loosely (it ignores trailing spaces, and Samba stops at a NUL): accept the entry
    // only if it carries exactly the name asked for, case aside.
    if (text(entry, attribute)?.toLowerCase() !== asked.toLowerCase()) return null;
    return this.account(entry);
  }

  async verifyPassword(account: Account, password: string): Promise<PasswordCheck> {
    // An empty simple bind is anonymous and "succeeds"; Samba stops comparing at a NUL.
    if (password === '' || password.includes('\0')) return { ok: false, reason: 'bad-credentials' };
    return this.#binds.run(() => this.bindAs(account.dn, password));
  }

  /**
   * One password check: a fresh connection to the first DC that answers, bound as the user. It
   * fails over to the next DC only when the connection could not be made: a bind that was sent
   * may have been counted by that DC already, and must not be sent twice.
   */
  private async bindAs(dn: string, password: string): Promise<PasswordCheck> {
    let lastError: unknown = new Error('every domain controller failed recently');
    for (const url of this.#breaker.usable(this.urlsFromCurrent())) {
      const client = await this.connect(url).catch((err: unknown) => { lastError = err; this.#breaker.trip(url); return null; });
      if (!client) continue;
      try {
        await client.bind(dn, password);
        this.#breaker.reset(url);
        return { ok: true };
      } catch (err) {
        if (err instanceof InvalidCredentialsError) {
          this.#breaker.reset(url);
          const code = SUB_CODE.exec(err.message)?.[1]?.toLowerCase();
          return { ok: false, reason: (code && SUB_CODES[code]) || 'bad-credentials' };
        }
        lastError = err;
        if (!(err instanceof ResultCodeError)) this.#breaker.trip(url);
        this.log.warn({ url, err: describe(err) }, 'directory: password check failed on this DC');
        if (!notConnected(err)) break;
      } finally {
        client.unbind().catch(() => {});
      }
    }
    throw this.unavailable('password check', lastError);
  }

  async accountStatus(account: Account): Promise<AccountStatus> {
    const entries = await this.search(account.dn, '(objectClass=user)', STATUS_ATTRIBUTES, 'base');
    if (entries === null || entries.length !== 1) return { refusal: 'bad-credentials', passwordSetAt: null };   // the account is gone
    const e = entries[0] as Entry;
    return { refusal: statusOf(e), passwordSetAt: fileTimeToMs(text(e, 'pwdLastSet')) };
  }

  async memberships(account: Account, groupDns: readonly string[]): Promise<ReadonlySet<string>> {
    if (groupDns.length === 0) return new Set();
    const any = groupDns.map((g) => escapeFilter`(distinguishedName=${g})`).join('');
    const filter = `(&(objectClass=group)${escapeFilter`(member:${IN_CHAIN}:=${account.dn})`}(|${any}))`;
    const entries = await this.search(this.settings.baseDn, filter, ['distinguishedName'], 'sub');
    return new Set((entries ?? []).map((e) => dnKey(e.dn)));
  }

  async groupsOf(account: Account): Promise<readonly GroupRef[]> {
    const filter = escapeFilter`(&(objectClass=group)(member:${IN_CHAIN}:=${account.dn}))`;
    const entries = await this.search(this.settings.baseDn, filter, ['sAMAccountName'], 'sub');
    return (entries ?? []).map((e) => ({ dn: e.dn, name: text(e, 'sAMAccountName') ?? e.dn }));
  }

  async resolveGroup(name: string): Promise<GroupRef | null> {
    if (!exactName(name)) return null;
    const entries = looksLikeDn(name)
      ? await this.search(name.trim(), '(objectClass=group)', ['sAMAccountName'], 'base')
      : await this.search(this.settings.baseDn, escapeFilter`(&(objectClass=group)(sAMAccountName=${name}))`, ['sAMAccountName'], 'sub', 2);
    if (entries === null || entries.length !== 1) return null;
    const e = entries[0] as Entry;
    const sam = text(e, 'sAMAccountName');
    if (!looksLikeDn(name) && sam?.toLowerCase() !== name.toLowerCase()) return null;
    return { dn: e.dn, name: sam ?? e.dn };
  }

  async listMailboxes(): Promise<readonly Account[]> {
    const filter = (await this.hasExchangeSchema())
      ? '(&(objectCategory=person)(objectClass=user)(homeMDB=*))'
      : '(&(objectCategory=person)(objectClass=user)(mail=*))';
    const entries = await this.search(this.settings.baseDn, filter, USER_ATTRIBUTES, 'sub');
    return (entries ?? []).map((e) => this.account(e));
  }

  async membersOf(groupDn: string): Promise<ReadonlySet<string>> {
    const filter = escapeFilter`(&(objectCategory=person)(objectClass=user)(memberOf:${IN_CHAIN}:=${groupDn}))`;
    const entries = await this.search(this.settings.baseDn, filter, ['distinguishedName'], 'sub');
    return new Set((entries ?? []).map((e) => dnKey(e.dn)));
  }

  /** Whether the forest's schema knows Exchange's mailbox attribute `homeMDB` (read once). */
  private async hasExchangeSchema(): Promise<boolean> {
    this.#exchangeSchema ??= (async () => {
      const root = await this.search('', '(objectClass=*)', ['schemaNamingContext'], 'base');
      const schema = root?.[0] && text(root[0], 'schemaNamingContext');
      if (!schema) return false;
      const found = await this.search(schema, '(lDAPDisplayName=homeMDB)', ['lDAPDisplayName'], 'sub', 2);
      return (found?.length ?? 0) > 0;
    })().catch((err: unknown) => {
      this.#exchangeSchema = null;
      throw err;
    });
    return this.#exchangeSchema;
  }

  async ping(): Promise<void> {
    await this.search(this.settings.baseDn, '(objectClass=domain)', ['distinguishedName'], 'base');
  }

  async close(): Promise<void> {
    const service = this.#service;
    this.#service = null;
    if (service) await service.then((c) => c.unbind(), () => {}).catch(() => {});
  }

  private account(e: Entry): Account {
    const sam = text(e, 'sAMAccountName') ?? '';
    return { dn: e.dn, sam, user: `${this.settings.netbiosDomain.toUpperCase()}\\${sam.toLowerCase()}`, upn: text(e, 'userPrincipalName'), mail: text(e, 'mail') };
  }

  /**
   * Runs one search on the service connection. null when the base does not exist or the answer
   * is ambiguous (more than `sizeLimit` entries). Retries once on a fresh connection, because DCs
   * drop idle LDAP connections (MaxConnIdleTime, 900 s by default).
   */
  private async search(base: string, filter: string, attributes: string[], scope: 'base' | 'sub', sizeLimit = 0): Promise<Entry[] | null> {
    for (let attempt = 0; ; attempt++) {
      const client = await this.service();
      try {
        const { searchEntries } = await client.search(base, { scope, filter, attributes, sizeLimit, paged: sizeLimit === 0 ? { pageSize: 500 } : false });
        return searchEntries;
      } catch (err) {
        if (err instanceof NoSuchObjectError || err instanceof InvalidDNSyntaxError) return null;
        if (err instanceof SizeLimitExceededError) return null;
        this.dropService(client);
        if (!(err instanceof ResultCodeError)) this.#breaker.trip(this.#url);
        if (attempt === 0 && !(err instanceof ResultCodeError)) continue;
        throw this.unavailable('search', err);
      }
    }
  }

  /** The bound service-account connection, made on first use and after any fault. */
  private service(): Promise<Client> {
    if (this.#refused) return Promise.reject(this.#refused);
    this.#service ??= this.bindService().catch((err: unknown) => {
      this.#service = null;
      throw err;
    });
    return this.#service;
  }

  private async bindService(): Promise<Client> {
    let lastError: unknown = new Error('every domain controller failed recently');
    for (const url of this.#breaker.usable(this.urlsFromCurrent())) {
      let client: Client | undefined;
      try {
        client = await this.connect(url);
        await client.bind(this.settings.bindDn, this.settings.bindPassword.reveal());
        this.#url = url;
        this.#breaker.reset(url);
        return client;
      } catch (err) {
        lastError = err;
        client?.unbind().catch(() => {});
        // The DC refused the account itself: no other DC and no retry (each would count toward AD's lockout).
        const refused = serviceAccountRefusal(err, this.settings);
        if (refused) {
          this.#refused = refused;
          this.log.warn({ url, err: refused.message }, 'directory: service account refused; not retried until a reload');
          throw refused;
        }
        if (!(err instanceof ResultCodeError)) this.#breaker.trip(url);
        this.log.warn({ url, err: describe(err) }, 'directory: service account cannot bind');
      }
    }
    throw this.unavailable('service bind', lastError);
  }

  /** The configured URLs, starting with the one that answered last (failover order). */
  private urlsFromCurrent(): string[] {
    const urls = this.settings.urls;
    const i = Math.max(0, urls.indexOf(this.#url));
    return [...urls.slice(i), ...urls.slice(0, i)];
  }

  private dropService(client: Client): void {
    this.#service = null;
    client.unbind().catch(() => {});
  }

  /** A new connection to `url`, TLS-protected as configured. */
  private async connect(url: string): Promise<Client> {
    const { connectTimeoutMs, timeoutMs, ca, startTls } = this.settings;
    const tlsOptions: ConnectionOptions = { minVersion: 'TLSv1.2', ...(ca ? { ca } : {}) };
    // ldapts opens implicit TLS whenever tlsOptions is non-empty, even for ldap:// (research/samba.md
    // §3): pass it only for ldaps://, and upgrade ldap:// with startTLS.
    const client = new Client({
      url, connectTimeout: connectTimeoutMs, timeout: timeoutMs,
      ...(url.startsWith('ldaps:') ? { tlsOptions } : {}),
    });
    if (startTls && url.startsWith('ldap:')) {
      const host = new URL(url).hostname;
      // ldapts times the StartTLS request but not the TLS handshake after it: bound both.
      let timer: NodeJS.Timeout | undefined;
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`StartTLS handshake timed out after ${connectTimeoutMs + timeoutMs} ms`)), connectTimeoutMs + timeoutMs);
      });
      try {
        await Promise.race([client.startTLS({ ...tlsOptions, ...(isIP(host) ? {} : { servername: host }) }), stalled]);
      } catch (err) {
        client.unbind().catch(() => {});
        throw this.unavailable('StartTLS', err);
      } finally {
        clearTimeout(timer);
      }
    }
    return client;
  }

  private unavailable(what: string, err: unknown): DirectoryUnavailableError {
    if (err instanceof DirectoryUnavailableError) return err;
    return new DirectoryUnavailableError(`directory ${what} failed: ${describe(err)}`, { answered: answered(err) });
  }
}

/** True for errors that mean the connection was never made (the request was not sent). */
function notConnected(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return ['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN'].includes(code ?? '') ||
    /^Connection timeout/.test((err as Error).message ?? '');
}

/** A name that can be looked up literally: no NUL, no control characters, no outer spaces. */
function exactName(name: string): boolean {
  return name.length > 0 && name === name.trim() && !/[\x00-\x1f\x7f]/.test(name);
}

/** Certificate verification failures that mean the DC's CA is not trusted (`directory.ca` missing or wrong). */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE',
]);
const CERT_WORDS: Readonly<Record<string, string>> = {
  CERT_HAS_EXPIRED: 'the DC\'s certificate has expired',
  CERT_NOT_YET_VALID: 'the DC\'s certificate is not valid yet (check the clocks)',
  ERR_TLS_CERT_ALTNAME_INVALID: 'the DC\'s certificate does not name the host in directory.url',
};

/** An error in words, without anything a bind could have put in it beyond the server's text. */
function describe(err: unknown): string {
  if (err instanceof ResultCodeError) return `the DC answered ${err.name} (LDAP result ${err.code}): ${err.message}`;
  if (!(err instanceof Error)) return String(err);
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (UNTRUSTED.has(code)) return `the DC's certificate is not trusted (${code}): set directory.ca to the CA that issued it`;
  if (CERT_WORDS[code]) return `${CERT_WORDS[code]} (${code})`;
  if (/^Connection timeout/.test(err.message)) return `no answer within directory.connectTimeoutMs (${err.message})`;
  const words = systemErrorText(err);
  return words === err.message ? `${code || err.name}: ${err.message}` : `${words}: ${err.message}`;
}

/** Whether a DC answered (an LDAP result, a certificate refused): the fault is not reachability. */
function answered(err: unknown): boolean {
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
function serviceAccountRefusal(err: unknown, s: LdapSettings): ServiceAccountRefusedError | null {
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


function text(e: Entry, name: string): string | null {
  const key = Object.keys(e).find((k) => k.toLowerCase() === name.toLowerCase());
  const v = key === undefined ? undefined : e[key];
  const first = Array.isArray(v) ? v[0] : v;
  if (first === undefined || first === null) return null;
  return Buffer.isBuffer(first) ? first.toString('utf8') : String(first);
}
