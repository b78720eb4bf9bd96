/**
 * SPNEGO (RFC 4178) as the gateway reads it: the NTLMSSP token inside a `Negotiate` header, in
 * strict DER (X.690 §10). Exactly one reading may exist: a NegTokenResp with two responseTokens
 * once made the gateway authorize the last (alice) while the upstream verified the first (bob).
 */

const SPNEGO_OID = Buffer.from('2b0601050502', 'hex'); // 1.3.6.1.5.5.2
const NTLMSSP_OID = Buffer.from('2b06010401823702020a', 'hex'); // 1.3.6.1.4.1.311.2.2.10

const SEQUENCE = 0x30;
const OID = 0x06;
const OCTET_STRING = 0x04;
const BIT_STRING = 0x03;
const ENUMERATED = 0x0a;
/** GSS-API InitialContextToken, [APPLICATION 0] (RFC 2743 §3.1). */
const GSS_TOKEN = 0x60;
/** NegotiationToken ::= CHOICE { negTokenInit [0], negTokenResp [1] } (RFC 4178 §4.2). */
const NEG_TOKEN_INIT = 0xa0;
const NEG_TOKEN_RESP = 0xa1;
/** [0] .. [3], constructed: the explicit context tags of both sequences. */
const CONTEXT_0 = 0xa0;

/**
 * The one type each field may have, by context tag number; no other tag exists (the extension
 * marker `...` is refused: no client sends extensions). NegTokenInit §4.2.1: mechTypes,
 * reqFlags, mechToken, mechListMIC. NegTokenResp §4.2.2: negState, supportedMech, responseToken,
 * mechListMIC.
 */
const INIT_FIELDS = [SEQUENCE, BIT_STRING, OCTET_STRING, OCTET_STRING] as const;
const RESP_FIELDS = [ENUMERATED, OID, OCTET_STRING, OCTET_STRING] as const;
const MECH_TYPES = 0;
const INIT_TOKEN = 2;
const NEG_STATE = 0;
const SUPPORTED_MECH = 1;
const RESP_TOKEN = 2;

/** The NTLMSSP token; 'other': well-formed, for another mechanism (Kerberos); 'malformed': not strict DER SPNEGO. */
export type SpnegoToken = Buffer | 'other' | 'malformed';

/**
 * The token a SPNEGO message carries for NTLMSSP: a NegTokenInit (in its GSS-API wrapper) whose
 * first mechType is NTLMSSP, its mechToken; a NegTokenResp with no supportedMech or NTLMSSP, its
 * responseToken. Every field at most once, in tag order, with minimal definite lengths, nothing
 * after the outer element.
 */
export function spnegoToken(raw: Buffer): SpnegoToken {
  const outer = element(raw, 0, raw.length);
  if (!outer || outer.end !== raw.length) return 'malformed';
  if (outer.tag === NEG_TOKEN_RESP) return negTokenResp(raw, outer);
  if (outer.tag !== GSS_TOKEN) return 'malformed';
  const mech = element(raw, outer.start, outer.end);
  if (!mech || mech.tag !== OID) return 'malformed';
  // Another GSS mechanism (Kerberos): its inner token is not DER, and not the gateway's business.
  if (!bytes(raw, mech).equals(SPNEGO_OID)) return 'other';
  const init = element(raw, mech.end, outer.end);
  if (!init || init.tag !== NEG_TOKEN_INIT || init.end !== outer.end) return 'malformed';
  return negTokenInit(raw, init);
}

function negTokenInit(raw: Buffer, wrapper: Tlv): SpnegoToken {
  const fields = sequenceFields(raw, wrapper, INIT_FIELDS);
  const mechTypes = fields?.get(MECH_TYPES);
  const mechs = mechTypes ? children(raw, mechTypes) : null;
  if (!fields || !mechs || mechs.length === 0) return 'malformed';
  if (mechs.some((m) => m.tag !== OID || m.end === m.start)) return 'malformed';
  if (!bytes(raw, mechs[0] as Tlv).equals(NTLMSSP_OID)) return 'other';
  const token = fields.get(INIT_TOKEN);
  return token ? bytes(raw, token) : 'malformed';
}

function negTokenResp(raw: Buffer, wrapper: Tlv): SpnegoToken {
  const fields = sequenceFields(raw, wrapper, RESP_FIELDS);
  if (!fields) return 'malformed';
  const state = fields.get(NEG_STATE);
  // ENUMERATED { accept-completed(0), accept-incomplete(1), reject(2), request-mic(3) }
  if (state && (state.end - state.start !== 1 || (raw[state.start] ?? 0xff) > 3)) return 'malformed';
  const mech = fields.get(SUPPORTED_MECH);
  if (mech && !bytes(raw, mech).equals(NTLMSSP_OID)) return 'other';
  const token = fields.get(RESP_TOKEN);
  return token ? bytes(raw, token) : 'malformed';
}

/**
 * The fields of `wrapper`'s one SEQUENCE, by context tag number, each the single element of its
 * explicit tag with the type `types` gives it; null when a tag repeats, comes out of order or is
 * unknown (X.690 §10.3: DER encodes SEQUENCE components in their defined order).
 */
function sequenceFields(raw: Buffer, wrapper: Tlv, types: readonly number[]): Map<number, Tlv> | null {
  const seq = only(raw, wrapper);
  const items = seq?.tag === SEQUENCE ? children(raw, seq) : null;
  if (!items) return null;
  const fields = new Map<number, Tlv>();
  let last = -1;
  for (const item of items) {
    const n = item.tag - CONTEXT_0;
    const inner = only(raw, item);
    if (n <= last || n >= types.length || !inner || inner.tag !== types[n] || !validContent(raw, inner)) return null;
    fields.set(n, inner);
    last = n;
  }
  return fields;
}

/** X.690 §8.6 / §10.2: a BIT STRING names its unused bits (0..7, 0 when empty), and they are zero. */
function validContent(raw: Buffer, el: Tlv): boolean {
  if (el.tag === OID) return el.end > el.start;
  if (el.tag !== BIT_STRING) return true;
  const unused = raw[el.start];
  if (unused === undefined || unused > 7 || (el.end - el.start === 1 && unused !== 0)) return false;
  return ((raw[el.end - 1] ?? 0) & ((1 << unused) - 1)) === 0;
}

interface Tlv {
  readonly tag: number;
  readonly start: number;
  readonly end: number;
}

function bytes(raw: Buffer, el: Tlv): Buffer {
  return raw.subarray(el.start, el.end);
}

/** The elements that fill `parent`'s content exactly, or null. */
function children(raw: Buffer, parent: Tlv): Tlv[] | null {
  const out: Tlv[] = [];
  for (let at = parent.start; at < parent.end; ) {
    const el = element(raw, at, parent.end);
    if (!el) return null;
    out.push(el);
    at = el.end;
  }
  return out;
}

/** The single element that fills `parent`'s content, or null. */
function only(raw: Buffer, parent: Tlv): Tlv | null {
  const items = children(raw, parent);
  return items?.length === 1 ? (items[0] ?? null) : null;
}

/**
 * One DER element at `at`, inside `limit`: a low tag number, a definite length in its shortest
 * form (X.690 §10.1; no indefinite 0x80, no long form below 128, no leading zero byte).
 */
function element(raw: Buffer, at: number, limit: number): Tlv | null {
  if (at + 2 > limit) return null;
  const tag = raw[at] ?? 0;
  const first = raw[at + 1] ?? 0;
  if ((tag & 0x1f) === 0x1f) return null;
  let len = first;
  let start = at + 2;
  if (first & 0x80) {
    const count = first & 0x7f;
    // 2 length bytes cover any token the gateway takes (8 KiB); 0 is the indefinite form.
    if (count === 0 || count > 2 || start + count > limit || raw[start] === 0) return null;
    len = 0;
    for (let i = 0; i < count; i += 1) len = len * 256 + (raw[start + i] ?? 0);
    if (len < 0x80) return null;
    start += count;
  }
  return start + len <= limit ? { tag, start, end: start + len } : null;
}
