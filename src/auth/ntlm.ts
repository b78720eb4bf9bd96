/**
 * NTLM, as far as the gateway needs it: read the token in an `Authorization: NTLM|Negotiate`
 * header, and parse an AUTHENTICATE_MESSAGE (Type 3) strictly for the domain and user it claims
 * (MS-NLMP 2.2.1.3). The gateway never verifies NTLM itself: Exchange passes the Type 3 to a DC,
 * which checks exactly the account the message names, so the gateway may authorize that claimed
 * name by group before forwarding it, and trust the connection only after Exchange accepted it
 * (research/node-proxy.md §3.4).
 *
 * Kerberos (Negotiate without NTLMSSP inside) hides the user from the gateway: it is refused.
 */

import { spnegoToken } from './spnego.js';

const SIGNATURE = Buffer.from('NTLMSSP\0', 'latin1');
const NTLMSSP_NEGOTIATE_UNICODE = 0x00000001;
const NTLMSSP_NEGOTIATE_OEM = 0x00000002;
/** Header of an AUTHENTICATE_MESSAGE up to and including NegotiateFlags. */
const TYPE3_HEADER = 64;
/** Offsets of the six security buffers: LM and NT responses, domain, user, workstation, session key. */
const FIELD_AT = [12, 20, 28, 36, 44, 52] as const;
/** Longest token accepted (a Type 3 with a full AV_PAIR list is a few hundred bytes). */
const MAX_TOKEN = 8192;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;
/** A UTF-16 surrogate that is not half of a pair. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** What an NTLM/Negotiate Authorization header carries. */
export type NtlmToken =
  | { readonly scheme: 'NTLM' | 'Negotiate'; readonly type: 1 | 2 | 3; readonly message: Buffer }
  | { readonly scheme: 'Negotiate'; readonly type: 'kerberos' };

/** The identity an AUTHENTICATE_MESSAGE claims. */
export interface Type3Claim {
  readonly domain: string;
  readonly user: string;
  readonly workstation: string;
  /** No user name and no NT response: an anonymous logon. */
  readonly anonymous: boolean;
  /** A short fingerprint of this very message's response (lockout counts attempts by it). */
  readonly responseDigest: Buffer;
  /** Names are UTF-16 (NTLMSSP_NEGOTIATE_UNICODE); OEM names depend on the DC's code page. */
  readonly unicode: boolean;
}

/**
 * Reads `Authorization: NTLM <b64>` or `Negotiate <b64>`. null: not one of these schemes;
 * 'malformed': one of them, but not a well-formed NTLMSSP or SPNEGO token.
 */
export function readNtlmHeader(header: string | undefined): NtlmToken | 'malformed' | null {
  if (header === undefined) return null;
  const space = header.indexOf(' ');
  const scheme = (space < 0 ? header : header.slice(0, space)).toLowerCase();
  if (scheme !== 'ntlm' && scheme !== 'negotiate') return null;
  const b64 = space < 0 ? '' : header.slice(space + 1).trim();
  if (!BASE64.test(b64) || b64.length % 4 !== 0 || b64.length > (MAX_TOKEN * 4) / 3 + 4) return 'malformed';
  const raw = Buffer.from(b64, 'base64');
  if (raw.toString('base64') !== b64) return 'malformed'; // non-zero padding bits: one string, one reading
  const name = scheme === 'ntlm' ? 'NTLM' : 'Negotiate';
  let message: Buffer;
  if (raw.subarray(0, 8).equals(SIGNATURE)) {
    message = raw; // raw NTLMSSP, under either scheme
  } else if (name === 'NTLM') {
    return 'malformed';
  } else {
    // SPNEGO (RFC 4178): only the token it carries for NTLMSSP counts, never NTLMSSP found elsewhere.
    const inner = spnegoToken(raw);
    if (inner === 'malformed') return 'malformed';
    if (inner === 'other') return raw.includes(SIGNATURE) ? 'malformed' : { scheme: 'Negotiate', type: 'kerberos' };
    if (!inner.subarray(0, 8).equals(SIGNATURE)) return 'malformed';
    message = inner;
  }
  if (message.length < 12) return 'malformed';
  const type = message.readUInt32LE(8);
  if (type !== 1 && type !== 2 && type !== 3) return 'malformed';
  return { scheme: name, type, message };
}

/**
 * Parses an AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3) strictly: every field inside the message and
 * after its header, no two fields sharing bytes, strings of even length in UTF-16, no control
 * characters. null when anything is off: a message the gateway cannot read is never forwarded.
 */
export function parseType3(msg: Buffer): Type3Claim | null {
  if (msg.length < TYPE3_HEADER || !msg.subarray(0, 8).equals(SIGNATURE) || msg.readUInt32LE(8) !== 3) return null;
  const flags = msg.readUInt32LE(60);
  const unicode = (flags & NTLMSSP_NEGOTIATE_UNICODE) !== 0;
  if (!unicode && (flags & NTLMSSP_NEGOTIATE_OEM) === 0) return null;
  const spans = FIELD_AT.map((at) => span(msg, at));
  if (!spans.every((f): f is Span => f !== null) || overlapping(spans)) return null;
  const [lm, nt, domain, user, workstation] = spans.map((f) => msg.subarray(f.start, f.end)) as [
    Buffer,
    Buffer,
    Buffer,
    Buffer,
    Buffer,
  ];
  // The response the DC will check: the NT response, else (LMv2 alone verifies, MS-NLMP 3.2.5.1.2) the LM one.
  const proof = nt.length >= 16 ? nt : lm.length >= 16 ? lm : null;
  const text = (b: Buffer): string | null => {
    if (unicode && b.length % 2 !== 0) return null;
    const s = b.toString(unicode ? 'utf16le' : 'latin1');
    return CONTROL.test(s) || LONE_SURROGATE.test(s) ? null : s;
  };
  const d = text(domain);
  const u = text(user);
  const w = text(workstation);
  if (d === null || u === null || w === null) return null;
  const anonymous = u === '' && nt.length === 0;
  if (!anonymous && proof === null) return null; // a named logon with nothing to verify
  return {
    domain: d,
    user: u,
    workstation: w,
    anonymous,
    unicode,
    responseDigest: Buffer.from(proof ? proof.subarray(0, 16) : Buffer.alloc(0)),
  };
}

interface Span {
  readonly start: number;
  readonly end: number;
}

/**
 * One security buffer (Len u16, MaxLen u16, Offset u32): inside the message, after the header.
 * MaxLen "MUST be ignored on receipt" (MS-NLMP 2.2.1.3), as Windows does, so it is not checked.
 */
function span(msg: Buffer, at: number): Span | null {
  const len = msg.readUInt16LE(at);
  const offset = msg.readUInt32LE(at + 4);
  if (len === 0) return { start: 0, end: 0 };
  if (offset < TYPE3_HEADER || offset + len > msg.length) return null;
  return { start: offset, end: offset + len };
}

/**
 * Two non-empty buffers sharing bytes: no client writes that (curl, Windows and the NTLM engines
 * lay the payload out one field after another), and it lets a name double as a response, or two
 * parsers of one message disagree on where each field is.
 */
function overlapping(spans: readonly Span[]): boolean {
  const used = spans.filter((f) => f.end > f.start).sort((a, b) => a.start - b.start);
  return used.some((f, i) => i > 0 && f.start < (used[i - 1] as Span).end);
}
