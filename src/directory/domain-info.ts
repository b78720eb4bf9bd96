/**
 * What AD says about the domain a config names, for `exgate check`: whether `baseDn` exists, the
 * domain's NetBIOS name (nETBIOSName on its crossRef in CN=Partitions,<configuration NC>) and the
 * UPN suffixes the forest accepts (uPNSuffixes on CN=Partitions, plus the domain's and the forest
 * root's DNS names, which are always valid; MS-ADTS 6.1.1.2.1.1 and 3.1.1.5.1.3.3).
 */
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Client, InvalidDNSyntaxError, NoSuchObjectError, type Entry } from 'ldapts';
import type { LdapSettings } from '../config/load.js';
import { DirectoryUnavailableError } from '../errors.js';

export interface DomainInfo {
  readonly baseDnExists: boolean;
  /** The domain that holds baseDn (its nCName), or null when no domain of the forest does. */
  readonly domainDn: string | null;
  readonly netbios: string | null;
  readonly dnsName: string | null;
  /** Every UPN suffix the forest accepts, lowercase. */
  readonly upnSuffixes: readonly string[];
  /** The naming contexts of the forest's domains, to name them when baseDn is in none. */
  readonly domains: readonly string[];
}

/** Reads DomainInfo with the service account, on the first configured URL that answers. */
export async function readDomainInfo(settings: LdapSettings): Promise<DomainInfo> {
  let lastError: unknown = new Error('no directory URL');
  for (const url of settings.urls) {
    let client: Client | undefined;
    try {
      client = await connect(settings, url);
      await client.bind(settings.bindDn, settings.bindPassword.reveal());
      return await read(client, settings.baseDn);
    } catch (err) {
      lastError = err;
    } finally {
      client?.unbind().catch(() => {});
    }
  }
  const e = lastError as NodeJS.ErrnoException;
  throw new DirectoryUnavailableError(`directory read of the domain failed: ${e.code ?? e.name}: ${e.message}`);
}

async function read(client: Client, baseDn: string): Promise<DomainInfo> {
  const rootDse = await search(client, '', 'base', '(objectClass=*)', [
    'configurationNamingContext',
    'rootDomainNamingContext',
  ]);
  const root = rootDse[0];
  const configNc = root && values(root, 'configurationNamingContext')[0];
  if (!root || !configNc) throw new Error('the RootDSE names no configuration naming context');
  const forestRoot = dnKey(values(root, 'rootDomainNamingContext')[0] ?? '');
  const partitions = `CN=Partitions,${configNc}`;
  const suffixes = (await search(client, partitions, 'base', '(objectClass=*)', ['uPNSuffixes']))[0];
  // Only a domain's crossRef carries nETBIOSName (application partitions have none).
  const domains = await search(client, partitions, 'one', '(&(objectClass=crossRef)(nETBIOSName=*))', [
    'nCName',
    'dnsRoot',
    'nETBIOSName',
  ]);
  const base = dnKey(baseDn);
  const nc = (d: Entry) => dnKey(values(d, 'nCName')[0] ?? '');
  // The innermost domain that holds baseDn (a child domain's DN ends in its parent's).
  const holding = domains
    .filter((d) => nc(d) !== '' && (base === nc(d) || base.endsWith(',' + nc(d))))
    .sort((a, b) => nc(b).length - nc(a).length)[0];
  const rootDomain = domains.find((d) => nc(d) === forestRoot);
  const dnsName = holding ? (values(holding, 'dnsRoot')[0] ?? null) : null;
  const forestDns = rootDomain ? values(rootDomain, 'dnsRoot')[0] : undefined;
  const upn = [...(suffixes ? values(suffixes, 'uPNSuffixes') : []), dnsName, forestDns];
  return {
    baseDnExists: (await search(client, baseDn, 'base', '(objectClass=*)', ['distinguishedName'])).length === 1,
    domainDn: holding ? (values(holding, 'nCName')[0] ?? null) : null,
    netbios: holding ? (values(holding, 'nETBIOSName')[0] ?? null) : null,
    dnsName,
    upnSuffixes: [...new Set(upn.filter((s): s is string => !!s).map((s) => s.toLowerCase()))],
    domains: domains.map((d) => values(d, 'nCName')[0] ?? '').filter(Boolean),
  };
}

/** One search; [] when the base does not exist or is not a DN. */
type Scope = 'base' | 'one';

async function search(client: Client, base: string, scope: Scope, filter: string, attributes: string[]) {
  try {
    return (await client.search(base, { scope, filter, attributes })).searchEntries;
  } catch (err) {
    if (err instanceof NoSuchObjectError || err instanceof InvalidDNSyntaxError) return [];
    throw err;
  }
}

/** A connection protected as LdapDirectory protects it (ldaps://, or StartTLS on ldap://). */
async function connect(settings: LdapSettings, url: string): Promise<Client> {
  const { connectTimeoutMs, timeoutMs, ca, startTls } = settings;
  const tlsOptions: ConnectionOptions = { minVersion: 'TLSv1.2', ...(ca ? { ca } : {}) };
  // ldapts opens implicit TLS whenever tlsOptions is set (research/samba.md §3): only for ldaps://.
  const tls = url.startsWith('ldaps:') ? { tlsOptions } : {};
  const client = new Client({ url, connectTimeout: connectTimeoutMs, timeout: timeoutMs, ...tls });
  if (startTls && url.startsWith('ldap:')) {
    const host = new URL(url).hostname;
    await client.startTLS({ ...tlsOptions, ...(isIP(host) ? {} : { servername: host }) });
  }
  return client;
}

/** AD compares DNs case-insensitively; spaces after the commas are not significant. */
function dnKey(dn: string): string {
  return dn.toLowerCase().replace(/,\s+/g, ',').trim();
}

function values(e: Entry, name: string): string[] {
  const key = Object.keys(e).find((k) => k.toLowerCase() === name.toLowerCase());
  const v = key === undefined ? [] : e[key];
  return (Array.isArray(v) ? v : [v]).map((x) => (Buffer.isBuffer(x) ? x.toString('utf8') : String(x)));
}
