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

const SIGNATURE = Buffer.from('NTLMSSP\0', 'latin1');
const NTLMSSP_NEGOTIATE_UNICODE = 0x00000001;
const NTLMSSP_NEGOTIATE_OEM = 0x00000002;
/** Header of an AUTHENTICATE_MESSAGE up to and including NegotiateFlags. */
const TYPE3_HEADER = 64;
/** Longest token accepted (a Type 3 with a full AV_PAIR list is a few hundred bytes). */
const MAX_TOKEN = 8192;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const CONTROL = /[\x00-\x1f\x7f]/;

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
  const at = raw.indexOf(SIGNATURE);
  const name = scheme === 'ntlm' ? 'NTLM' : 'Negotiate';
  if (at < 0) return name === 'Negotiate' ? { scheme: 'Negotiate', type: 'kerberos' } : 'malformed';
  // Raw NTLMSSP for `NTLM`; inside SPNEGO (MS-SPNG) the NTLMSSP token sits at an offset.
  if (name === 'NTLM' && at !== 0) return 'malformed';
  const message = raw.subarray(at);
  if (message.length < 12) return 'malformed';
  const type = message.readUInt32LE(8);
  if (type !== 1 && type !== 2 && type !== 3) return 'malformed';
  return { scheme: name, type, message };
}

/**
 * Parses an AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3) strictly: every field inside the message and
 * after its header, strings of even length in UTF-16, no control characters. null when anything
 * is off: a message the gateway cannot read is never forwarded.
 */
export function parseType3(msg: Buffer): Type3Claim | null {
  if (msg.length < TYPE3_HEADER || !msg.subarray(0, 8).equals(SIGNATURE) || msg.readUInt32LE(8) !== 3) return null;
  const flags = msg.readUInt32LE(60);
  const unicode = (flags & NTLMSSP_NEGOTIATE_UNICODE) !== 0;
  if (!unicode && (flags & NTLMSSP_NEGOTIATE_OEM) === 0) return null;
  const lm = field(msg, 12);
  const nt = field(msg, 20);
  const domain = field(msg, 28);
  const user = field(msg, 36);
  const workstation = field(msg, 44);
  const sessionKey = field(msg, 52);
  if (!lm || !nt || !domain || !user || !workstation || !sessionKey) return null;
  const text = (b: Buffer): string | null => {
    if (unicode && b.length % 2 !== 0) return null;
    const s = b.toString(unicode ? 'utf16le' : 'latin1');
    return CONTROL.test(s) ? null : s;
  };
  const d = text(domain);
  const u = text(user);
  const w = text(workstation);
  if (d === null || u === null || w === null) return null;
  return {
    domain: d, user: u, workstation: w,
    anonymous: u === '' && nt.length === 0,
    responseDigest: nt.subarray(0, 16),
  };
}

/** One security buffer (Len u16, MaxLen u16, Offset u32): inside the message, after the header. */
function field(msg: Buffer, at: number): Buffer | null {
  const len = msg.readUInt16LE(at);
  const offset = msg.readUInt32LE(at + 4);
  if (len === 0) return Buffer.alloc(0);
  if (offset < TYPE3_HEADER || offset + len > msg.length) return null;
  return msg.subarray(offset, offset + len);
}
