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
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;
/** A UTF-16 surrogate that is not half of a pair. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const SPNEGO_OID = Buffer.from('2b0601050502', 'hex');
const NTLMSSP_OID = Buffer.from('2b06010401823702020a', 'hex');

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
  const name = scheme === 'ntlm' ? 'NTLM' : 'Negotiate';
  let message: Buffer;
  if (raw.subarray(0, 8).equals(SIGNATURE)) {
    message = raw; // raw NTLMSSP, under either scheme
  } else if (name === 'NTLM') {
    return 'malformed';
  } else {
    // SPNEGO (RFC 4178): only the token it carries for NTLMSSP counts, never NTLMSSP found elsewhere.
    const inner = spnegoNtlmToken(raw);
    if (inner === null) return raw.includes(SIGNATURE) ? 'malformed' : { scheme: 'Negotiate', type: 'kerberos' };
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
    domain: d, user: u, workstation: w, anonymous, unicode,
    responseDigest: Buffer.from(proof ? proof.subarray(0, 16) : Buffer.alloc(0)),
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

/**
 * The NTLMSSP token a SPNEGO message carries, or null when it carries none: a NegTokenInit
 * ([APPLICATION 0] { SPNEGO OID, [0] NegTokenInit }) whose first mechType is NTLMSSP, its
 * mechToken; a NegTokenResp ([1] NegTokenResp) with no supportedMech or NTLMSSP as supportedMech,
 * its responseToken. Strict DER: definite lengths, every element inside its parent, nothing after
 * the outer element.
 */
function spnegoNtlmToken(raw: Buffer): Buffer | null {
  const outer = tlv(raw, 0);
  if (!outer || outer.end !== raw.length) return null;
  let seq: Tlv | null;
  let wantMechTypes: boolean;
  if (outer.tag === 0x60) {
    const oid = tlv(raw, outer.start);
    if (!oid || oid.tag !== 0x06 || !raw.subarray(oid.start, oid.end).equals(SPNEGO_OID)) return null;
    const init = tlv(raw, oid.end);
    if (!init || init.tag !== 0xa0 || init.end !== outer.end) return null;
    seq = tlv(raw, init.start);
    wantMechTypes = true;
  } else if (outer.tag === 0xa1) {
    seq = tlv(raw, outer.start);
    wantMechTypes = false;
  } else {
    return null;
  }
  if (!seq || seq.tag !== 0x30) return null;
  let token: Buffer | null = null;
  let ntlmFirst = !wantMechTypes;
  for (let at = seq.start; at < seq.end; ) {
    const field = tlv(raw, at);
    if (!field || field.end > seq.end) return null;
    const inner = tlv(raw, field.start);
    if (!inner || inner.end !== field.end) return null;
    if (wantMechTypes && field.tag === 0xa0) {
      if (inner.tag !== 0x30) return null;
      const first = tlv(raw, inner.start);
      ntlmFirst = first !== null && first.tag === 0x06 && raw.subarray(first.start, first.end).equals(NTLMSSP_OID);
    } else if (!wantMechTypes && field.tag === 0xa1) {
      if (inner.tag !== 0x06 || !raw.subarray(inner.start, inner.end).equals(NTLMSSP_OID)) return null;
    } else if (field.tag === 0xa2) {
      if (inner.tag !== 0x04) return null;
      token = raw.subarray(inner.start, inner.end);
    }
    at = field.end;
  }
  return ntlmFirst ? token : null;
}

interface Tlv {
  readonly tag: number;
  readonly start: number;
  readonly end: number;
}

/** One DER element at `at`: tag, content start and end; null when it runs past the buffer. */
function tlv(buf: Buffer, at: number): Tlv | null {
  if (at + 2 > buf.length) return null;
  const tag = buf[at] ?? 0;
  let len = buf[at + 1] ?? 0;
  let start = at + 2;
  if (len & 0x80) {
    const bytes = len & 0x7f;
    if (bytes === 0 || bytes > 3 || start + bytes > buf.length) return null;
    len = 0;
    for (let i = 0; i < bytes; i += 1) len = len * 256 + (buf[start + i] ?? 0);
    start += bytes;
  }
  return start + len <= buf.length ? { tag, start, end: start + len } : null;
}
