/**
 * classify: (servername, Host, URL) → which Exchange service a request is for, or why it is
 * refused before anything else happens. Pure; the tables are built once at startup.
 *
 * Order: names first (421: the gateway does not serve that name at all), then the path (400 for
 * anything ambiguous, 404 for anything outside the service table). Paths are normalized the way
 * IIS would read them and then matched exactly (STYLE.md §9, Caddy's path matcher):
 * decode once, lowercase (IIS paths are case-insensitive), merge `//`, and refuse whatever could
 * mean something else further in: encoded `/` `\` `%`, `..`, control characters, invalid UTF-8,
 * Windows' trailing-dot/space trimming (`/ecp./`), alternate data streams (`:`), 8.3 short
 * names (`ECP~1`) and ASP.NET cookieless segments (`/ews/(S(x))/mrsproxy.svc`).

 */
import { SERVICE_PREFIXES, type Service } from './services.js';

/** The gateway's namespaces, lowercased, built once from `names:` in the config. */
export interface NameTable {
  readonly external: ReadonlySet<string>;
  readonly internal: ReadonlySet<string>;
  /** What a client that sent no SNI is treated as. */
  readonly noSni: 'external' | 'reject';
}

export type Route = { readonly ok: true; readonly service: Service; readonly host: string; readonly path: string };
export type Misroute = {
  readonly ok: false;
  readonly reason: 'misdirected' | 'unknown-service' | 'bad-request';
  /** For the operational log: what exactly was wrong. Never contains credentials. */
  readonly detail: string;
};

/** Builds the lowercase name sets from the config's lists. */
export function nameTable(
  external: readonly string[],
  internal: readonly string[],
  noSni: 'external' | 'reject',
): NameTable {
  const norm = (n: string) => n.toLowerCase().replace(/\.$/, '');
  return { external: new Set(external.map(norm)), internal: new Set(internal.map(norm)), noSni };
}

/**
 * Classifies one request. `servername` is the TLS SNI as the client sent it (`false` or
 * undefined when there was none); `host` is the Host header; `rawUrl` is the request target.
 */
export function classify(
  servername: string | false | null | undefined,
  host: string | undefined,
  rawUrl: string,
  names: NameTable,
): Route | Misroute {
  const name = checkNames(servername, host, names);
  if (typeof name !== 'string') return name;
  const path = normalizePath(pathOf(rawUrl));
  if (path === null) return { ok: false, reason: 'bad-request', detail: 'path is not in normal form' };
  const service = serviceOf(path);
  if (service === null) return { ok: false, reason: 'unknown-service', detail: `no service at ${path}` };
  const shape = proxyShellShape(path, service);
  if (shape) return { ok: false, reason: 'bad-request', detail: shape };
  return { ok: true, service, host: name, path };
}

/** An RPC_IN_DATA / RPC_OUT_DATA request: the rpc service by its method, wherever it points. */
export type RpcRoute = Route & {
  readonly service: 'rpc';
  /** Whether the path is under /rpc/: only there is Outlook Anywhere ever served. */
  readonly atRpcPath: boolean;
};

/**
 * Classifies an Outlook Anywhere request. INTERFACE.md makes the RPC methods the rpc service
 * wherever they appear, so `RPC_IN_DATA /owa/` is rpc (denied or refused as rpc), never owa.
 * Names and path shape are checked as for any request; the service table is not consulted.
 */
export function classifyRpc(
  servername: string | false | null | undefined,
  host: string | undefined,
  rawUrl: string,
  names: NameTable,
): RpcRoute | Misroute {
  const name = checkNames(servername, host, names);
  if (typeof name !== 'string') return name;
  const path = normalizePath(pathOf(rawUrl));
  if (path === null) return { ok: false, reason: 'bad-request', detail: 'path is not in normal form' };
  const shape = proxyShellShape(path, 'rpc');
  if (shape) return { ok: false, reason: 'bad-request', detail: shape };
  return { ok: true, service: 'rpc', host: name, path, atRpcPath: serviceOf(path) === 'rpc' };
}

/**
 * Path shapes of the Exchange front-end SSRFs (ProxyShell, ProxyNotShell, OWASSRF): Exchange
 * routes a request whose path *ends* in autodiscover.json, or that names a mailbox with `@`, to
 * a back end chosen from the rest of the URL. Refused:
 * - `autodiscover.json` anywhere but `/autodiscover/autodiscover.json[/v1.0/<address>]`;
 * - a `powershell` segment outside the powershell service (`/owa/<mailbox>/powershell`);
 * - `@` in a path, except the OWA/ECP explicit-logon segment (`/owa/<address>/…`) and the
 *   autodiscover.json v1.0 form.
 */
function proxyShellShape(path: string, service: Service): string | null {
  if (!path.includes('autodiscover.json') && !path.includes('powershell') && !path.includes('@')) return null;
  const segments = path.split('/').filter(Boolean);
  const autodiscoverJson = path === '/autodiscover/autodiscover.json' || AUTODISCOVER_V1.test(path);
  if (!autodiscoverJson && segments.some((s) => s.includes('autodiscover.json')))
    return 'autodiscover.json in an unexpected place';
  if (service !== 'powershell' && segments.some((s) => s.includes('powershell')))
    return 'a powershell segment outside /powershell/';
  const explicitLogon = (i: number) => (service === 'owa' || service === 'ecp') && i === 1;
  if (segments.some((s, i) => s.includes('@') && !autodiscoverJson && !explicitLogon(i)))
    return '@ in a path outside an explicit-logon segment';
  return null;
}

const AUTODISCOVER_V1 = /^\/autodiscover\/autodiscover\.json\/v1\.0\/[^/]+$/;

/** The request target's path without the query string (what the access log shows). */
export function pathOf(rawUrl: string): string {
  const q = rawUrl.indexOf('?');
  const path = q < 0 ? rawUrl : rawUrl.slice(0, q);
  // An absolute-form target (`https://user:password@host/owa/`) may carry credentials: never logged.
  return path.startsWith('/') ? path : path.replace(USERINFO, '$1');
}

/** An optional scheme, then everything up to the last `@` of the authority. */
const USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)?[^/]*@/i;

/** Host header → bare lowercase name: no port, no IPv6 brackets' port, no trailing dot. */
export function hostName(host: string | undefined): string | null {
  if (!host) return null;
  let h = host.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    if (end < 0) return null;
    h = h.slice(1, end); // `[::1]:8443` → `::1`, as names.external lists it
  } else {
    const colon = h.indexOf(':');
    if (colon >= 0) h = h.slice(0, colon);
  }
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h || null;
}

function checkNames(
  servername: string | false | null | undefined,
  host: string | undefined,
  names: NameTable,
): string | Misroute {
  const h = hostName(host);
  if (servername) {
    const sni = servername.toLowerCase().replace(/\.$/, '');
    if (!names.external.has(sni)) {
      return misdirected(names.internal.has(sni) ? `internal name ${sni}` : `unknown name ${sni}`);
    }
    // HTTP/1.0 clients may omit Host; the SNI then names the site.
    if (h !== null && h !== sni) return misdirected(`SNI ${sni} and Host ${h} disagree`);
    return sni;
  }
  if (names.noSni === 'reject') return misdirected('client sent no SNI');
  if (h === null) return misdirected('no SNI and no Host');
  if (!names.external.has(h)) return misdirected(names.internal.has(h) ? `internal name ${h}` : `unknown name ${h}`);
  return h;
}

function misdirected(detail: string): Misroute {
  return { ok: false, reason: 'misdirected', detail };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const SHORT_NAME = /~\d/;

/**
 * Decodes and normalizes a request path, or returns null when the path is ambiguous or malformed.
 * The result is lowercase, starts with `/`, has no empty, `.` or `..` segments, and keeps a
 * trailing slash when the request had one.
 */
export function normalizePath(raw: string): string | null {
  const known = NORMALIZED.get(raw);
  if (known !== undefined) return known;
  const path = normalizeUncached(raw);
  if (raw.length > NORMALIZED_LONGEST) return path;
  if (NORMALIZED.size >= NORMALIZED_MAX) NORMALIZED.clear();
  NORMALIZED.set(raw, path);
  return path;
}

/**
 * The paths normalized last, by their exact raw text (normalizing is pure): clients repeat a few
 * paths (EWS, ActiveSync, MAPI), and normalizing was ~1.2 % of a proxied request's CPU (issue 16
 * profile). Bounded: paths up to 256 characters, emptied when full, so odd paths cannot grow it.
 */
const NORMALIZED = new Map<string, string | null>();
const NORMALIZED_MAX = 1024;
const NORMALIZED_LONGEST = 256;

function normalizeUncached(raw: string): string | null {
  if (!raw.startsWith('/')) return null; // absolute-form and `*` are not served
  const decoded = percentDecode(raw);
  if (decoded === null) return null;
  const segments: string[] = [];
  for (const segment of decoded.toLowerCase().split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') return null; // traversal
    if (segment.endsWith('.') || segment.endsWith(' ')) return null; // Windows trims these: `/ecp./` is `/ecp/`
    if (segment.includes(':')) return null; // NTFS alternate data streams: `ecp::$DATA`
    if (SHORT_NAME.test(segment)) return null; // 8.3 short names: `ECP~1`
    // ASP.NET cookieless `(S(…))` segments, removed after IIS picked the handler.
    if (segment.includes('(')) return null;
    segments.push(segment);
  }
  const trailing = decoded.endsWith('/') && segments.length > 0 ? '/' : '';
  return '/' + segments.join('/') + trailing;
}

/**
 * Decodes %XX escapes once. Refuses what IIS or a back end might decode differently: an escaped
 * `/`, `\` or `%` (double encoding), a raw `\`, a stray `%`, control characters, invalid UTF-8.
 */
function percentDecode(raw: string): string | null {
  if (raw.includes('\\')) return null;
  if (!raw.includes('%')) return hasControl(raw) ? null : raw;
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c !== 0x25) {
      if (c > 0x7e) return null; // Node's parser only lets visible ASCII through
      bytes.push(c);
      continue;
    }
    const hi = hexValue(raw.charCodeAt(i + 1));
    const lo = hexValue(raw.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) return null; // a stray `%`, or IIS's old `%uXXXX`
    const byte = hi * 16 + lo;
    // An encoded `/`, `\` or `%` (double encoding), or a delimiter (`?`, `#`) smuggled into the
    // path: ProxyShell's `autodiscover.json%3f@evil/…` is one of these.
    if (byte === 0x2f || byte === 0x5c || byte === 0x25 || byte === 0x3f || byte === 0x23) return null;
    bytes.push(byte);
    i += 2;
  }
  let text: string;
  try {
    text = utf8.decode(Uint8Array.from(bytes));
  } catch {
    return null;
  }
  return hasControl(text) || hasAsciiLookalike(text) ? null : text;
}

/**
 * True when a non-ASCII character changes into ASCII under case mapping: `ſ` (long s) upper-cases
 * to `S`, the Kelvin sign `K` lower-cases to `k`, `ı` to `I`. IIS compares paths case-insensitively,
 * so `/ews/mrſproxy.svc` could reach MRSProxy while this table reads it as `ews`.
 */
function hasAsciiLookalike(s: string): boolean {
  for (const ch of s) {
    if (ch.charCodeAt(0) < 0x80) continue;
    for (const mapped of [ch.toUpperCase(), ch.toLowerCase()]) {
      for (let i = 0; i < mapped.length; i++) if (mapped.charCodeAt(i) < 0x80) return true;
    }
  }
  return false;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const lower = c | 0x20;
  return lower >= 0x61 && lower <= 0x66 ? lower - 0x57 : -1;
}

function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || (c >= 0x80 && c < 0xa0)) return true;
  }
  return false;
}

/** Looks a normalized path up in the service table; null when it is no Exchange service. */
export function serviceOf(path: string): Service | null {
  for (const [prefix, service] of SERVICE_PREFIXES) {
    if (prefix.endsWith('/')) {
      if (path.startsWith(prefix) || path === prefix.slice(0, -1)) return service;
    } else if (path === prefix || path.startsWith(prefix + '/')) {
      return service;
    }
  }
  return null;
}
