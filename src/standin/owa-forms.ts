/**
 * Exchange 2016/2019's forms-based sign-in (FBA) for /owa and /ecp, as research/owa-pool-ha.md §A
 * describes it: logon.aspx, the POST to /owa/auth.owa, cadata* cookies, 302 to logon or 440 without
 * them, and a sign-out that only deletes the browser's cookies: the server keeps honouring a copied
 * cookie set until it expires, as Exchange does (A5). Passwords and cookie values are never logged.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  cookies,
  destinationPath,
  html,
  isTls,
  NO_STORE,
  onOwnHost,
  origin,
  readForm,
  redirect,
  reply,
} from './owa-http.js';
import { bouncePage, ecpPage, inboxPage, LOGIN_TIMEOUT_BODY, logoffPage, logonPage, RESOURCES } from './owa-pages.js';

/** FormsOptions configures {@link OwaForms}. */
export interface FormsOptions {
  /** Lower-case user name → password. */
  readonly users: Readonly<Record<string, string>>;
  /** NetBIOS domain accepted in `DOMAIN\user` and shown in pages, e.g. `'LAB'`. */
  readonly domain: string;
  /** DNS domain accepted as `DOMAIN\user` and as the UPN suffix in `user@suffix`, e.g. `'lab.test'`. */
  readonly dnsDomain: string;
  /** Lifetime of a cookie set, extended on use. Default: 1.5 × Exchange's timeout (A3), see sessionMs(). */
  readonly sessionMs?: number | undefined;
}

/** The request as the forms flow sees it. */
export interface FormsCall {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** Lower-cased pathname. */
  readonly path: string;
  readonly query: URLSearchParams;
  /** The body, kept only for the sign-in POST (see {@link OwaForms.keepsBody}). */
  readonly body: Buffer | undefined;
  /** It carried Authorization (Basic stays enabled beside FBA on Exchange's OWA vdir), with this user. */
  readonly authorized: boolean;
  readonly user: string | null;
}

/** One signed-in cookie set, keyed by its `cadata` value. */
interface Session {
  readonly user: string;
  readonly key: string;
  readonly iv: string;
  readonly sig: string;
  readonly ttl: string;
  readonly lifetimeMs: number;
  expiresAt: number;
  canary: string | undefined;
}

type Lookup = { state: 'none' } | { state: 'expired' } | { state: 'valid'; session: Session };

const FBA_COOKIES = ['cadata', 'cadataKey', 'cadataIV', 'cadataSig', 'cadataTTL'];
const MINUTE = 60_000;
// HKLM\...\MSExchange OWA PrivateTimeout/PublicTimeout defaults; a cookie set lives 1.5 × that (A3).
const PRIVATE_TIMEOUT_MS = 480 * MINUTE;
const PUBLIC_TIMEOUT_MS = 15 * MINUTE;
/** flags bit 4: "private computer" (IsTrustedFlagValue, A2). */
const TRUSTED_FLAG = 4;
/** More than any real sign-in form; a larger POST is refused rather than parsed. */
export const MAX_FORM_BYTES = 64 * 1024;
const EXPIRED = 'expires=Thu, 01-Jan-1970 00:00:00 GMT';
/** The signed-in landing pages: OWA's inbox and the EAC. */
const LANDING = new Set(['/owa', '/owa/', '/ecp', '/ecp/']);

/** OwaForms is the stand-in's FBA: built once per stand-in, holding its signed-in cookie sets. */
export class OwaForms {
  readonly #users: Map<string, string>;
  readonly #sessions = new Map<string, Session>();

  constructor(private readonly opts: FormsOptions) {
    this.#users = new Map(Object.entries(opts.users).map(([user, password]) => [user.toLowerCase(), password]));
  }

  /** addUser lets one more user sign in (a test's own AD account). */
  addUser(user: string, password: string): void {
    this.#users.set(user.toLowerCase(), password);
  }

  /** keepsBody says whether the request's body is the sign-in form, which {@link serve} must read. */
  keepsBody(method: string, path: string): boolean {
    return method === 'POST' && isFormPost(path);
  }

  /**
   * userOf names the request's user for the stand-in's record: for the sign-in POST the `username`
   * field as typed (whether or not it verifies); else the user of a valid cookie set; else null.
   */
  userOf(method: string, path: string, cookie: string | string[] | undefined, body: Buffer | undefined): string | null {
    if (this.keepsBody(method, path)) return body ? (readForm(body).get('username') ?? null) : null;
    const found = this.#lookup(cookies(cookie));
    return found.state === 'valid' ? found.session.user : null;
  }

  /** serve answers the request when it belongs to the forms flow and returns true; false leaves it to the stand-in. */
  serve(c: FormsCall): boolean {
    const handler = this.#route(c);
    handler?.(c);
    return handler !== undefined;
  }

  /** route is the forms routing table: anonymous sign-in pages first, then the cookie gate (A1, A4). */
  #route(c: FormsCall): ((c: FormsCall) => void) | undefined {
    const method = c.req.method ?? 'GET';
    const { path } = c;
    if (this.keepsBody(method, path)) return (call) => this.#signIn(call);
    if (under(path, '/owa/auth') && isRead(method)) return anonymous;
    if (!under(path, '/owa') && !under(path, '/ecp')) return undefined;
    if (path === '/owa/logoff.owa' || path === '/ecp/logoff.aspx') return signOut;
    const jar = cookies(c.req.headers.cookie);
    const found = this.#lookup(jar);
    if (found.state !== 'valid' && !c.authorized) return (call) => unauthenticated(call, found, jar);
    if (!isRead(method) || !LANDING.has(path)) return undefined; // signed in: the stand-in's usual answer
    const user = found.state === 'valid' ? found.session.user : (c.user ?? '-');
    const canary = found.state === 'valid' ? this.#canary(found.session, jar, c.req) : [];
    const body = under(path, '/ecp') ? ecpPage(user) : inboxPage(user);
    return (call) => html(call.res, 200, body, { 'Set-Cookie': canary });
  }

  /**
   * The POST to auth.owa (A2): username, password, destination and flags are required (else 400);
   * destination must be an absolute URL on the request's own host (else 400, as Exchange's
   * CheckPostDestination and proxy handler do). Wrong credentials: 302 to logon.aspx with reason=2.
   */
  #signIn(c: FormsCall): void {
    const form = c.body && c.body.length <= MAX_FORM_BYTES ? readForm(c.body) : undefined;
    const [username, password, destination, flags] = ['username', 'password', 'destination', 'flags'].map(
      (name) => form?.get(name) ?? undefined,
    );
    if (username === undefined || password === undefined || destination === undefined || flags === undefined) {
      return reply(c.res, 400, 'text/html', '<HTML><BODY>400 Bad Request</BODY></HTML>');
    }
    if (!onOwnHost(destination, c.req)) {
      return reply(c.res, 400, 'text/html', '<HTML><BODY>400 destination value is not valid</BODY></HTML>');
    }
    const user = this.#verify(username, password);
    if (user === null) {
      const query = `replaceCurrent=1&reason=2&url=${encodeURIComponent(destination)}`;
      return redirect(c.res, `${origin(c.req)}/owa/auth/logon.aspx?${query}`, expireFba(c.req));
    }
    const trusted = (Number.parseInt(flags, 10) & TRUSTED_FLAG) !== 0;
    redirect(c.res, destination, this.#start(user, trusted, c.req));
  }

  /** verify resolves `DOMAIN\user`, `user@upn` or `user` and checks the password: canonical `DOMAIN\user`, or null. */
  #verify(typed: string, password: string): string | null {
    const name = accountName(typed, this.opts.domain, this.opts.dnsDomain);
    const known = name === null ? undefined : this.#users.get(name);
    if (name === null || known === undefined || !sameSecret(known, password)) return null;
    return `${this.opts.domain}\\${name}`;
  }

  /** start records a new cookie set for `user` and returns its Set-Cookie values (HttpOnly; Secure on HTTPS). */
  #start(user: string, trusted: boolean, req: IncomingMessage): string[] {
    const now = Date.now();
    for (const [cadata, s] of this.#sessions) if (s.expiresAt <= now) this.#sessions.delete(cadata);
    const lifetimeMs = this.opts.sessionMs ?? 1.5 * (trusted ? PRIVATE_TIMEOUT_MS : PUBLIC_TIMEOUT_MS);
    const values = FBA_COOKIES.map(() => opaque());
    const [cadata = '', key = '', iv = '', sig = '', ttl = ''] = values;
    this.#sessions.set(cadata, { user, key, iv, sig, ttl, lifetimeMs, expiresAt: now + lifetimeMs, canary: undefined });
    const secure = isTls(req) ? '; secure' : '';
    return FBA_COOKIES.map((name, i) => `${name}=${values[i] ?? ''}; path=/${secure}; HttpOnly`);
  }

  /** lookup finds the session of a complete, matching cookie set, extending it on use. */
  #lookup(jar: Map<string, string>): Lookup {
    const session = this.#sessions.get(jar.get('cadata') ?? '');
    if (!session) return { state: 'none' };
    const parts: [string, string][] = [
      ['cadataKey', session.key],
      ['cadataIV', session.iv],
      ['cadataSig', session.sig],
      ['cadataTTL', session.ttl],
    ];
    if (parts.some(([name, value]) => jar.get(name) !== value)) return { state: 'none' };
    const now = Date.now();
    if (session.expiresAt <= now) return { state: 'expired' };
    session.expiresAt = now + session.lifetimeMs;
    return { state: 'valid', session };
  }

  /** X-OWA-CANARY comes from OWA's backend on a signed-in page, not from auth.owa; it is not HttpOnly (A3). */
  #canary(session: Session, jar: Map<string, string>, req: IncomingMessage): string[] {
    if (session.canary !== undefined && jar.get('X-OWA-CANARY') === session.canary) return [];
    session.canary = opaque();
    return [`X-OWA-CANARY=${session.canary}; path=/${isTls(req) ? '; secure' : ''}`];
  }
}

/**
 * accountName reduces a typed sign-in name to the lower-case account, as Exchange accepts it:
 * `DOMAIN\user` (NetBIOS or DNS domain), `user@upnSuffix`, or a bare `user`. Null for another domain.
 */
export function accountName(typed: string, domain: string, dnsDomain: string): string | null {
  const name = typed.trim().toLowerCase();
  const slash = name.indexOf('\\');
  if (slash >= 0) {
    const prefix = name.slice(0, slash);
    return prefix === domain.toLowerCase() || prefix === dnsDomain.toLowerCase() ? name.slice(slash + 1) : null;
  }
  const at = name.lastIndexOf('@');
  if (at >= 0) return name.slice(at + 1) === dnsDomain.toLowerCase() ? name.slice(0, at) : null;
  return name === '' ? null : name;
}

/** The anonymous part of /owa/auth/: logon.aspx, logoff.aspx and the sign-in page's resources; else 404. */
function anonymous(c: FormsCall): void {
  const resource = RESOURCES.get(c.path);
  if (resource) return reply(c.res, 200, resource.type, resource.body);
  if (c.path === '/owa/auth/logon.aspx') return logon(c);
  if (c.path === '/owa/auth/logoff.aspx') return html(c.res, 200, logoffPage());
  reply(c.res, 404, 'text/html', '<HTML><BODY>404 Not Found</BODY></HTML>');
}

/** logon.aspx: the form only with replaceCurrent=1, else the script that reloads with it (A1). */
function logon(c: FormsCall): void {
  const destination = c.query.get('url') ?? `${origin(c.req)}/owa/`;
  if (c.query.get('replaceCurrent') !== '1') {
    const again = new URLSearchParams(c.query);
    again.set('replaceCurrent', '1');
    return html(c.res, 200, bouncePage(`/owa/auth/logon.aspx?${again.toString()}`));
  }
  const ecp = destinationPath(destination)?.startsWith('/ecp') === true;
  html(c.res, 200, logonPage({ destination, reason: c.query.get('reason') ?? '0', ecp }));
}

/** /owa/logoff.owa, /ecp/logoff.aspx: delete the browser's cookies only (A5); the session stays valid. */
function signOut(c: FormsCall): void {
  redirect(c.res, `${origin(c.req)}/owa/auth/logoff.aspx?Cmd=logoff&src=exch`, expireFba(c.req));
}

/** No valid cookie set (A4): GET → 302 to logon (reason 3 when it expired, else 0); other methods → 440. */
function unauthenticated(c: FormsCall, found: Lookup, jar: Map<string, string>): void {
  const expire = FBA_COOKIES.some((name) => jar.has(name)) ? expireFba(c.req) : [];
  if (!isRead(c.req.method ?? 'GET')) {
    c.res.writeHead(440, 'Login Timeout', {
      ...NO_STORE,
      'Set-Cookie': expire,
      'Content-Type': 'text/html',
      Connection: 'close',
      'Content-Length': Buffer.byteLength(LOGIN_TIMEOUT_BODY),
    });
    return void c.res.end(LOGIN_TIMEOUT_BODY);
  }
  const url = `${origin(c.req)}${c.req.url ?? '/'}`;
  const reason = found.state === 'expired' ? 3 : 0;
  redirect(c.res, `${origin(c.req)}/owa/auth/logon.aspx?url=${encodeURIComponent(url)}&reason=${reason}`, expire);
}

function isFormPost(path: string): boolean {
  // FbaModule takes any POST whose last path segment is auth.owa or owaauth.dll (A2).
  return under(path, '/owa') && (path.endsWith('/auth.owa') || path.endsWith('/owaauth.dll'));
}

function isRead(method: string): boolean {
  return method === 'GET' || method === 'HEAD';
}

function under(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(`${prefix}/`);
}

function expireFba(req: IncomingMessage): string[] {
  const secure = isTls(req) ? '; secure' : '';
  return FBA_COOKIES.map((name) => `${name}=; ${EXPIRED}; path=/${secure}; HttpOnly`);
}

/** 256 random bits, base64url: opaque, like Exchange's encrypted cookie values. */
function opaque(): string {
  return randomBytes(32).toString('base64url');
}

function sameSecret(a: string, b: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(a), digest(b));
}
