/**
 * The Basic and NTLM front-ends (the seam is front-end.ts; forms is forms.ts), and frontEndFor, which
 * picks one per service when the state is built (state.ts): the pipeline never switches on the mode.
 */
import type { AuthOutcome, Authenticator } from './authenticate.js';
import { parseBasic, parseLogon } from './credentials.js';
import { parseType3, readNtlmHeader } from './ntlm.js';
import { authenticateNtlm, logonOf } from './ntlm-auth.js';
import type { AuthMode } from '../pipeline/services.js';
import type { AuthFrontEnd, FrontEndContext, FrontEndOutcome, FrontEndRequest } from './front-end.js';
import { FormsFrontEnd } from './forms.js';
import { clientAddress } from '../runtime/client-address.js';

export type {
  AuthFrontEnd,
  BrowserPage,
  FormsRefusal,
  FormsStep,
  FrontEndContext,
  FrontEndOutcome,
  FrontEndRequest,
} from './front-end.js';

/** The Basic challenge of the gateway (INTERFACE.md: `Basic realm="…", charset="UTF-8"`). */
export function basicChallenge(realm: string): string {
  return `Basic realm="${realm}", charset="UTF-8"`;
}

/** The front-end for a service's mode. */
export function frontEndFor(mode: AuthMode, realm: string): AuthFrontEnd {
  if (mode === 'basic') return new BasicFrontEnd(realm);
  if (mode === 'forms') return new FormsFrontEnd();
  if (mode === 'ntlm') return new NtlmFrontEnd();
  return new EitherFrontEnd(new BasicFrontEnd(realm), new NtlmFrontEnd());
}

/** Basic: the gateway verifies the password itself (Authenticator.verify). */
export class BasicFrontEnd implements AuthFrontEnd {
  readonly challenges: readonly string[];
  constructor(realm: string) {
    this.challenges = [basicChallenge(realm)];
  }

  authenticate(req: FrontEndRequest, ctx: FrontEndContext): Promise<AuthOutcome> {
    return authenticateBasic(ctx.authenticator, req.header, {
      source: clientAddress(req.socket) ?? '',
      groupDns: ctx.policy.groupDns,
      policyVersion: ctx.policy.version,
      connection: req.socket,
    });
  }

  passes(challenge: string): boolean {
    return schemeOf(challenge).scheme === 'basic';
  }

  claimedUser(header: string | undefined, ctx: Pick<FrontEndContext, 'domain'>): string | null {
    const basic = parseBasic(header);
    return basic !== null && basic !== 'malformed' ? parseLogon(basic.user, ctx.domain).display || null : null;
  }
}

/** The Basic front-end's question to the Authenticator: the header parsed, then name and password verified. */
export async function authenticateBasic(
  authenticator: Authenticator,
  header: string | undefined,
  req: { source: string; groupDns: readonly string[]; policyVersion: string; connection?: object },
): Promise<AuthOutcome> {
  const credential = parseBasic(header);
  if (credential === null) {
    const detail = header === undefined ? undefined : foreignScheme(header);
    return { ok: false, reason: 'no-credentials', user: null, cache: null, ...(detail ? { detail } : {}) };
  }
  if (credential === 'malformed')
    return { ok: false, reason: 'bad-credentials', user: null, cache: null, detail: 'malformed Basic header' };
  return authenticator.verify(credential.user, credential.password, {
    ...req,
    ...(header !== undefined ? { proof: header } : {}),
  });
}

/**
 * NTLM: the gateway authorizes the account a Type 3 claims, Exchange authenticates it (ntlm-auth.ts).
 * Taken on the canonical endpoints only: elsewhere IIS may answer before authenticating (request
 * filtering, anonymous pages), and a non-401 answer there would look like Exchange accepted a forged Type 3.
 */
export class NtlmFrontEnd implements AuthFrontEnd {
  readonly challenges: readonly string[] = ['NTLM'];

  authenticate(req: FrontEndRequest, ctx: FrontEndContext): Promise<FrontEndOutcome> {
    const token = readNtlmHeader(req.header);
    if (req.header !== undefined && token === null) {
      return Promise.resolve({
        ok: false,
        reason: 'bad-credentials',
        user: null,
        cache: null,
        detail: 'an Authorization scheme this service does not take',
      });
    }
    if (token !== null && token !== 'malformed' && token.type !== 'kerberos' && !ntlmEndpoint(req)) {
      return Promise.resolve({
        ok: false,
        reason: 'bad-credentials',
        user: null,
        cache: null,
        detail: 'NTLM is taken on the canonical endpoints only',
      });
    }
    return authenticateNtlm(req.socket, token, {
      authenticator: ctx.authenticator,
      upstream: ctx.upstream,
      domain: ctx.domain,
      dnsDomains: ctx.dnsDomains,
      source: clientAddress(req.socket) ?? '',
      groupDns: ctx.policy.groupDns,
      policyVersion: ctx.policy.version,
    });
  }

  /** An NTLM continuation (`NTLM <type 2>`, `Negotiate <token>`); never a bare `Negotiate` or
   * `Kerberos`: Kerberos hides the user from the gateway. */
  passes(challenge: string): boolean {
    const { scheme, hasToken } = schemeOf(challenge);
    return scheme === 'ntlm' || (scheme === 'negotiate' && hasToken);
  }

  claimedUser(header: string | undefined, ctx: Pick<FrontEndContext, 'domain' | 'dnsDomains'>): string | null {
    const ntlm = readNtlmHeader(header);
    if (ntlm === null || ntlm === 'malformed' || ntlm.type !== 3) return null;
    const claim = parseType3(ntlm.message);
    return claim && !claim.anonymous ? logonOf(claim, ctx).display || null : null;
  }
}

/**
 * Basic or NTLM, by the scheme the request uses (`basic+ntlm`). A connection Exchange accepted by
 * NTLM carries on without credentials only when a request has no Authorization at all: any other
 * scheme on it is judged for itself, never waved through as the session's user.
 */
export class EitherFrontEnd implements AuthFrontEnd {
  readonly challenges: readonly string[];
  constructor(
    private readonly basic: BasicFrontEnd,
    private readonly ntlm: NtlmFrontEnd,
  ) {
    this.challenges = [...ntlm.challenges, ...basic.challenges]; // NTLM first: Windows clients prefer it
  }

  authenticate(req: FrontEndRequest, ctx: FrontEndContext): Promise<FrontEndOutcome> {
    return parseBasic(req.header) !== null ? this.basic.authenticate(req, ctx) : this.ntlm.authenticate(req, ctx);
  }

  passes(challenge: string): boolean {
    return this.basic.passes(challenge) || this.ntlm.passes(challenge);
  }

  claimedUser(header: string | undefined, ctx: Pick<FrontEndContext, 'domain' | 'dnsDomains'>): string | null {
    return this.basic.claimedUser(header, ctx) ?? this.ntlm.claimedUser(header, ctx);
  }
}

/** The account an Authorization header names (Basic or NTLM), never verified: for the record of a refusal. */
export function claimedUser(
  header: string | undefined,
  ctx: Pick<FrontEndContext, 'domain' | 'dnsDomains'>,
): string | null {
  return CLAIMS.claimedUser(header, ctx);
}
const CLAIMS = new EitherFrontEnd(new BasicFrontEnd('exgate'), new NtlmFrontEnd());

function schemeOf(value: string): { scheme: string; hasToken: boolean } {
  const space = value.indexOf(' ');
  return {
    scheme: (space < 0 ? value : value.slice(0, space)).toLowerCase(),
    hasToken: space > 0 && value.slice(space + 1).trim() !== '',
  };
}

function ntlmEndpoint(route: { path: string; query: string }): boolean {
  if (route.query.length > 1024) return false;
  return NTLM_PATHS.has(route.path) || OAB_FILE.test(route.path);
}
const NTLM_PATHS: ReadonlySet<string> = new Set([
  '/mapi/emsmdb',
  '/mapi/emsmdb/',
  '/mapi/nspi',
  '/mapi/nspi/',
  '/ews/exchange.asmx',
  '/autodiscover/autodiscover.xml',
]);
const OAB_FILE = /^\/oab\/[0-9a-f-]{36}\/[a-z0-9._-]+$/;

/** Names the scheme of an Authorization header that is not Basic (never its token). */
function foreignScheme(header: string): string {
  // Only a known scheme followed by its token is named: a bare token (a client that left out the
  // scheme) must never reach the log.
  const [scheme = '', token] = header.trim().split(/\s+/, 2);
  const known = KNOWN_SCHEMES.find((k) => k.toLowerCase() === scheme.toLowerCase());
  return known && token ? `${known} credentials; this service takes Basic` : 'credentials in a scheme other than Basic';
}
const KNOWN_SCHEMES = ['NTLM', 'Negotiate', 'Bearer', 'Digest', 'Kerberos'];
