/**
 * Autodiscover, the door most attacks on Exchange came through.
 *
 * - `autodiscover.xml` (POX, POST) is an ordinary authenticated request: the gateway authorizes
 *   the logon identity in the Authorization header (the mailbox in the body may be a delegate's).
 * - `autodiscover.json` is anonymous by design, answers per address (user enumeration), and was
 *   the entry of ProxyShell (pre-auth SSRF) and ProxyNotShell (CVE-2022-41040). The gateway never
 *   forwards it: it answers the few shapes Outlook, Outlook mobile and Teams send from config,
 *   the same answer for every address, and refuses every other shape with 400.
 */
import type { IncomingMessage } from 'node:http';

/** The protocols autodiscover.json is asked for, and the path each one's URL points to. */
const PROTOCOLS: Readonly<Record<string, string>> = {
  ews: '/EWS/Exchange.asmx',
  activesync: '/Microsoft-Server-ActiveSync',
  autodiscoverv1: '/autodiscover/autodiscover.xml',
};
const QUERY_KEYS: ReadonlySet<string> = new Set(['email', 'protocol', 'redirectcount']);
/** A plain address: no `/ ? # % \ @@` or spaces, one `@`, a dotted domain. */
const EMAIL = /^[A-Za-z0-9._+'-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$/;
const JSON_PATH = '/autodiscover/autodiscover.json';
const V1_PREFIX = '/autodiscover/autodiscover.json/v1.0/';

export type AutodiscoverJson =
  | { readonly kind: 'answer'; readonly body: string }
  | { readonly kind: 'refuse'; readonly detail: string; readonly status: number };

/** True when a normalized path is autodiscover.json (any form). */
export function isAutodiscoverJson(path: string): boolean {
  return path === JSON_PATH || path.startsWith(JSON_PATH + '/');
}

/**
 * The gateway's answer to an autodiscover.json request: `{"Protocol","Url"}` on `host`, or a
 * refusal naming what was off. `path` is normalized (lowercase); `rawUrl` is as sent.
 */
export function answerAutodiscoverJson(
  req: Pick<IncomingMessage, 'method'>,
  path: string,
  rawUrl: string,
  host: string,
): AutodiscoverJson {
  if (req.method !== 'GET') return refuse('autodiscover.json takes GET only', 405);
  let email: string | null = null;
  if (path.startsWith(V1_PREFIX)) {
    email = decodeOrNull(
      rawUrl.slice(0, rawUrl.indexOf('?') < 0 ? undefined : rawUrl.indexOf('?')).slice(V1_PREFIX.length),
    );
    if (email === null || email.includes('/')) return refuse('not /autodiscover/autodiscover.json/v1.0/<address>');
  } else if (path !== JSON_PATH) {
    return refuse('not an autodiscover.json path');
  }
  const q = rawUrl.indexOf('?');
  const query = new URLSearchParams(q < 0 ? '' : rawUrl.slice(q + 1));
  const seen = new Set<string>();
  for (const [key, value] of query) {
    const k = key.toLowerCase();
    if (!QUERY_KEYS.has(k))
      return refuse(`query key ${JSON.stringify(key.slice(0, 40))} is not one autodiscover.json takes`);
    if (seen.has(k)) return refuse(`query key ${k} given twice`);
    seen.add(k);
    if (k === 'email') email = value;
    if (k === 'redirectcount' && !/^\d{1,2}$/.test(value)) return refuse('RedirectCount is not a small number');
  }
  if (email === null || !EMAIL.test(email)) return refuse('Email is not a plain address');
  const protocol = query.get([...query.keys()].find((k) => k.toLowerCase() === 'protocol') ?? '') ?? '';
  const target = PROTOCOLS[protocol.toLowerCase()];
  if (!target) return refuse('Protocol is not EWS, ActiveSync or AutodiscoverV1');
  const name =
    protocol.toLowerCase() === 'ews'
      ? 'EWS'
      : protocol.toLowerCase() === 'activesync'
        ? 'ActiveSync'
        : 'AutodiscoverV1';
  return { kind: 'answer', body: JSON.stringify({ Protocol: name, Url: `https://${host}${target}` }) };
}

function refuse(detail: string, status = 400): AutodiscoverJson {
  return { kind: 'refuse', detail, status };
}

function decodeOrNull(s: string): string | null {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}
