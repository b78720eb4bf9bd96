/**
 * checkHead() refuses request heads that could mean one thing to the gateway and another to
 * Exchange: too many header lines, a repeated Host, Authorization, Content-Length or
 * Transfer-Encoding, a `Connection` naming one of them, an HTTP/1.1 request without Host, a
 * transfer coding other than chunked, a Host that is not `name[:port]`, a method Exchange does not
 * use, an HTTP version other than 1.0/1.1, Exchange's internal routing cookies. Pure.
 */
import type { Misroute } from './classify.js';

/** The methods Exchange's HTTP services use; anything else (TRACE, WebDAV, …) is refused. */
const METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH']);
const HOST =
  /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?$/i;
/** Headers a request carries at most once: Node keeps the first of a repeated Host or
 * Authorization, IIS might read another, so the gateway would check one and forward the other. */
const SINGLETONS = {
  host: 'Host',
  authorization: 'Authorization',
  'content-length': 'Content-Length',
  'transfer-encoding': 'Transfer-Encoding',
} as const;
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
  if (!METHODS.has(req.method ?? ''))
    return { ok: false, reason: 'bad-request', detail: `method ${req.method} is not served`, status: 405 };
  // Node's parser also hands over HTTP/0.9 and HTTP/2.0 request lines (checked on 20.20).
  if (req.httpVersion !== '1.1' && req.httpVersion !== '1.0') {
    return {
      ok: false,
      reason: 'bad-request',
      detail: `HTTP version ${req.httpVersion.slice(0, 8)} is not served`,
      status: 505,
    };
  }
  // Node keeps only the first ~1,000 header lines (in `headers` and `rawHeaders` alike): a request
  // past a limit well below that is refused, so the gateway judges every line it forwards.
  if (req.rawHeaders.length > MAX_HEADER_LINES * 2) {
    return { ok: false, reason: 'bad-request', detail: `more than ${MAX_HEADER_LINES} header lines`, status: 431 };
  }
  const counts = countSingletons(req.rawHeaders);
  for (const name of SINGLETON_NAMES) {
    if (counts[name] > 1)
      return { ok: false, reason: 'bad-request', detail: `more than one ${SINGLETONS[name]} header` };
  }
  // Node refuses both together itself; a second line of defence (RFC 9112 §6.3: request smuggling).
  if (counts['content-length'] > 0 && counts['transfer-encoding'] > 0) {
    return { ok: false, reason: 'bad-request', detail: 'both Content-Length and Transfer-Encoding' };
  }
  // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host (the gateway's
  // `requireHostHeader: false` only lets HTTP/1.0 clients be named by their SNI).
  if (counts.host === 0 && req.httpVersion !== '1.0')
    return { ok: false, reason: 'bad-request', detail: 'HTTP/1.1 request without Host' };
  const te = req.headers['transfer-encoding'];
  if (te !== undefined && te.trim().toLowerCase() !== 'chunked') {
    return { ok: false, reason: 'bad-request', detail: 'transfer coding other than chunked', status: 501 };
  }
  const host = req.headers.host;
  if (host !== undefined && !HOST.test(host))
    return { ok: false, reason: 'bad-request', detail: 'Host is not name[:port]' };
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
