/**
 * Pure parsing of what a client presents: the Basic `Authorization` header (RFC 7617) and the
 * logon name inside it (`LAB\alice`, `alice@lab.test`, `alice`). No I/O; authenticate.ts uses it.
 */

/** A Basic credential exactly as the client sent it: neither name nor password is trimmed or
 * normalized, so the gateway judges the very string Exchange will receive. */
export interface BasicCredential {
  readonly user: string;
  readonly password: string;
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Parses `Authorization: Basic …`. Returns null when the header is absent or not Basic, and
 * 'malformed' when it claims Basic but is not `base64(user ":" password)`.
 * The user-id may not contain a colon, so the split is at the first colon (RFC 7617 §2); the
 * password may contain more. Text is UTF-8, else windows-1252 (what older clients send).
 */
export function parseBasic(header: string | undefined): BasicCredential | 'malformed' | null {
  if (header === undefined) return null;
  const space = header.indexOf(' ');
  if (space < 0 || header.slice(0, space).toLowerCase() !== 'basic') return null;
  const token = header.slice(space + 1).trim();
  if (!BASE64.test(token) || token.length % 4 !== 0) return 'malformed';
  const raw = Buffer.from(token, 'base64');
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    text = decodeCp1252(raw);
  }
  const colon = text.indexOf(':');
  if (colon < 0) return 'malformed';
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

// Node ≥ 20.18.3 decodes windows-1252 0x80–0x9F as C1 controls (nodejs/node#60888, #56542),
// so the upper half's odd block is spelled out here.
const CP1252_80_9F =
  '\u20ac\u0081\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u008d\u017d\u008f' +
  '\u0090\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u009d\u017e\u0178';

/** Decodes windows-1252 bytes (latin1 except 0x80–0x9F). */
export function decodeCp1252(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) out += b >= 0x80 && b <= 0x9f ? CP1252_80_9F[b - 0x80] : String.fromCharCode(b);
  return out;
}

/** The domain a gateway accepts logons for: `directory.netbiosDomain` and `directory.upnSuffixes`. */
export interface LogonDomain {
  readonly netbios: string;
  readonly upnSuffixes: readonly string[];
}

/**
 * A logon name, understood. `sam` and `upn` can be looked up; `refused` cannot (another domain,
 * a UPN suffix not ours, characters no account name has) and is answered as a wrong password.
 * `display` is what the access log shows before the directory has named the account.
 */
export type Logon =
  | { readonly kind: 'sam'; readonly sam: string; readonly display: string }
  | { readonly kind: 'upn'; readonly upn: string; readonly display: string }
  | { readonly kind: 'refused'; readonly display: string; readonly why: string };

/** Longest logon name considered at all; AD's sAMAccountName is at most 20, UPNs 1024 in theory. */
const MAX_NAME = 256;
// Characters AD never allows in sAMAccountName (MS-ADTS 3.1.1.5.2.6), plus controls.
const SAM_FORBIDDEN = /["/\\[\]:;|=,+*?<>@\x00-\x1f\x7f]/;
const UPN_FORBIDDEN = /[\\"()*\x00-\x1f\x7f\s]/;

/**
 * Reads `DOMAIN\user`, `user@suffix` or a bare `user` (which means `DOMAIN\user`, as with the IIS
 * Basic "default domain"). Only the configured NetBIOS name and UPN suffixes are accepted.
 */
export function parseLogon(name: string, domain: LogonDomain): Logon {
  const display = name.length > MAX_NAME ? name.slice(0, MAX_NAME) + '…' : name;
  if (name.length === 0 || name.length > MAX_NAME) return refused(display, 'empty or overlong name');
  if (name !== name.trim()) return refused(display, 'leading or trailing space'); // AD would ignore it
  const backslash = name.indexOf('\\');
  if (backslash >= 0) {
    const netbios = name.slice(0, backslash);
    if (netbios.toUpperCase() !== domain.netbios.toUpperCase()) return refused(display, 'not our domain');
    return samLogon(name.slice(backslash + 1), domain, display);
  }
  const at = name.lastIndexOf('@');
  if (at >= 0) {
    const suffix = name.slice(at + 1).toLowerCase();
    if (!domain.upnSuffixes.some((s) => s.toLowerCase() === suffix)) return refused(display, 'not our UPN suffix');
    if (at === 0 || UPN_FORBIDDEN.test(name)) return refused(display, 'not a UPN');
    return { kind: 'upn', upn: name, display };
  }
  return samLogon(name, domain, display);
}

function samLogon(sam: string, domain: LogonDomain, display: string): Logon {
  if (sam.length === 0 || SAM_FORBIDDEN.test(sam)) return refused(display, 'not an account name');
  return { kind: 'sam', sam, display: `${domain.netbios.toUpperCase()}\\${sam.toLowerCase()}` };
}

function refused(display: string, why: string): Logon {
  return { kind: 'refused', display, why };
}
