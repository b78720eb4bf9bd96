/**
 * NTLM clients (services with `auth: ntlm` or `basic+ntlm`): the gateway authorizes, Exchange
 * authenticates (research/node-proxy.md §3.2):
 *
 * - no credentials on a connection Exchange has not accepted → a local 401 (`NTLM`), so
 *   unauthenticated traffic never reaches Exchange;
 * - a Type 1 (negotiate) → forwarded to get Exchange's challenge on the pinned connection;
 * - a token that is not strict NTLMSSP or SPNEGO → 400 `bad-request`, never forwarded;
 * - a Type 3 → parsed strictly; anonymous, foreign domains, unknown accounts, unusable accounts
 *   and gateway lockouts are refused locally; then the claimed account's groups are checked
 *   *before* forwarding (a non-member gets 403 and Exchange never sees the message);
 * - the connection counts as authenticated only once Exchange answers the Type 3 with something
 *   other than 401; later requests on it without credentials run as that account (as IIS does),
 *   with its groups re-read every groupTtlSeconds;
 * - Kerberos (Negotiate without NTLMSSP) hides the user: refused, NTLM is offered instead.
 */
import type { Socket } from 'node:net';
import type { AuthOutcome, Authenticator, CacheUse, Identity } from './authenticate.js';
import { parseLogon, type Logon, type LogonDomain } from './credentials.js';
import { parseType3, type NtlmToken, type Type3Claim } from './ntlm.js';
import type { Upstream } from '../upstream/upstream.js';

/** What one NTLM step allows: forward with an identity, forward a handshake leg, or refuse. */
export type NtlmOutcome =
  | {
      readonly ok: true;
      readonly identity: Identity;
      readonly cache: CacheUse;
      readonly onStatus?: (status: number | null) => void;
    }
  | { readonly ok: true; readonly identity: null; readonly cache: null; readonly detail: string }
  | Extract<AuthOutcome, { ok: false }>
  | Malformed;

/** A token that is not strict NTLMSSP/SPNEGO: 400, never forwarded (INTERFACE.md: malformed request). */
type Malformed = {
  readonly ok: false;
  readonly reason: 'bad-request';
  readonly user: null;
  readonly cache: null;
  readonly detail: string;
  readonly status?: number;
};

export interface NtlmContext {
  readonly authenticator: Authenticator;
  readonly upstream: Upstream;
  readonly domain: LogonDomain;
  /** DNS names of the domain a Type 3 may carry instead of the NetBIOS name. */
  readonly dnsDomains: ReadonlySet<string>;
  readonly source: string;
  readonly groupDns: readonly string[];
  readonly policyVersion: string;
}

/** One NTLM step on a client connection. `token` is the parsed Authorization header. */
export async function authenticateNtlm(
  socket: Socket,
  token: NtlmToken | 'malformed' | null,
  ctx: NtlmContext,
): Promise<NtlmOutcome> {
  const request = { source: ctx.source, groupDns: ctx.groupDns, policyVersion: ctx.policyVersion };
  if (token === null) {
    // no Authorization at all (gateway.ts sees to that)
    const account = ctx.upstream.session(socket);
    if (!account) return refuse('no-credentials', null, null);
    return ctx.authenticator.refresh(account, request);
  }
  if (token === 'malformed') return malformed('malformed NTLM or Negotiate token (not strict NTLMSSP or SPNEGO DER)');
  if (token.type === 'kerberos')
    return refuse('no-credentials', null, 'Kerberos hides the user from the gateway; NTLM is offered instead');
  if (token.type === 2) return refuse('bad-credentials', null, 'an NTLM challenge sent by the client');
  if (token.type === 1) {
    if (ctx.authenticator.lockout.check(null, ctx.source) === 'source-blocked') {
      return { ...refuse('gateway-lockout', null, 'source address failed for too many accounts'), status: 429 };
    }
    ctx.upstream.setSession(socket, null); // a new handshake: whoever was signed in here is not any more
    return { ok: true, identity: null, cache: null, detail: 'NTLM negotiate (Type 1) forwarded for the challenge' };
  }
  const claim = parseType3(token.message);
  if (!claim) return malformed('malformed NTLM authenticate message');
  if (!claim.unicode) return refuse('bad-credentials', null, 'NTLM without Unicode names');
  if (claim.anonymous) return refuse('bad-credentials', null, 'anonymous NTLM logon');
  const outcome = await ctx.authenticator.claim({
    ...request,
    logon: logonOf(claim, ctx),
    fingerprint: claim.responseDigest.toString('hex'),
  });
  if (!outcome.ok) return outcome;
  ctx.upstream.setSession(socket, null);
  return {
    ok: true,
    identity: outcome.identity,
    cache: outcome.cache,
    // null: never forwarded (refused by policy, client gone first). Forwarded, only a 2xx is
    // Exchange accepting the Type 3: IIS answers 404s, redirects and anonymous pages before
    // authenticating, and a client that leaves before the verdict counts as a failure.
    onStatus: (status) => {
      const accepted = status === null ? null : status >= 200 && status < 300;
      outcome.settle(accepted);
      if (accepted) ctx.upstream.setSession(socket, outcome.identity);
    },
  };
}

/**
 * The logon a Type 3 names: `DOMAIN\user` for our NetBIOS name or the domain's DNS name, or a
 * UPN with an empty domain. A bare user with no domain is refused: Windows may resolve it
 * against local accounts first.
 */
export function logonOf(claim: Type3Claim, ctx: Pick<NtlmContext, 'domain' | 'dnsDomains'>): Logon {
  const domain = claim.domain.toLowerCase();
  if (domain === '') {
    return claim.user.includes('@')
      ? parseLogon(claim.user, ctx.domain)
      : { kind: 'refused', display: claim.user, why: 'NTLM user without a domain' };
  }
  if (domain === ctx.domain.netbios.toLowerCase() || ctx.dnsDomains.has(domain)) {
    return parseLogon(`${ctx.domain.netbios}\\${claim.user}`, ctx.domain);
  }
  return { kind: 'refused', display: `${claim.domain}\\${claim.user}`, why: 'not our domain' };
}

function refuse(
  reason: Extract<AuthOutcome, { ok: false }>['reason'],
  user: string | null,
  detail: string | null,
): Extract<AuthOutcome, { ok: false }> {
  return detail === null ? { ok: false, reason, user, cache: null } : { ok: false, reason, user, cache: null, detail };
}

function malformed(detail: string): Malformed {
  return { ok: false, reason: 'bad-request', user: null, cache: null, detail };
}
