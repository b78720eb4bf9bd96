/**
 * Exchange's forms sign-in as the gateway reads it (research/owa-pool-ha.md §A): the fields of the
 * `POST /owa/auth.owa` form, the service its `destination` names, and the sign-in page URLs Exchange
 * itself redirects to. Pure. A form the gateway could read differently from Exchange is refused.
 */
import type { Service } from '../pipeline/services.js';

/** The sign-in form's largest body (INTERFACE.md: larger gets 413 `too-large`). */
export const MAX_FORM_BYTES = 16 * 1024;

/** The fields the gateway reads; Exchange reads these four and no others (§A2). */
export interface SignInForm {
  readonly username: string;
  readonly password: string;
  /** The absolute URL the user asked for, or '' when absent. */
  readonly destination: string;
}

export type FormParse = { readonly ok: true; readonly form: SignInForm } | { readonly ok: false; readonly why: string };

const READ = ['username', 'password', 'destination', 'flags'] as const;
/**
 * The form's type, with no parameter but `charset=utf-8`: ASP.NET decodes the fields with the charset
 * the Content-Type names, so `charset=utf-16` made Exchange read a second, hidden set of fields.
 */
const FORM_TYPE = /^application\/x-www-form-urlencoded\s*(?:;\s*charset\s*=\s*(?:utf-8|"utf-8")\s*)?$/i;

/**
 * The form's fields, or why the gateway will not read it. ASP.NET joins a repeated field with commas
 * and decodes `%uXXXX`; WHATWG does neither. A repeated field, `%u`, a broken escape or bytes that are
 * not UTF-8 could make Exchange sign in a user other than the one the gateway checked: refused.
 */
export function parseSignInForm(body: Buffer, contentType: string | undefined): FormParse {
  if (!FORM_TYPE.test(contentType ?? '')) {
    return { ok: false, why: 'the sign-in form is not application/x-www-form-urlencoded (UTF-8)' };
  }
  const text = body.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(body)) return { ok: false, why: 'the sign-in form is not UTF-8' };
  const seen = new Map<string, string>();
  for (const pair of text.split('&')) {
    const eq = pair.indexOf('=');
    const rawName = eq < 0 ? pair : pair.slice(0, eq);
    const rawValue = eq < 0 ? '' : pair.slice(eq + 1);
    const name = decodeField(rawName);
    if (name === null) return { ok: false, why: 'a field name of the sign-in form is badly encoded' };
    const key = name.toLowerCase();
    if (!(READ as readonly string[]).includes(key)) continue;
    const value = decodeField(rawValue);
    if (value === null) return { ok: false, why: `the field ${key} of the sign-in form is badly encoded` };
    if (seen.has(key)) return { ok: false, why: `the field ${key} appears twice in the sign-in form` };
    seen.set(key, value);
  }
  // Exchange answers 400 when one of its four fields is missing (§A2); so does the gateway.
  for (const key of READ) if (!seen.has(key)) return { ok: false, why: `the sign-in form has no ${key} field` };
  return {
    ok: true,
    form: {
      username: seen.get('username') ?? '',
      password: seen.get('password') ?? '',
      destination: seen.get('destination') ?? '',
    },
  };
}

/** One name or value, `+` as space, strict percent escapes; null when it cannot be read one way only. */
function decodeField(raw: string): string | null {
  if (/%(?![0-9a-f]{2})/i.test(raw)) return null; // `%u0061`, `%4`, a lone `%`
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return null; // escapes that are not UTF-8
  }
}

/**
 * The service a sign-in is for: `ecp` when `destination` is an absolute https URL on the request's
 * own host under /ecp/, `owa` otherwise (INTERFACE.md). `url` is the destination to send the user
 * back to: the form's own when it is on this host, else `https://<host>/owa/`.
 */
export function formDestination(
  destination: string,
  host: string,
): { service: Extract<Service, 'owa' | 'ecp'>; url: string } {
  const fallback = { service: 'owa' as const, url: `https://${host}/owa/` };
  let url: URL;
  try {
    url = new URL(destination);
  } catch {
    return fallback;
  }
  if (url.protocol !== 'https:' || url.host.toLowerCase() !== host.toLowerCase() || url.username || url.password) {
    return fallback;
  }
  return { service: /^\/ecp(\/|$)/i.test(url.pathname) ? 'ecp' : 'owa', url: url.href };
}

/** Exchange's `LogonReason` values the gateway uses (§A1). */
export const LOGON_REASON = { none: 0, invalidCredentials: 2 } as const;

/**
 * Exchange's own sign-in page: `https://<host>/owa/auth/logon.aspx?…`. After a failed form,
 * `replaceCurrent=1&reason=2&url=…` shows the form with "user name or password isn't correct";
 * without a session, `url=…&reason=0`, the form Exchange itself uses (§A1).
 */
export function logonUrl(host: string, url: string, reason: number, replaceCurrent = false): string {
  const query = replaceCurrent
    ? `replaceCurrent=1&reason=${reason}&url=${encodeURIComponent(url)}`
    : `url=${encodeURIComponent(url)}&reason=${reason}`;
  return `https://${host}/owa/auth/logon.aspx?${query}`;
}

/**
 * Requests Exchange serves without a session (INTERFACE.md): GET/HEAD of the sign-in and sign-out
 * pages and of the sign-in page's static files under /owa/auth/. `path` is normalized (lowercase).
 */
export function isAnonymousPage(method: string, path: string): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  if (path === '/owa/auth/logon.aspx' || path === '/owa/auth/logoff.aspx') return true;
  return STATIC_FILE.test(path);
}
/**
 * Plain file names only: folders are names or version numbers (`15.2.1118.26`), never a page with
 * the rest as PATH_INFO (`logon.aspx/x.js` runs logon.aspx in IIS); no `;`, `%`, `~` or empty segment.
 */
const STATIC_FILE =
  /^\/owa\/auth\/(?:(?:[a-z0-9_-]+|\d+(?:\.\d+)*)\/)*[a-z0-9_-][a-z0-9._-]*\.(?:js|css|png|gif|jpg|svg|ico|woff|woff2|ttf|eot|htm)$/;

/**
 * The sign-in form's target. Exchange's FbaModule takes any POST whose last path segment is `auth.owa`
 * or `owaauth.dll` (§A2), under /owa or /ecp: every one of them is checked as a sign-in, so that a
 * signed-in browser cannot sign Exchange in as someone else at another such path.
 */
export function isSignInPost(method: string, path: string): boolean {
  return method === 'POST' && (path.endsWith('/auth.owa') || path.endsWith('/owaauth.dll'));
}

/** Exchange's sign-out URLs (research §A5): the gateway ends its session there. */
export function isSignOut(path: string): boolean {
  return path === '/owa/logoff.owa' || path === '/ecp/logoff.aspx';
}
