// Table tests for the PROXY protocol parser (src/runtime/proxy-protocol.ts, HAProxy's proxy-protocol.txt) and
// the CIDR ranges of listen.proxyProtocol.from (src/runtime/cidr.ts). Every row is bytes a peer could send.
import { describe, expect, it } from 'vitest';
import { AddressRanges, parseCidr } from '../../src/runtime/cidr.js';
import { ipv6, parseProxyHeader, startsLikeProxy, V2_MAX, V2_SIGNATURE } from '../../src/runtime/proxy-protocol.js';

const v1 = (s: string) => Buffer.from(s, 'latin1');
const TLS_HELLO = Buffer.from('160301020001', 'hex');

/** A v2 header: version/command byte, family/protocol byte, then the address block and TLVs. */
function v2(verCmd: number, famProto: number, body: Buffer, declared = body.length): Buffer {
  const head = Buffer.alloc(4);
  head[0] = verCmd;
  head[1] = famProto;
  head.writeUInt16BE(declared, 2);
  return Buffer.concat([V2_SIGNATURE, head, body]);
}
const inet4 = Buffer.from([203, 0, 113, 7, 10, 0, 0, 1, 0xc3, 0x50, 0x01, 0xbb]); // :50000 → :443
const inet6 = Buffer.concat([
  Buffer.from('20010db8000000000000000000000001', 'hex'),
  Buffer.from('20010db8000000000000000000000002', 'hex'),
  Buffer.from([0xc3, 0x50, 0x01, 0xbb]),
]);
const tlv = Buffer.from([0x05, 0x00, 0x03, 0x61, 0x62, 0x63, 0x04, 0x00, 0x00]); // PP2_TYPE_UNIQUE_ID, NOOP

describe('parseProxyHeader: v1', () => {
  const ok: [string, string | null, number][] = [
    ['PROXY TCP4 203.0.113.7 10.0.0.1 50000 443\r\n', '203.0.113.7', 50000],
    ['PROXY TCP6 2001:DB8::1 2001:db8::2 65535 443\r\n', '2001:db8::1', 65535],
    ['PROXY TCP4 0.0.0.0 255.255.255.255 0 0\r\n', '0.0.0.0', 0],
    ['PROXY UNKNOWN\r\n', null, 0],
    ['PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n', null, 0],
  ];
  it.each(ok)('%j names %s', (text, address, port) => {
    const r = parseProxyHeader(v1(`${text}\x16\x03\x01`));
    expect(r).toEqual({ kind: 'ok', length: text.length, source: address === null ? null : { address, port } });
  });

  const bad: [string, string][] = [
    ['PROXY TCP4 203.0.113.7 10.0.0.1 50000 443\n', 'CRLF'],
    ['PROXY TCP4 203.0.113.7 10.0.0.1 50000\r\n', '6 fields'],
    ['PROXY TCP4  203.0.113.7 10.0.0.1 50000 443\r\n', '6 fields'],
    ['PROXY TCP4 203.0.113.7 10.0.0.1 50000 443 \r\n', '6 fields'],
    ['PROXY UDP4 203.0.113.7 10.0.0.1 50000 443\r\n', 'not TCP4'],
    ['PROXY tcp4 203.0.113.7 10.0.0.1 50000 443\r\n', 'not TCP4'],
    ['PROXY TCP4 2001:db8::1 10.0.0.1 50000 443\r\n', 'not TCP4'],
    ['PROXY TCP6 203.0.113.7 2001:db8::2 50000 443\r\n', 'not TCP6'],
    ['PROXY TCP4 203.0.113.256 10.0.0.1 50000 443\r\n', 'not TCP4'],
    ['PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n', 'port'],
    ['PROXY TCP4 203.0.113.7 10.0.0.1 050000 443\r\n', 'port'],
    ['PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n', 'port'],
    ['PROXY TCP4 203.0.113.7 10.0.0.1 50000 0x1bb\r\n', 'port'],
    [`PROXY UNKNOWN ${'x'.repeat(100)}\r\n`, 'longer than 107'],
    [`PROXY TCP4 ${'1'.repeat(120)}`, 'longer than 107'],
  ];
  it.each(bad)('%j is refused (%s)', (text, why) => {
    const r = parseProxyHeader(v1(text));
    expect(r.kind).toBe('bad');
    expect(r.kind === 'bad' && r.why).toContain(why);
  });

  it.each(['P', 'PROXY', 'PROXY TCP4 203.0.113.7 10.0.0.1 50000 443', 'PROXY TCP4 203.0.113.7 10.0.0.1 50000 443\r'])(
    'truncated %j: read more',
    (text) => expect(parseProxyHeader(v1(text))).toEqual({ kind: 'more' }),
  );
});

describe('parseProxyHeader: v2', () => {
  it('PROXY over TCP/IPv4', () => {
    const h = v2(0x21, 0x11, inet4);
    expect(parseProxyHeader(Buffer.concat([h, TLS_HELLO]))).toEqual({
      kind: 'ok',
      length: 28,
      source: { address: '203.0.113.7', port: 50000 },
    });
  });
  it('PROXY over TCP/IPv6, TLVs skipped', () => {
    const h = v2(0x21, 0x21, Buffer.concat([inet6, tlv]));
    expect(parseProxyHeader(Buffer.concat([h, TLS_HELLO]))).toEqual({
      kind: 'ok',
      length: 16 + 36 + tlv.length,
      source: { address: '2001:db8::1', port: 50000 },
    });
  });
  it('LOCAL keeps the socket address, whatever the block says', () => {
    expect(parseProxyHeader(v2(0x20, 0x00, Buffer.alloc(0)))).toEqual({ kind: 'ok', length: 16, source: null });
    expect(parseProxyHeader(v2(0x20, 0x11, inet4))).toEqual({ kind: 'ok', length: 28, source: null });
  });
  it('AF_UNSPEC and AF_UNIX keep the socket address', () => {
    expect(parseProxyHeader(v2(0x21, 0x00, Buffer.alloc(0)))).toEqual({ kind: 'ok', length: 16, source: null });
    expect(parseProxyHeader(v2(0x21, 0x31, Buffer.alloc(216)))).toEqual({ kind: 'ok', length: 232, source: null });
  });

  const bad: [string, Buffer, string][] = [
    ['version 1', v2(0x11, 0x11, inet4), 'version'],
    ['version 3', v2(0x31, 0x11, inet4), 'version'],
    ['command 2', v2(0x22, 0x11, inet4), 'command'],
    ['family 4', v2(0x21, 0x41, inet4), 'family'],
    ['protocol 3', v2(0x21, 0x13, inet4), 'protocol'],
    ['UDP over IPv4', v2(0x21, 0x12, inet4), 'STREAM'],
    ['IPv4 block too short', v2(0x21, 0x11, inet4.subarray(0, 8)), 'shorter'],
    ['IPv6 block too short', v2(0x21, 0x21, inet4), 'shorter'],
    ['oversized', v2(0x21, 0x11, inet4, V2_MAX - 15), 'longer than'],
    ['largest length', v2(0x21, 0x11, inet4, 0xffff), 'longer than'],
  ];
  it.each(bad)('%s is refused', (_name, bytes, why) => {
    const r = parseProxyHeader(bytes);
    expect(r.kind).toBe('bad');
    expect(r.kind === 'bad' && r.why).toContain(why);
  });

  it('truncated anywhere: read more', () => {
    const h = v2(0x21, 0x21, Buffer.concat([inet6, tlv]));
    for (let n = 1; n < h.length; n++) expect(parseProxyHeader(h.subarray(0, n))).toEqual({ kind: 'more' });
  });
  it('the largest accepted header', () => {
    const h = v2(0x21, 0x11, Buffer.concat([inet4, Buffer.alloc(V2_MAX - 28)]));
    expect(parseProxyHeader(h)).toMatchObject({ kind: 'ok', length: V2_MAX });
  });
});

describe('startsLikeProxy and wrong signatures', () => {
  const rows: [string, Buffer, 'yes' | 'no' | 'maybe'][] = [
    ['a TLS ClientHello', TLS_HELLO, 'no'],
    ['an HTTP request', v1('GET / HTTP/1.1\r\n'), 'no'],
    ['PROXY without its space', v1('PROXYTCP4'), 'no'],
    ['lowercase proxy', v1('proxy TCP4'), 'no'],
    ['v2 with one signature byte wrong', Buffer.concat([V2_SIGNATURE.subarray(0, 11), Buffer.from([0x0b])]), 'no'],
    ['the v1 prefix', v1('PROXY '), 'yes'],
    ['the v2 signature', V2_SIGNATURE, 'yes'],
    ['nothing yet', Buffer.alloc(0), 'maybe'],
    ['half the v2 signature', V2_SIGNATURE.subarray(0, 6), 'maybe'],
  ];
  it.each(rows)('%s: %s', (_name, bytes, want) => expect(startsLikeProxy(bytes)).toBe(want));

  it('a connection without a header is refused by the parser', () => {
    expect(parseProxyHeader(TLS_HELLO)).toEqual({ kind: 'bad', why: 'no PROXY protocol header' });
  });
});

describe('ipv6 text (RFC 5952, as Node prints remoteAddress)', () => {
  const rows: [string, string][] = [
    ['20010db8000000000000000000000001', '2001:db8::1'],
    ['00000000000000000000000000000001', '::1'],
    ['00000000000000000000000000000000', '::'],
    ['20010db8000000010000000000000001', '2001:db8:0:1::1'],
    ['20010db8000000000001000000000001', '2001:db8::1:0:0:1'],
    ['20010db8000100000000000100000000', '2001:db8:1::1:0:0'],
    ['20010db8000100010001000100010001', '2001:db8:1:1:1:1:1:1'],
    ['00000000000000000000ffffcb007107', '::ffff:203.0.113.7'],
  ];
  it.each(rows)('%s → %s', (hex, text) => expect(ipv6(Buffer.from(hex, 'hex'))).toBe(text));
});

describe('CIDR ranges (listen.proxyProtocol.from)', () => {
  const valid = ['10.0.0.0/24', '10.0.0.5', '0.0.0.0/0', '2001:db8::/32', '::1', '::/0', '127.0.0.0/8'];
  it.each(valid)('%s parses', (text) => expect(parseCidr(text)).not.toBeNull());
  const invalid = ['10.0.0.0/33', '10.0.0/24', '10.0.0.0/', '10.0.0.0/024', '2001:db8::/129', 'fe80::1%eth0', 'lb', ''];
  it.each(invalid)('%j is refused', (text) => expect(parseCidr(text)).toBeNull());

  const ranges = new AddressRanges(['10.0.0.0/24', '2001:db8::/32', '127.0.0.2']);
  const rows: [string | undefined, boolean][] = [
    ['10.0.0.0', true],
    ['10.0.0.255', true],
    ['10.0.1.0', false],
    ['::ffff:10.0.0.7', true], // a socket listening on ::
    ['127.0.0.2', true],
    ['127.0.0.3', false],
    ['2001:db8:ffff::1', true],
    ['2001:db9::1', false],
    ['not-an-address', false],
    [undefined, false],
  ];
  it.each(rows)('%s listed: %s', (address, want) => expect(ranges.has(address)).toBe(want));
});
