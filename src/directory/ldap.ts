import {
  type Client,
  escapeFilter,
  InvalidCredentialsError,
  InvalidDNSyntaxError,
  NoSuchObjectError,
  ResultCodeError,
  SizeLimitExceededError,
  type Entry,
} from 'ldapts';
import type { LdapSettings } from '../config/load.js';
import { DcBreaker, Limiter } from './limits.js';
import type { Logon } from '../auth/credentials.js';
import type { ServiceAccountRefusedError } from '../errors.js';
import { fileTimeToMs, STATUS_ATTRIBUTES, statusOf, SUB_CODES, text } from './ad-status.js';
import { connectLdap, notConnected, unavailable } from './ldap-connect.js';
import { describe, serviceAccountRefusal, SUB_CODE } from './ldap-errors.js';
import {
  dnKey,
  looksLikeDn,
  type Account,
  type AccountStatus,
  type Directory,
  type GroupRef,
  type PasswordCheck,
} from './directory.js';

/** LDAP_MATCHING_RULE_IN_CHAIN: walks nested group membership on the DC. */
const IN_CHAIN = '1.2.840.113556.1.4.1941';
const USER_ATTRIBUTES = ['sAMAccountName', 'userPrincipalName', 'mail'];

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

  constructor(
    private readonly settings: LdapSettings,
    private readonly log: DirectoryLog,
  ) {
    this.#url = settings.urls[0] as string;
    this.#breaker = new DcBreaker(settings.dcRetrySeconds * 1000);
    this.#binds = new Limiter(settings.maxConcurrentBinds, settings.maxQueuedBinds, settings.timeoutMs);
  }

  async findAccount(logon: Logon & { kind: 'sam' | 'upn' }): Promise<Account | null> {
    const [attribute, asked] = logon.kind === 'sam' ? ['sAMAccountName', logon.sam] : ['userPrincipalName', logon.upn];
    if (!exactName(asked)) return null;
    const filter =
      logon.kind === 'sam'
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
      const client = await connectLdap(url, this.settings).catch((err: unknown) => {
        lastError = err;
        this.#breaker.trip(url);
        return null;
      });
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
    throw unavailable('password check', lastError);
  }

  async accountStatus(account: Account): Promise<AccountStatus> {
    const entries = await this.search(account.dn, '(objectClass=user)', STATUS_ATTRIBUTES, 'base');
    // The account is gone.
    if (entries === null || entries.length !== 1) return { refusal: 'bad-credentials', passwordSetAt: null };
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
      : await this.search(
          this.settings.baseDn,
          escapeFilter`(&(objectClass=group)(sAMAccountName=${name}))`,
          ['sAMAccountName'],
          'sub',
          2,
        );
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
    if (service)
      await service
        .then(
          (c) => c.unbind(),
          () => {},
        )
        .catch(() => {});
  }

  private account(e: Entry): Account {
    const sam = text(e, 'sAMAccountName') ?? '';
    return {
      dn: e.dn,
      sam,
      user: `${this.settings.netbiosDomain.toUpperCase()}\\${sam.toLowerCase()}`,
      upn: text(e, 'userPrincipalName'),
      mail: text(e, 'mail'),
    };
  }

  /**
   * Runs one search on the service connection. null when the base does not exist or the answer
   * is ambiguous (more than `sizeLimit` entries). Retries once on a fresh connection, because DCs
   * drop idle LDAP connections (MaxConnIdleTime, 900 s by default).
   */
  private async search(
    base: string,
    filter: string,
    attributes: string[],
    scope: 'base' | 'sub',
    sizeLimit = 0,
  ): Promise<Entry[] | null> {
    for (let attempt = 0; ; attempt++) {
      const client = await this.service();
      try {
        const { searchEntries } = await client.search(base, {
          scope,
          filter,
          attributes,
          sizeLimit,
          paged: sizeLimit === 0 ? { pageSize: 500 } : false,
        });
        return searchEntries;
      } catch (err) {
        if (err instanceof NoSuchObjectError || err instanceof InvalidDNSyntaxError) return null;
        if (err instanceof SizeLimitExceededError) return null;
        this.dropService(client);
        if (!(err instanceof ResultCodeError)) this.#breaker.trip(this.#url);
        if (attempt === 0 && !(err instanceof ResultCodeError)) continue;
        throw unavailable('search', err);
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
        client = await connectLdap(url, this.settings);
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
          this.log.warn(
            { url, err: refused.message },
            'directory: service account refused; not retried until a reload',
          );
          throw refused;
        }
        if (!(err instanceof ResultCodeError)) this.#breaker.trip(url);
        this.log.warn({ url, err: describe(err) }, 'directory: service account cannot bind');
      }
    }
    throw unavailable('service bind', lastError);
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
}

/** A name that can be looked up literally: no NUL, no control characters, no outer spaces. */
function exactName(name: string): boolean {
  return name.length > 0 && name === name.trim() && !/[\x00-\x1f\x7f]/.test(name);
}
