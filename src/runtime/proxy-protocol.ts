/**
 * The PROXY protocol header (HAProxy's proxy-protocol.txt, v1 text and v2 binary), parsed purely
 * and strictly from the first bytes of a TCP connection, before TLS. The caller feeds what it has
 * read so far and is told: read more, refuse, or the header's length and the client it names.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** v1: "PROXY " … "\r\n" is 107 bytes at most (spec §2.1, the TCP6 worst case). */
export const V1_MAX = 107;
/** v2: the 12-byte signature (spec §2.2). */
export const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
/**
 * v2 TLVs may make a header up to 16 + 65535 bytes; balancers send tens of bytes (AWS, Azure,
 * GCP). Anything past this is refused rather than buffered for a peer that may be hostile.
 */
export const V2_MAX = 16 + 4096;
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const PORT = /^(0|[1-9]\d{0,4})$/;

/** The client the header names; null keeps the socket's own address (LOCAL, UNKNOWN, AF_UNSPEC). */
export interface ProxySource {
  readonly address: string;
  readonly port: number;
}

export type ProxyParse =
  | { readonly kind: 'more' }
  | { readonly kind: 'bad'; readonly why: string }
  | { readonly kind: 'ok'; readonly length: number; readonly source: ProxySource | null };

const MORE: ProxyParse = { kind: 'more' };

/** Whether `buf` starts like a PROXY header (v1 or v2): `maybe` while too short to tell. */
export function startsLikeProxy(buf: Buffer): 'yes' | 'no' | 'maybe' {
  for (const sig of [V1_PREFIX, V2_SIGNATURE]) {
    const n = Math.min(sig.length, buf.length);
    if (buf.subarray(0, n).equals(sig.subarray(0, n))) return buf.length >= sig.length ? 'yes' : 'maybe';
  }
  return 'no';
}

/** Parses the header at the start of `buf` (the bytes read so far). */
export function parseProxyHeader(buf: Buffer): ProxyParse {
  switch (startsLikeProxy(buf)) {
    case 'maybe':
      return MORE;
    case 'no':
      return { kind: 'bad', why: 'no PROXY protocol header' };
    default:
      return buf[0] === 0x50 ? parseV1(buf) : parseV2(buf);
  }
}

/** v1: `PROXY TCP4|TCP6 src dst sport dport\r\n` or `PROXY UNKNOWN[ anything]\r\n` (spec §2.1). */
function parseV1(buf: Buffer): ProxyParse {
  const window = buf.subarray(0, V1_MAX);
  const lf = window.indexOf(0x0a);
  if (lf < 0) return buf.length >= V1_MAX ? { kind: 'bad', why: 'v1 header longer than 107 bytes' } : MORE;
  if (window[lf - 1] !== 0x0d) return { kind: 'bad', why: 'v1 header not ended by CRLF' };
  const line = window.toString('latin1', 0, lf - 1);
  const length = lf + 1;
  if (line === 'PROXY UNKNOWN' || line.startsWith('PROXY UNKNOWN ')) return { kind: 'ok', length, source: null };
  const parts = line.split(' ');
  if (parts.length !== 6) return { kind: 'bad', why: 'v1 header does not have 6 fields' };
  const [, proto, src = '', dst = '', sport = '', dport = ''] = parts;
  const valid = proto === 'TCP4' ? isIPv4 : proto === 'TCP6' ? isIPv6 : null;
  if (valid === null) return { kind: 'bad', why: 'v1 protocol is not TCP4, TCP6 or UNKNOWN' };
  if (!valid(src) || !valid(dst)) return { kind: 'bad', why: `v1 address is not ${proto}` };
  const port = portOf(sport);
  if (port === null || portOf(dport) === null) return { kind: 'bad', why: 'v1 port is not 0-65535' };
  return { kind: 'ok', length, source: { address: src.toLowerCase(), port } };
}

function portOf(text: string): number | null {
  if (!PORT.test(text)) return null;
  const n = Number(text);
  return n <= 65535 ? n : null;
}

/** v2: signature, version/command, family/protocol, length, addresses, TLVs (spec §2.2). */
function parseV2(buf: Buffer): ProxyParse {
  if (buf.length < 16) return MORE;
  const verCmd = buf[12] as number;
  const famProto = buf[13] as number;
  const length = 16 + buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2) return { kind: 'bad', why: 'v2 version is not 2' };
  const command = verCmd & 0x0f;
  if (command > 1) return { kind: 'bad', why: 'v2 command is not LOCAL or PROXY' };
  if (length > V2_MAX) return { kind: 'bad', why: `v2 header longer than ${V2_MAX} bytes` };
  if (buf.length < length) return MORE;
  // LOCAL (health checks from the balancer itself): the address block is ignored (spec §2.2).
  if (command === 0) return { kind: 'ok', length, source: null };
  const family = famProto >> 4;
  const proto = famProto & 0x0f;
  if (family > 3 || proto > 2) return { kind: 'bad', why: 'v2 family or protocol unknown' };
  // AF_UNSPEC and AF_UNIX name no IP client: the receiver uses the real endpoints (spec §2.2).
  if (family === 0 || family === 3) return { kind: 'ok', length, source: null };
  if (proto !== 1) return { kind: 'bad', why: 'v2 protocol is not STREAM' };
  const block = family === 1 ? 12 : 36;
  if (length - 16 < block) return { kind: 'bad', why: 'v2 address block shorter than its family' };
  const address = family === 1 ? ipv4(buf.subarray(16, 20)) : ipv6(buf.subarray(16, 32));
  const port = buf.readUInt16BE(family === 1 ? 24 : 48);
  return { kind: 'ok', length, source: { address, port } }; // TLVs after the block: skipped
}

function ipv4(b: Buffer): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952 text, as Node's remoteAddress shows it (an IPv4-mapped address as ::ffff:a.b.c.d). */
export function ipv6(b: Buffer): string {
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff)
    return `::ffff:${ipv4(b.subarray(12))}`;
  const groups = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  let best = { at: -1, len: 1 }; // the longest run of two or more zero groups, the first on a tie
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len) best = { at: i, len: j - i };
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.at < 0) return hex.join(':');
  return `${hex.slice(0, best.at).join(':')}::${hex.slice(best.at + best.len).join(':')}`;
}
