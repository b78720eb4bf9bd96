/**
 * The server side of NTLM for the Exchange stand-in (./exchange.ts): read the Authorization token,
 * build a CHALLENGE_MESSAGE (Type 2), and verify an AUTHENTICATE_MESSAGE (Type 3) with NTLMv2 as a
 * domain controller would (MS-NLMP 3.2.5.1.2 and 3.3.2), against passwords the stand-in was given.
 *
 * This is test equipment, not a security component: it exists so that tests can prove a gateway
 * carries a real NTLM handshake intact (same TCP connection, unmodified messages) with a real
 * client such as `curl --ntlm`. It accepts NTLMv2 only (no NTLMv1, no LM-only), checks the MIC when
 * the client announces one, and ignores what a real server also enforces and a test does not need:
 * the timestamp window, channel bindings (Extended Protection) and the target name.
 *
 * MD4 is written out here because Node 20's OpenSSL 3 has it only in the legacy provider.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const NTLMSSP_SIGNATURE = Buffer.from('NTLMSSP\0', 'latin1');

/** NegotiateFlags bits (MS-NLMP 2.2.2.5) the stand-in reads or sets. */
export const NtlmFlag = {
  UNICODE: 0x00000001,
  OEM: 0x00000002,
  REQUEST_TARGET: 0x00000004,
  SIGN: 0x00000010,
  SEAL: 0x00000020,
  NTLM: 0x00000200,
  ALWAYS_SIGN: 0x00008000,
  TARGET_TYPE_DOMAIN: 0x00010000,
  EXTENDED_SESSIONSECURITY: 0x00080000,
  TARGET_INFO: 0x00800000,
  VERSION: 0x02000000,
  N128: 0x20000000,
  KEY_EXCH: 0x40000000,
  N56: 0x80000000,
} as const;

/** AV_PAIR ids (MS-NLMP 2.2.2.1). */
export const AvId = {
  EOL: 0,
  NB_COMPUTER_NAME: 1,
  NB_DOMAIN_NAME: 2,
  DNS_COMPUTER_NAME: 3,
  DNS_DOMAIN_NAME: 4,
  FLAGS: 6,
  TIMESTAMP: 7,
} as const;

/** MsvAvFlags bit: "the client is providing a message integrity code in the MIC field". */
const AV_FLAG_MIC_PRESENT = 0x00000002;
const TYPE2_HEADER = 56; // through Version
const TYPE3_HEADER = 64; // through NegotiateFlags
const MIC_OFFSET = 72; // after the 8-byte Version
const MIC_END = MIC_OFFSET + 16;
/** NTProofStr (16) + the fixed part of the NTLMv2_CLIENT_CHALLENGE (28) + at least MsvAvEOL (4). */
const MIN_NTLMV2_RESPONSE = 16 + 28 + 4;
/** Windows 10 / Server 2019 (10.0.17763), NTLMSSP_REVISION_W2K3 (MS-NLMP 2.2.2.10). */
const VERSION = Buffer.from([10, 0, 0x63, 0x45, 0, 0, 0, 15]);
/** 100-ns intervals between 1601-01-01 and 1970-01-01 (FILETIME epoch). */
const FILETIME_UNIX_EPOCH = 116_444_736_000_000_000n;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

// ---------------------------------------------------------------------------------------------
// Hashes

/** MD4 (RFC 1320). */
export function md4(data: Uint8Array): Buffer {
  const bitLength = data.length * 8;
  const padded = Buffer.alloc((((data.length + 8) >> 6) + 1) * 64);
  padded.set(data);
  padded[data.length] = 0x80;
  padded.writeUInt32LE(bitLength >>> 0, padded.length - 8);
  padded.writeUInt32LE(Math.floor(bitLength / 2 ** 32) >>> 0, padded.length - 4);

  let a = 0x67452301;
  let b = 0xefcdab89;
  let c = 0x98badcfe;
  let d = 0x10325476;
  const x = new Uint32Array(16);
  const rotl = (v: number, s: number): number => (v << s) | (v >>> (32 - s));
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i += 1) x[i] = padded.readUInt32LE(block + i * 4);
    const [aa, bb, cc, dd] = [a, b, c, d];
    const word = (i: number): number => x[i] ?? 0;
    // Round 1: F(x,y,z) = xy v not(x)z, shifts 3 7 11 19
    for (const i of [0, 4, 8, 12]) {
      a = rotl((a + ((b & c) | (~b & d)) + word(i)) | 0, 3);
      d = rotl((d + ((a & b) | (~a & c)) + word(i + 1)) | 0, 7);
      c = rotl((c + ((d & a) | (~d & b)) + word(i + 2)) | 0, 11);
      b = rotl((b + ((c & d) | (~c & a)) + word(i + 3)) | 0, 19);
    }
    // Round 2: G(x,y,z) = xy v xz v yz, + 0x5A827999, shifts 3 5 9 13
    for (const i of [0, 1, 2, 3]) {
      a = rotl((a + ((b & c) | (b & d) | (c & d)) + word(i) + 0x5a827999) | 0, 3);
      d = rotl((d + ((a & b) | (a & c) | (b & c)) + word(i + 4) + 0x5a827999) | 0, 5);
      c = rotl((c + ((d & a) | (d & b) | (a & b)) + word(i + 8) + 0x5a827999) | 0, 9);
      b = rotl((b + ((c & d) | (c & a) | (d & a)) + word(i + 12) + 0x5a827999) | 0, 13);
    }
    // Round 3: H(x,y,z) = x xor y xor z, + 0x6ED9EBA1, shifts 3 9 11 15
    for (const i of [0, 2, 1, 3]) {
      a = rotl((a + (b ^ c ^ d) + word(i) + 0x6ed9eba1) | 0, 3);
      d = rotl((d + (a ^ b ^ c) + word(i + 8) + 0x6ed9eba1) | 0, 9);
      c = rotl((c + (d ^ a ^ b) + word(i + 4) + 0x6ed9eba1) | 0, 11);
      b = rotl((b + (c ^ d ^ a) + word(i + 12) + 0x6ed9eba1) | 0, 15);
    }
    a = (a + aa) | 0;
    b = (b + bb) | 0;
    c = (c + cc) | 0;
    d = (d + dd) | 0;
  }
  const out = Buffer.alloc(16);
  [a, b, c, d].forEach((v, i) => out.writeInt32LE(v, i * 4));
  return out;
}

export function hmacMd5(key: Uint8Array, ...parts: Uint8Array[]): Buffer {
  const mac = createHmac('md5', key);
  for (const part of parts) mac.update(part);
  return mac.digest();
}

/** RC4 (for KEY_EXCH: the client's EncryptedRandomSessionKey), MS-NLMP 6 "RC4K". */
export function rc4(key: Uint8Array, data: Uint8Array): Buffer {
  const s = Uint8Array.from({ length: 256 }, (_, i) => i);
  let j = 0;
  for (let i = 0; i < 256; i += 1) {
    j = (j + (s[i] ?? 0) + (key[i % key.length] ?? 0)) & 0xff;
    [s[i], s[j]] = [s[j] ?? 0, s[i] ?? 0];
  }
  const out = Buffer.alloc(data.length);
  let i = 0;
  j = 0;
  for (let n = 0; n < data.length; n += 1) {
    i = (i + 1) & 0xff;
    j = (j + (s[i] ?? 0)) & 0xff;
    [s[i], s[j]] = [s[j] ?? 0, s[i] ?? 0];
    out[n] = (data[n] ?? 0) ^ (s[((s[i] ?? 0) + (s[j] ?? 0)) & 0xff] ?? 0);
  }
  return out;
}

/**
 * Upper-cases one UTF-16 code unit at a time, as Windows' RtlUpcaseUnicodeString does: a character
 * whose upper case is longer (German ß → SS) stays as it is, so the length never changes.
 */
export function upcase(text: string): string {
  let out = '';
  for (const ch of text) {
    const upper = ch.toUpperCase();
    out += upper.length === ch.length ? upper : ch;
  }
  return out;
}

/** NTOWFv2 (MS-NLMP 3.3.2): HMAC_MD5(MD4(UNICODE(password)), UNICODE(Uppercase(user) + domain)). */
export function ntowfV2(password: string, user: string, domain: string): Buffer {
  return hmacMd5(md4(Buffer.from(password, 'utf16le')), Buffer.from(upcase(user) + domain, 'utf16le'));
}

// ---------------------------------------------------------------------------------------------
// Messages

/** An NTLMSSP message carried in `Authorization: NTLM <b64>` or `Negotiate <b64>`. */
export interface NtlmAuthorization {
  readonly scheme: 'NTLM' | 'Negotiate';
  /** MessageType: 1 NEGOTIATE, 2 CHALLENGE, 3 AUTHENTICATE (others are passed on as they are). */
  readonly type: number;
  readonly message: Buffer;
}

/**
 * readNtlmAuthorization reads an `NTLM` or `Negotiate` Authorization header whose token is a raw
 * NTLMSSP message (what curl sends under `NTLM`, and what Windows HTTP clients commonly send under
 * `Negotiate` when Kerberos is not available), or SPNEGO-wrapped NTLMSSP read leniently: the first
 * mechToken/responseToken counts, as a lax upstream might (the gateway must refuse what it cannot
 * read the same way). null: another scheme. 'other': what the stand-in cannot use (bad base64, Kerberos).
 */
export function readNtlmAuthorization(header: string | undefined): NtlmAuthorization | 'other' | null {
  const match = /^(ntlm|negotiate)(?:[ \t]+(\S*))?[ \t]*$/i.exec(header ?? '');
  if (!match) return null;
  const scheme = match[1]?.toLowerCase() === 'ntlm' ? 'NTLM' : 'Negotiate';
  const token = match[2] ?? '';
  if (!BASE64.test(token) || token.length % 4 !== 0) return 'other';
  const raw = Buffer.from(token, 'base64');
  const wrapped = scheme === 'Negotiate' && !raw.subarray(0, 8).equals(NTLMSSP_SIGNATURE);
  const message = wrapped ? (firstSpnegoToken(raw) ?? raw) : raw;
  if (message.length < 12 || !message.subarray(0, 8).equals(NTLMSSP_SIGNATURE)) return 'other';
  return { scheme, type: message.readUInt32LE(8), message };
}

/** Lenient SPNEGO (RFC 4178): the first [2] OCTET STRING of a NegTokenInit or NegTokenResp, later ones ignored. */
function firstSpnegoToken(raw: Buffer): Buffer | null {
  const tlv = (at: number): { tag: number; start: number; end: number } | null => {
    let len = raw[at + 1] ?? 0;
    let start = at + 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      len = 0;
      for (let i = 0; i < n; i += 1) len = len * 256 + (raw[start + i] ?? 0);
      start += n;
    }
    return start + len <= raw.length ? { tag: raw[at] ?? 0, start, end: start + len } : null;
  };
  let outer = tlv(0);
  if (outer?.tag === 0x60) {
    const oid = tlv(outer.start);
    outer = oid ? tlv(oid.end) : null;
  }
  const seq = outer ? tlv(outer.start) : null;
  for (let at = seq?.start ?? raw.length; seq && at < seq.end; ) {
    const field = tlv(at);
    if (!field) return null;
    const inner = tlv(field.start);
    if (field.tag === 0xa2 && inner?.tag === 0x04) return raw.subarray(inner.start, inner.end);
    at = field.end;
  }
  return null;
}

/** The NegotiateFlags of a NEGOTIATE_MESSAGE (MS-NLMP 2.2.1.1), or null when it is too short. */
export function type1Flags(message: Buffer): number | null {
  return message.length >= 16 && message.readUInt32LE(8) === 1 ? message.readUInt32LE(12) : null;
}

export interface ChallengeSpec {
  /** The 8-byte ServerChallenge. */
  readonly challenge: Buffer;
  /** NegotiateFlags of the client's Type 1 (some of them are echoed). */
  readonly clientFlags: number;
  /** NetBIOS domain name (TargetName, MsvAvNbDomainName). */
  readonly domain: string;
  /** NetBIOS computer name (MsvAvNbComputerName). */
  readonly computer: string;
  /** DNS domain name (MsvAvDnsDomainName); the DNS computer name is `computer.dnsDomain`. */
  readonly dnsDomain: string;
  /** MsvAvTimestamp. Default: now. */
  readonly now?: Date;
}

/** The flags a CHALLENGE_MESSAGE answers a client's NegotiateFlags with. */
export function challengeFlags(clientFlags: number): number {
  const echoed = clientFlags & (NtlmFlag.SIGN | NtlmFlag.SEAL | NtlmFlag.N128 | NtlmFlag.KEY_EXCH | NtlmFlag.N56);
  return (
    (NtlmFlag.UNICODE |
      NtlmFlag.REQUEST_TARGET |
      NtlmFlag.NTLM |
      NtlmFlag.ALWAYS_SIGN |
      NtlmFlag.TARGET_TYPE_DOMAIN |
      NtlmFlag.EXTENDED_SESSIONSECURITY |
      NtlmFlag.TARGET_INFO |
      NtlmFlag.VERSION |
      echoed) >>>
    0
  );
}

/**
 * buildType2 builds a CHALLENGE_MESSAGE (MS-NLMP 2.2.1.2): UNICODE, with the NetBIOS domain as
 * TargetName and a TargetInfo of MsvAvNbDomainName, MsvAvNbComputerName, MsvAvDnsDomainName,
 * MsvAvDnsComputerName, MsvAvTimestamp and MsvAvEOL.
 */
export function buildType2(spec: ChallengeSpec): Buffer {
  if (spec.challenge.length !== 8) throw new Error('the NTLM server challenge must be 8 bytes');
  const utf16 = (text: string): Buffer => Buffer.from(text, 'utf16le');
  const timestamp = Buffer.alloc(8);
  timestamp.writeBigUInt64LE(BigInt((spec.now ?? new Date()).getTime()) * 10_000n + FILETIME_UNIX_EPOCH);
  const targetName = utf16(spec.domain);
  const targetInfo = Buffer.concat([
    avPair(AvId.NB_DOMAIN_NAME, utf16(spec.domain)),
    avPair(AvId.NB_COMPUTER_NAME, utf16(spec.computer)),
    avPair(AvId.DNS_DOMAIN_NAME, utf16(spec.dnsDomain)),
    avPair(AvId.DNS_COMPUTER_NAME, utf16(`${spec.computer.toLowerCase()}.${spec.dnsDomain}`)),
    avPair(AvId.TIMESTAMP, timestamp),
    avPair(AvId.EOL, Buffer.alloc(0)),
  ]);
  const header = Buffer.alloc(TYPE2_HEADER);
  NTLMSSP_SIGNATURE.copy(header, 0);
  header.writeUInt32LE(2, 8);
  writeField(header, 12, targetName.length, TYPE2_HEADER);
  header.writeUInt32LE(challengeFlags(spec.clientFlags), 20);
  spec.challenge.copy(header, 24);
  // 32..39 Reserved
  writeField(header, 40, targetInfo.length, TYPE2_HEADER + targetName.length);
  VERSION.copy(header, 48);
  return Buffer.concat([header, targetName, targetInfo]);
}

export function avPair(id: number, value: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt16LE(id, 0);
  head.writeUInt16LE(value.length, 2);
  return Buffer.concat([head, value]);
}

/** Reads an AV_PAIR list up to MsvAvEOL; null when a pair runs past the end or EOL is missing. */
export function readAvPairs(list: Buffer): Map<number, Buffer> | null {
  const pairs = new Map<number, Buffer>();
  for (let at = 0; at + 4 <= list.length; ) {
    const id = list.readUInt16LE(at);
    const len = list.readUInt16LE(at + 2);
    if (id === AvId.EOL) return pairs;
    if (at + 4 + len > list.length) return null;
    pairs.set(id, list.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return null;
}

function writeField(buf: Buffer, at: number, len: number, offset: number): void {
  buf.writeUInt16LE(len, at);
  buf.writeUInt16LE(len, at + 2);
  buf.writeUInt32LE(offset, at + 4);
}

/** An AUTHENTICATE_MESSAGE as the stand-in reads it. */
export interface Type3Message {
  readonly flags: number;
  readonly lmResponse: Buffer;
  readonly ntResponse: Buffer;
  readonly domain: string;
  readonly user: string;
  readonly workstation: string;
  readonly encryptedSessionKey: Buffer;
}

/**
 * readType3 reads an AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3) with every field bounds-checked.
 * Strings are UTF-16LE under NTLMSSP_NEGOTIATE_UNICODE, else the OEM code page (read as Latin-1).
 * null when it is not a well-formed Type 3.
 */
export function readType3(message: Buffer): Type3Message | null {
  if (message.length < TYPE3_HEADER || !message.subarray(0, 8).equals(NTLMSSP_SIGNATURE)) return null;
  if (message.readUInt32LE(8) !== 3) return null;
  const fields = [12, 20, 28, 36, 44, 52].map((at) => {
    const len = message.readUInt16LE(at);
    const offset = message.readUInt32LE(at + 4);
    if (len === 0) return Buffer.alloc(0);
    return offset >= TYPE3_HEADER && offset + len <= message.length ? message.subarray(offset, offset + len) : null;
  });
  const [lm, nt, domain, user, workstation, sessionKey] = fields;
  if (!lm || !nt || !domain || !user || !workstation || !sessionKey) return null;
  const flags = message.readUInt32LE(60);
  const unicode = (flags & NtlmFlag.UNICODE) !== 0;
  if (unicode && (domain.length % 2 || user.length % 2 || workstation.length % 2)) return null;
  const text = (b: Buffer): string => b.toString(unicode ? 'utf16le' : 'latin1');
  return {
    flags,
    lmResponse: lm,
    ntResponse: nt,
    domain: text(domain),
    user: text(user),
    workstation: text(workstation),
    encryptedSessionKey: sessionKey,
  };
}

/** The first message of a handshake and the server's answer, both needed to check a MIC. */
export interface Handshake {
  readonly type1: Buffer;
  readonly type2: Buffer;
  readonly challenge: Buffer;
}

export type Verdict = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/**
 * verifyType3 checks an AUTHENTICATE_MESSAGE the way a DC checks NTLMv2 (MS-NLMP 3.3.2,
 * 3.2.5.1.2): NTProofStr = HMAC_MD5(NTOWFv2(password, user, domain), ServerChallenge || temp),
 * where user and domain are exactly as the message carries them; and, when the client's
 * MsvAvFlags announce a MIC, MIC = HMAC_MD5(ExportedSessionKey, Type1 || Type2 || Type3 with a
 * zeroed MIC). `password` undefined means no such account.
 */
export function verifyType3(
  handshake: Handshake,
  message: Buffer,
  parsed: Type3Message,
  password: string | undefined,
): Verdict {
  const nt = parsed.ntResponse;
  if (parsed.user === '' && nt.length === 0) return { ok: false, reason: 'anonymous' };
  if (nt.length < MIN_NTLMV2_RESPONSE) return { ok: false, reason: 'not an NTLMv2 response' };
  const proof = nt.subarray(0, 16);
  const temp = nt.subarray(16);
  if (temp[0] !== 1 || temp[1] !== 1) return { ok: false, reason: 'unknown NTLMv2 response version' };
  const avPairs = readAvPairs(temp.subarray(28));
  if (!avPairs) return { ok: false, reason: 'malformed NTLMv2 AV pairs' };
  if (password === undefined) return { ok: false, reason: 'no such account' };

  const responseKey = ntowfV2(password, parsed.user, parsed.domain);
  const expected = hmacMd5(responseKey, handshake.challenge, temp);
  if (!timingSafeEqual(proof, expected)) return { ok: false, reason: 'wrong NTProofStr' };

  const avFlags = avPairs.get(AvId.FLAGS);
  const micPresent =
    avFlags !== undefined && avFlags.length === 4 && (avFlags.readUInt32LE(0) & AV_FLAG_MIC_PRESENT) !== 0;
  if (!micPresent) return { ok: true };
  if (message.length < MIC_END) return { ok: false, reason: 'MIC announced but missing' };
  // KXKEY for NTLMv2 is the SessionBaseKey; with KEY_EXCH the client sent its own key RC4-encrypted under it.
  const sessionBaseKey = hmacMd5(responseKey, proof);
  const exportedKey =
    (parsed.flags & NtlmFlag.KEY_EXCH) !== 0 && parsed.encryptedSessionKey.length === 16
      ? rc4(sessionBaseKey, parsed.encryptedSessionKey)
      : sessionBaseKey;
  const zeroed = Buffer.from(message);
  zeroed.fill(0, MIC_OFFSET, MIC_END);
  const mic = hmacMd5(exportedKey, handshake.type1, handshake.type2, zeroed);
  if (!timingSafeEqual(mic, message.subarray(MIC_OFFSET, MIC_END))) return { ok: false, reason: 'wrong MIC' };
  return { ok: true };
}
