/**
 * Which headers cross the gateway, both ways. Client headers are hostile (STYLE.md §10): hop-by-hop
 * headers (RFC 9110 §7.6.1), anything named in `Connection`, `Expect` (the gateway answers
 * 100-continue itself) and the forwarding headers the gateway owns never pass. Exchange's answers
 * lose the headers that name its internal servers, and, for services whose clients authenticate
 * with Basic only, the challenges such clients cannot answer.
 */
import type { IncomingMessage } from 'node:http';
import type { AuthFrontEnd } from '../auth/front-ends.js';
import { withoutSessionCookie } from '../state/sessions.js';
import { clientAddress } from '../runtime/client-address.js';

const REQUEST_DROP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'expect',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'forwarded',
  'x-real-ip',
  'x-request-id',
  // Exchange's own front-end → back-end headers: a client never sends them.
  'x-commonaccesstoken',
  'x-isfromcafe',
  'x-sourcecafeserver',
  'msexchproxyuri',
  'msexchlogonmailbox',
  'x-beresource',
]);

/** Forwarded exactly once, from Node's parsed view, never from a client's repeated raw lines. */
const SINGLE: ReadonlySet<string> = new Set(['host', 'content-length', 'authorization']);

/** Response headers that name Exchange's internal servers (and its software), removed by default. */
export const HIDDEN_RESPONSE_HEADERS: ReadonlySet<string> = new Set([
  'x-feserver',
  'x-beserver',
  'x-calculatedbetarget',
  'x-diaginfo',
  'x-febeserver',
  'x-fefqdn',
  'x-feproxyinfo',
  'x-feefzinfo',
  'x-targetbeserver',
  'x-beserverexception',
  'x-backendhttpstatus',
  'x-proxy-backendserverstatus',
  'x-proxy-routingcorrectness',
  'x-powered-by',
  'x-aspnet-version',
  'x-owa-diagnosticsinfo',
  'x-serverapplication-diag',
  'x-owa-version',
  'x-owa-minimumsupportedowsversion',
  'x-owa-owsversion',
  'x-firsthopcafeefz',
]);

/** Header name prefixes removed the same way (`X-RUM-*`: routing update module diagnostics). */
const HIDDEN_PREFIXES = ['x-rum-'];

const RESPONSE_DROP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  ...HIDDEN_RESPONSE_HEADERS,
]);

/**
 * The headers to send Exchange: the client's, minus the hop-by-hop and gateway-owned ones, in
 * their order and case; Host (the SNI name when the client sent none), Content-Length and
 * Authorization once; X-Forwarded-For / -Proto and X-Request-Id (the access record's) set by the gateway.
 */
export function requestHeaders(
  req: IncomingMessage,
  host: string,
  requestId: string,
  opts: { authorization?: boolean; bodyLength?: number | undefined } = {},
): string[] {
  const raw = req.rawHeaders;
  const named = connectionTokens(req.headers.connection);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (SINGLE.has(lower) || dropsRequestHeader(lower, named)) continue;
    if (lower === 'cookie') {
      const kept = withoutSessionCookie(raw[i + 1] as string); // the gateway's cookie is its own
      if (kept !== null) out.push(name, kept);
      continue;
    }
    out.push(name, raw[i + 1] as string);
  }
  out.push('Host', req.headers.host ?? host);
  const length = opts.bodyLength !== undefined ? String(opts.bodyLength) : req.headers['content-length'];
  if (length !== undefined && length !== '0') out.push('Content-Length', length);
  if (req.headers.authorization !== undefined && opts.authorization !== false)
    out.push('Authorization', req.headers.authorization);
  out.push('X-Forwarded-For', clientAddress(req.socket) ?? '', 'X-Forwarded-Proto', 'https');
  out.push('X-Request-Id', requestId);
  return out;
}

/**
 * The headers to send the client from Exchange's raw response headers: hop-by-hop and
 * internal-server headers dropped, a 401's challenges filtered by the service's front-end
 * (`passes`), and the gateway's own challenges when none is left.
 */
export function responseHeaders(
  raw: readonly Buffer[] | undefined,
  status: number,
  frontEnd: Pick<AuthFrontEnd, 'passes' | 'challenges'>,
): string[] {
  const out: string[] = [];
  if (!raw) return out;
  let named: Set<string> | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as Buffer).length === 10 && (raw[i] as Buffer).toString('latin1').toLowerCase() === 'connection') {
      named = connectionTokens((raw[i + 1] as Buffer).toString('latin1'));
    }
  }
  let challenges = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    const lower = name.toLowerCase();
    if (RESPONSE_DROP.has(lower) || named?.has(lower) || HIDDEN_PREFIXES.some((p) => lower.startsWith(p))) continue;
    const value = (raw[i + 1] as Buffer).toString('latin1');
    if (lower === 'www-authenticate') {
      if (!frontEnd.passes(value)) continue;
      challenges++;
    }
    out.push(name, value);
  }
  if (status === 401 && challenges === 0) for (const c of frontEnd.challenges) out.push('WWW-Authenticate', c);
  return out;
}

/**
 * Whether a client request header never reaches Exchange: hop-by-hop, named in `Connection`
 * (`named`, from connectionTokens), gateway-owned or Exchange-internal. The raw Outlook Anywhere
 * tunnel (rpc-tunnel.ts) rebuilds its head with the same rule.
 */
export function dropsRequestHeader(lower: string, named: ReadonlySet<string> | null): boolean {
  return REQUEST_DROP.has(lower) || named?.has(lower) === true;
}

export function connectionTokens(value: string | undefined): Set<string> | null {
  if (!value) return null;
  const v = value.toLowerCase();
  if (v === 'keep-alive' || v === 'close') return null;
  return new Set(
    v
      .split(',')
      .map((t) => t.trim())
      .filter(Boolean),
  );
}
