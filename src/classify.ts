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
 *
 * checkHead() refuses request heads that could mean one thing to the gateway and another to
 * Exchange: too many header lines, a repeated Host, Authorization, Content-Length or
 * Transfer-Encoding, a `Connection` naming one of them, an HTTP/1.1 request without Host, a
 * transfer coding other than chunked, a Host that is not `name[:port]`, a method Exchange does not
 * use, an HTTP version other than 1.0/1.1, Exchange's internal routing cookies.
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
export function nameTable(external: readonly string[], internal: readonly string[], noSni: 'external' | 'reject'): NameTable {
  const norm = (n: string) => n.toLowerCase().replace(/\.$/, '');
  return { external: new Set(external.map(norm)), internal: new Set(internal.map(norm)), noSni };
}

/**
 * Classifies one request. `servername` is the TLS SNI as the client sent it (`false` or
 * undefined when there was none); `host` is the Host header; `rawUrl` is the request target.
 */
export function classify(servername: string | false | null | undefined, host: string | undefined, rawUrl: string, names: NameTable): Route | Misroute {
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
export function classifyRpc(servername: string | false | null | undefined, host: string | undefined, rawUrl: string, names: NameTable): RpcRoute | Misroute {
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
  if (!autodiscoverJson && segments.some((s) => s.includes('autodiscover.json'))) return 'autodiscover.json in an unexpected place';
  if (service !== 'powershell' && segments.some((s) => s.includes('powershell'))) return 'a powershell segment outside /powershell/';
  const explicitLogon = (i: number) => (service === 'owa' || service === 'ecp') && i === 1;
  if (segments.some((s, i) => s.includes('@') && !autodiscoverJson && !explicitLogon(i))) return '@ in a path outside an explicit-logon segment';
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
    h = h.slice(1, end);                          // `[::1]:8443` → `::1`, as names.external lists it
  } else {
    const colon = h.indexOf(':');
    if (colon >= 0) h = h.slice(0, colon);
  }
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h || null;
}

function checkNames(servername: string | false | null | undefined, host: string | undefined, names: NameTable): string | Misroute {
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
  if (!raw.startsWith('/')) return null;                 // absolute-form and `*` are not served
  const decoded = percentDecode(raw);
  if (decoded === null) return null;
  const segments: string[] = [];
  for (const segment of decoded.toLowerCase().split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') return null;                    // traversal
    if (segment.endsWith('.') || segment.endsWith(' ')) return null;   // Windows trims these: `/ecp./` is `/ecp/`
    if (segment.includes(':')) return null;               // NTFS alternate data streams: `ecp::$DATA`
    if (SHORT_NAME.test(segment)) return null;            // 8.3 short names: `ECP~1`
    if (segment.includes('(')) return null;               // ASP.NET cookieless `(S(…))` segments, removed after IIS picked the handler
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
      if (c > 0x7e) return null;                          // Node's parser only lets visible ASCII through
      bytes.push(c);
      continue;
    }
    const hi = hexValue(raw.charCodeAt(i + 1));
    const lo = hexValue(raw.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) return null;                    // a stray `%`, or IIS's old `%uXXXX`
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

/** The methods Exchange's HTTP services use; anything else (TRACE, WebDAV, …) is refused. */
const METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH']);
const HOST = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?$/i;
/** Headers a request carries at most once: Node keeps the first of a repeated Host or
 * Authorization, IIS might read another, so the gateway would check one and forward the other. */
const SINGLETONS = { host: 'Host', authorization: 'Authorization', 'content-length': 'Content-Length', 'transfer-encoding': 'Transfer-Encoding' } as const;
type Singleton = keyof typeof SINGLETONS;
const SINGLETON_NAMES = Object.keys(SINGLETONS) as Singleton[];

/** Header lines a request may carry (Apache's LimitRequestFields default; Outlook sends about 20). */
export const MAX_HEADER_LINES = 100;
/** Headers that frame the request or carry what the gateway judges: never removable by `Connection`. */
const UNDROPPABLE: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding', 'host', 'authorization']);

/** What checkHead needs of a request. */
export interface Head {
  readonly method?: string | undefined;
  /** `1.1`, `1.0`, as Node's `req.httpVersion`. */
  readonly httpVersion: string;
  readonly headers: { readonly host?: string | undefined; readonly 'transfer-encoding'?: string | undefined };
  readonly rawHeaders: readonly string[];
}

/** A refusal of the request head (400, or `status` when HTTP has a better code), or null when it is fine. */
export function checkHead(req: Head): (Misroute & { readonly status?: number }) | null {
  if (!METHODS.has(req.method ?? '')) return { ok: false, reason: 'bad-request', detail: `method ${req.method} is not served`, status: 405 };
  // Node's parser also hands over HTTP/0.9 and HTTP/2.0 request lines (checked on 20.20).
  if (req.httpVersion !== '1.1' && req.httpVersion !== '1.0') {
    return { ok: false, reason: 'bad-request', detail: `HTTP version ${req.httpVersion.slice(0, 8)} is not served`, status: 505 };
  }
  // Node keeps only the first ~1,000 header lines (in `headers` and `rawHeaders` alike): a request
  // past a limit well below that is refused, so the gateway judges every line it forwards.
  if (req.rawHeaders.length > MAX_HEADER_LINES * 2) {
    return { ok: false, reason: 'bad-request', detail: `more than ${MAX_HEADER_LINES} header lines`, status: 431 };
  }
  const counts = countSingletons(req.rawHeaders);
  for (const name of SINGLETON_NAMES) {
    if (counts[name] > 1) return { ok: false, reason: 'bad-request', detail: `more than one ${SINGLETONS[name]} header` };
  }
  // Node refuses both together itself; a second line of defence (RFC 9112 §6.3: request smuggling).
  if (counts['content-length'] > 0 && counts['transfer-encoding'] > 0) {
    return { ok: false, reason: 'bad-request', detail: 'both Content-Length and Transfer-Encoding' };
  }
  // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host (the gateway's
  // `requireHostHeader: false` only lets HTTP/1.0 clients be named by their SNI).
  if (counts.host === 0 && req.httpVersion !== '1.0') return { ok: false, reason: 'bad-request', detail: 'HTTP/1.1 request without Host' };
  const te = req.headers['transfer-encoding'];
  if (te !== undefined && te.trim().toLowerCase() !== 'chunked') {
    return { ok: false, reason: 'bad-request', detail: 'transfer coding other than chunked', status: 501 };
  }
  const host = req.headers.host;
  if (host !== undefined && !HOST.test(host)) return { ok: false, reason: 'bad-request', detail: 'Host is not name[:port]' };
  return checkRawLines(req.rawHeaders);
}

/**
 * What is read from every raw header line, never from Node's merged view: a `Connection` that names
 * a framing or credential header (a hop that honours it would drop the body's framing and read the
 * body as a second request: reproduced on the RPC tunnel), and Exchange's internal routing cookies on any Cookie line.
 */
function checkRawLines(rawHeaders: readonly string[]): (Misroute & { readonly status?: number }) | null {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    const value = rawHeaders[i + 1] as string;
    if (name === 'connection') {
      for (const token of value.split(',')) {
        const t = token.trim().toLowerCase();
        if (UNDROPPABLE.has(t)) return { ok: false, reason: 'bad-request', detail: `Connection names ${t}` };
      }
    } else if (name === 'cookie' && ROUTING_COOKIE.test(value)) {
      return { ok: false, reason: 'bad-request', detail: 'Exchange-internal routing cookie from a client' };
    }
  }
  return null;
}

function countSingletons(rawHeaders: readonly string[]): Record<Singleton, number> {
  const counts: Record<Singleton, number> = { host: 0, authorization: 0, 'content-length': 0, 'transfer-encoding': 0 };
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    if (Object.hasOwn(SINGLETONS, name)) counts[name as Singleton]++;
  }
  return counts;
}

/** Exchange's front-end → back-end routing cookies; a client never sets them. ProxyLogon
 * (CVE-2021-26855) was an SSRF through `X-BEResource`, its kin through `X-AnonResource-Backend`. */
const ROUTING_COOKIE = /(?:^|;)\s*(?:x-beresource|x-anonresource|x-anonresource-backend)\s*=/i;
