/**
 * The forms front-end (OWA, ECP): Exchange's own sign-in stays, the gateway decides who completes it
 * (INTERFACE.md "Browser sign-in"). The sign-in page and its files pass anonymously; the form is
 * checked like Basic before Exchange sees it; Exchange's acceptance starts a gateway session; every
 * other request needs a live session, re-checked against AD every groupTtlSeconds.
 */
import type {
  AuthFrontEnd,
  BrowserPage,
  FormsRefusal,
  FormsStep,
  FrontEndContext,
  FrontEndOutcome,
  FrontEndRequest,
} from './front-end.js';
import {
  formDestination,
  isAnonymousPage,
  isSignInPost,
  isSignOut,
  LOGON_REASON,
  logonUrl,
  MAX_FORM_BYTES,
  parseSignInForm,
} from './sign-in-form.js';
import { EXPIRED_SESSION_COOKIE, sessionCookie, sessionIdOf } from '../state/sessions.js';
import { forbiddenPage, LOGIN_TIMEOUT_PAGE } from './forms-pages.js';
import { clientAddress } from '../runtime/client-address.js';

/** How long a sign-in form may take to arrive whole. */
const FORM_BODY_MS = 10_000;

export class FormsFrontEnd implements AuthFrontEnd {
  /** No WWW-Authenticate: a browser must never see a password pop-up for OWA. */
  readonly challenges: readonly string[] = [];

  async authenticate(req: FrontEndRequest, ctx: FrontEndContext): Promise<FrontEndOutcome> {
    if (isAnonymousPage(req.method, req.path))
      return { ok: true, identity: null, cache: null, detail: 'sign-in page', forms: { dropAuthorization: true } };
    if (isSignInPost(req.method, req.path)) return this.signIn(req, ctx);
    return this.session(req, ctx);
  }

  /** The sign-in form: read (16 KiB at most), checked like Basic, authorized for its destination's service. */
  private async signIn(req: FrontEndRequest, ctx: FrontEndContext): Promise<FrontEndOutcome> {
    const read = req.readBody ? await req.readBody(MAX_FORM_BYTES, FORM_BODY_MS) : 'aborted';
    if (read === 'aborted') return refusal('bad-request', 'the sign-in form did not arrive whole', 408);
    if (read === 'too-large') return refusal('too-large', `a sign-in form over ${MAX_FORM_BYTES} bytes`);
    const parsed = parseSignInForm(read, req.contentType);
    if (!parsed.ok) return refusal('bad-request', parsed.why);
    const { username, password, destination } = parsed.form;
    const target = formDestination(destination, req.host);
    const outcome = await ctx.authenticator.verify(username, password, {
      source: clientAddress(req.socket) ?? '',
      groupDns: ctx.policy.groupDns,
      policyVersion: ctx.policy.version,
    });
    if (!outcome.ok) {
      if (outcome.reason === 'directory-unavailable') return outcome;
      // Wrong credentials, an unusable account, a lockout: Exchange's own "isn't correct" page (§A1).
      const location = logonUrl(req.host, target.url, LOGON_REASON.invalidCredentials, true);
      return { ...outcome, page: { status: 302, location } };
    }
    const previous = sessionIdOf(req.cookies);
    const { sessions } = ctx;
    const identity = outcome.identity;
    const step: FormsStep = {
      body: read,
      detail: 'sign-in form',
      service: target.service,
      dropAuthorization: true,
      refused: () => ({ status: 403, html: forbiddenPage(target.service) }),
      // Exchange accepted the form when its answer sets its own session cookie (§A2: cadata).
      answered: (_status, setCookies) => {
        if (!setCookies.some((c) => /^cadata=[^;]/i.test(c))) return null;
        sessions.endId(previous); // a sign-in replaces the session the browser had
        const id = sessions.start(identity, target.service);
        return [sessionCookie(id, sessions.settings)];
      },
    };
    return { ...outcome, forms: step };
  }

  /** Any other request: the live session its cookie names, its user re-read from AD (cached for groupTtlSeconds). */
  private async session(req: FrontEndRequest, ctx: FrontEndContext): Promise<FrontEndOutcome> {
    const session = ctx.sessions.find(sessionIdOf(req.cookies));
    if (!session) return { ...refusal('no-session' as const, 'no live session'), page: noSession(req) };
    const outcome = await ctx.authenticator.refresh(session.account, {
      source: clientAddress(req.socket) ?? '',
      groupDns: ctx.policy.groupDns,
      policyVersion: ctx.policy.version,
    });
    if (!outcome.ok) {
      if (outcome.reason === 'directory-unavailable') return outcome; // a fault ends nothing: 503
      ctx.sessions.end(session); // AD says the account can no longer sign in
      return { ...outcome, page: noSession(req) };
    }
    const signOut = isSignOut(req.path);
    const step: FormsStep = {
      dropAuthorization: true,
      // Allowed, before Exchange answers: requests racing the sign-out find no session. Refused (ECP's
      // sign-out with an OWA session), it ends nothing.
      ...(signOut ? { detail: 'sign-out', allowed: () => ctx.sessions.end(session) } : {}),
      refused: () => {
        // The policy no longer allows the service the user signed in for: the session ends with it.
        // Refused another one (ECP to an OWA user), it lives on, and so does its cookie.
        const ends = session.service === serviceOf(req.path);
        if (ends) ctx.sessions.end(session);
        return noSession(req, ends);
      },
      ...(signOut ? { answered: () => [EXPIRED_SESSION_COOKIE] } : {}),
    };
    return { ...outcome, forms: step };
  }

  /** Exchange's challenges never reach a browser on a forms service. */
  passes(): boolean {
    return false;
  }

  /** The form's user is known only once it is read: the outcome names it. */
  claimedUser(): string | null {
    return null;
  }
}

/**
 * Without a session, as Exchange answers a request without its cookie (§A4): GET → the sign-in page,
 * else 440. `expire`: the browser's cookie names no live session, so it is removed.
 */
function noSession(req: FrontEndRequest, expire = true): BrowserPage {
  const setCookie = expire && sessionIdOf(req.cookies) !== null ? [EXPIRED_SESSION_COOKIE] : [];
  if (req.method === 'GET' || req.method === 'HEAD') {
    const original = `https://${req.host}${req.url}`;
    return { status: 302, location: logonUrl(req.host, original, LOGON_REASON.none), setCookie };
  }
  return { status: 440, statusMessage: 'Login Timeout', html: LOGIN_TIMEOUT_PAGE, setCookie };
}

function refusal(reason: FormsRefusal['reason'], detail: string, status?: number): FormsRefusal {
  return { ok: false, reason, user: null, cache: null, detail, ...(status ? { status } : {}) };
}

function serviceOf(path: string): 'owa' | 'ecp' {
  return path.startsWith('/ecp') ? 'ecp' : 'owa';
}
