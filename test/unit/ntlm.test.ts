// Table tests for the gateway's NTLM token reader and strict Type 3 parser (src/auth/ntlm.ts).
// Messages come from a small builder here, from curl (captured once and pinned below, and captured
// again live from the installed curl), and from hand-made SPNEGO/Kerberos wrappers.
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseType3, readNtlmHeader, type NtlmToken, type Type3Claim } from '../../src/auth/ntlm.js';
import { buildType2 } from '../../src/standin/ntlm-server.js';

const UNICODE = 0x00000001;
const OEM = 0x00000002;
const VERSION_FLAG = 0x02000000;

// What curl 7.88.1 sends for `curl --ntlm -u 'LAB\alice:pw'`: its Type 1, then its Type 3 answering
// a Type 2 with UNICODE (flags 0x00898205) and one with OEM instead (0x00898206).
const CURL_TYPE1 = 'TlRMTVNTUAABAAAABoIIAAAAAAAAAAAAAAAAAAAAAAA=';
const CURL_TYPE3_UNICODE =
  'TlRMTVNTUAADAAAAGAAYAEAAAABKAEoAWAAAAAYABgCiAAAACgAKAKgAAAAWABYAsgAAAAAAAAAAAAAABYKJALjvZpJUdCWQyiGO7D8uOfaGk6udVEEDNWL1' +
  'FpQW/869DFzlXEUgeB0BAQAAAAAAAIABYDL0fN0BhpOrnVRBAzUAAAAAAgAGAEwAQQBCAAEACABFAFgAQwBIAAAAAAAAAAAATABBAEIAYQBsAGkAYwBlAFcA' +
  'TwBSAEsAUwBUAEEAVABJAE8ATgA=';
const CURL_TYPE3_OEM =
  'TlRMTVNTUAADAAAAGAAYAEAAAABKAEoAWAAAAAMAAwCiAAAABQAFAKUAAAALAAsAqgAAAAAAAAAAAAAABoKJADg+lSAwZ/n/BdBcJzI4QL42eKnNiTSpIrR1' +
  'sW8W/pRt70p86El79QcBAQAAAAAAAIABYDL0fN0BNnipzYk0qSIAAAAAAgAGAEwAQQBCAAEACABFAFgAQwBIAAAAAAAAAAAATEFCYWxpY2VXT1JLU1RBVElP' +
  'Tg==';

const b64 = (message: Buffer): string => message.toString('base64');
const fromB64 = (text: string): Buffer => Buffer.from(text, 'base64');

// ---------------------------------------------------------------------------------------------
// Builders

/** A NEGOTIATE_MESSAGE (MS-NLMP 2.2.1.1) without domain or workstation. */
function type1(flags = 0xe2088297, messageType = 1): Buffer {
  const msg = Buffer.alloc(32);
  msg.write('NTLMSSP\0', 0, 'latin1');
  msg.writeUInt32LE(messageType >>> 0, 8);
  msg.writeUInt32LE(flags >>> 0, 12);
  return msg;
}

/** Field order of the six security buffers of an AUTHENTICATE_MESSAGE, at 12 + 8 * index. */
const FIELDS = ['lm', 'nt', 'domain', 'user', 'workstation', 'sessionKey'] as const;
type FieldName = (typeof FIELDS)[number];

interface Type3Spec {
  domain?: string | Buffer;
  user?: string | Buffer;
  workstation?: string | Buffer;
  lm?: Buffer;
  nt?: Buffer;
  sessionKey?: Buffer;
  flags?: number;
  /** Write Version (8) and MIC (16) after the header, as Windows does: the payload starts at 88. */
  versionAndMic?: boolean;
}

/**
 * An AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3). Strings are encoded per the flags (UTF-16LE under
 * UNICODE, else Latin-1); a Buffer is written as given. The responses are only shaped right.
 */
function type3(spec: Type3Spec = {}): Buffer {
  const flags = spec.flags ?? 0xe2888215; // UNICODE, REQUEST_TARGET, SIGN, NTLM, ALWAYS_SIGN, ESS, TARGET_INFO, VERSION, 128, KEY_EXCH, 56
  const encoding = flags & UNICODE ? 'utf16le' : 'latin1';
  const text = (value: string | Buffer | undefined, fallback: string): Buffer =>
    Buffer.isBuffer(value) ? value : Buffer.from(value ?? fallback, encoding);
  const parts: Record<FieldName, Buffer> = {
    lm: spec.lm ?? Buffer.alloc(24),
    nt:
      spec.nt ??
      Buffer.concat([
        Buffer.from('0123456789abcdef', 'latin1'),
        Buffer.from([1, 1, 0, 0, 0, 0, 0, 0]),
        Buffer.alloc(36),
      ]),
    domain: text(spec.domain, 'LAB'),
    user: text(spec.user, 'alice'),
    workstation: text(spec.workstation, 'WS01'),
    sessionKey: spec.sessionKey ?? Buffer.alloc(16, 0x5a),
  };
  const headerLength = spec.versionAndMic === false ? 64 : 88;
  const header = Buffer.alloc(headerLength);
  header.write('NTLMSSP\0', 0, 'latin1');
  header.writeUInt32LE(3, 8);
  let offset = headerLength;
  FIELDS.forEach((name, i) => {
    const part = parts[name];
    writeField(header, i, part.length, offset);
    offset += part.length;
  });
  header.writeUInt32LE(flags, 60);
  if (headerLength === 88) Buffer.from([10, 0, 0x5a, 0x29, 0, 0, 0, 15]).copy(header, 64);
  return Buffer.concat([header, ...FIELDS.map((name) => parts[name])]);
}

function writeField(msg: Buffer, index: number, len: number, offset: number, maxLen = len): void {
  const at = 12 + index * 8;
  msg.writeUInt16LE(len, at);
  msg.writeUInt16LE(maxLen, at + 2);
  msg.writeUInt32LE(offset >>> 0, at + 4);
}

/** A copy of `msg` with security buffer `name` rewritten. */
function withField(msg: Buffer, name: FieldName, len: number, offset: number): Buffer {
  const copy = Buffer.from(msg);
  writeField(copy, FIELDS.indexOf(name), len, offset);
  return copy;
}

/** A copy of `msg` with buffer `name` moved right after the 64-byte header (size bytes of 'A'), the others after it. */
function movedFirst(msg: Buffer, name: FieldName, size: number): Buffer {
  const moved = Buffer.concat([msg.subarray(0, 64), Buffer.alloc(size, 0x41), msg.subarray(64)]);
  for (const other of FIELDS) {
    const { len, offset } = fieldOf(msg, other);
    if (other !== name) writeField(moved, FIELDS.indexOf(other), len, offset + size);
  }
  writeField(moved, FIELDS.indexOf(name), size, 64);
  return moved;
}

function fieldOf(msg: Buffer, name: FieldName): { len: number; offset: number } {
  const at = 12 + FIELDS.indexOf(name) * 8;
  return { len: msg.readUInt16LE(at), offset: msg.readUInt32LE(at + 4) };
}

/** A DER TLV (definite length, short or long form). */
function der(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  const n = body.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, body]);
}

const OID_SPNEGO = Buffer.from('2b0601050502', 'hex'); // 1.3.6.1.5.5.2
const OID_NTLMSSP = Buffer.from('2b0601040182370202 0a'.replace(/ /g, ''), 'hex'); // 1.3.6.1.4.1.311.2.2.10
const OID_KRB5 = Buffer.from('2a864886f712010202', 'hex'); // 1.2.840.113554.1.2.2

/** SPNEGO NegTokenInit (RFC 4178) in a GSS-API InitialContextToken: mechTypes, then mechToken. */
function negTokenInit(mechTypes: Buffer[], mechToken: Buffer): Buffer {
  const init = der(
    0x30,
    der(0xa0, der(0x30, ...mechTypes.map((oid) => der(0x06, oid)))),
    der(0xa2, der(0x04, mechToken)),
  );
  return der(0x60, der(0x06, OID_SPNEGO), der(0xa0, init));
}

/** SPNEGO NegTokenResp: negState accept-incomplete, an optional supportedMech, then responseToken. */
function negTokenResp(responseToken: Buffer, supportedMech?: Buffer): Buffer {
  return der(
    0xa1,
    der(
      0x30,
      der(0xa0, der(0x0a, Buffer.from([1]))),
      ...(supportedMech ? [der(0xa1, der(0x06, supportedMech))] : []),
      der(0xa2, der(0x04, responseToken)),
    ),
  );
}

/** A Kerberos GSS token (krb5 OID, TOK_ID 01 00, an AP-REQ-shaped body): no NTLMSSP anywhere. */
function kerberosToken(): Buffer {
  return der(
    0x60,
    der(0x06, OID_KRB5),
    Buffer.from([0x01, 0x00]),
    der(0x6e, der(0x30, der(0xa0, der(0x02, Buffer.from([5]))), Buffer.alloc(40, 0x42))),
  );
}

/** A Type 3 claiming LAB\\alice whose every byte is below 0x80, so it can pose as the content of a DER OID. */
const DECOY = (): Buffer =>
  type3({
    flags: UNICODE,
    user: 'alice',
    lm: Buffer.alloc(0),
    nt: Buffer.alloc(16, 0x41),
    sessionKey: Buffer.alloc(0),
    versionAndMic: false,
  });

function expectToken(result: ReturnType<typeof readNtlmHeader>): Extract<NtlmToken, { message: Buffer }> {
  if (result === null || result === 'malformed' || result.type === 'kerberos')
    throw new Error(`not an NTLM message: ${JSON.stringify(result)}`);
  return result;
}

function claimOf(msg: Buffer): Type3Claim {
  const claim = parseType3(msg);
  if (!claim) throw new Error('parseType3 refused the message');
  return claim;
}

// ---------------------------------------------------------------------------------------------

describe('readNtlmHeader', () => {
  it.each([
    ['no header', undefined],
    ['Basic', 'Basic YWxpY2U6cHc='],
    ['Bearer', 'Bearer abc.def'],
    ['a scheme that only starts with NTLM', `NTLMv2 ${CURL_TYPE1}`],
    ['a tab instead of a space (RFC 7235 allows only SP)', `NTLM\t${CURL_TYPE1}`],
  ])('is null for %s', (_, header) => {
    expect(readNtlmHeader(header)).toBeNull();
  });

  it.each([
    ['NTLM', `NTLM ${CURL_TYPE1}`, 'NTLM'],
    ['lower-case ntlm', `ntlm ${CURL_TYPE1}`, 'NTLM'],
    ['extra spaces around the token', `NTLM   ${CURL_TYPE1}  `, 'NTLM'],
    ['Negotiate with raw NTLMSSP', `Negotiate ${CURL_TYPE1}`, 'Negotiate'],
    ['NEGOTIATE upper case', `NEGOTIATE ${CURL_TYPE1}`, 'Negotiate'],
  ])("reads curl's Type 1 under %s", (_, header, scheme) => {
    const token = expectToken(readNtlmHeader(header));
    expect(token).toMatchObject({ scheme, type: 1 });
    expect(token.message.equals(fromB64(CURL_TYPE1))).toBe(true);
  });

  it('reads Type 1, 2 and 3 by their MessageType (a Type 2 from a client is for the caller to refuse)', () => {
    expect(expectToken(readNtlmHeader(`NTLM ${b64(type1())}`)).type).toBe(1);
    const challenge = buildType2({
      challenge: Buffer.alloc(8, 1),
      clientFlags: 0,
      domain: 'LAB',
      computer: 'EX',
      dnsDomain: 'lab.test',
    });
    expect(expectToken(readNtlmHeader(`NTLM ${b64(challenge)}`)).type).toBe(2);
    expect(expectToken(readNtlmHeader(`NTLM ${CURL_TYPE3_UNICODE}`)).type).toBe(3);
  });

  it('finds NTLMSSP inside SPNEGO under Negotiate: a NegTokenInit with a Type 1, a NegTokenResp with a Type 3', () => {
    const t1 = type1();
    const init = readNtlmHeader(`Negotiate ${b64(negTokenInit([OID_NTLMSSP], t1))}`);
    expect(expectToken(init)).toMatchObject({ scheme: 'Negotiate', type: 1 });
    expect(expectToken(init).message.subarray(0, t1.length).equals(t1)).toBe(true);

    const t3 = type3({ user: 'bob' });
    const resp = expectToken(readNtlmHeader(`Negotiate ${b64(negTokenResp(t3))}`));
    expect(resp.type).toBe(3);
    expect(claimOf(resp.message).user).toBe('bob');
  });

  it('calls a Negotiate token without NTLMSSP Kerberos', () => {
    expect(readNtlmHeader(`Negotiate ${b64(kerberosToken())}`)).toEqual({ scheme: 'Negotiate', type: 'kerberos' });
    expect(readNtlmHeader(`Negotiate ${b64(negTokenInit([OID_KRB5, OID_NTLMSSP], kerberosToken()))}`)).toEqual({
      scheme: 'Negotiate',
      type: 'kerberos',
    });
  });

  const signature = Buffer.from('NTLMSSP\0', 'latin1');
  const typed = (n: number): Buffer => {
    const msg = Buffer.alloc(16);
    signature.copy(msg);
    msg.writeUInt32LE(n >>> 0, 8);
    return msg;
  };
  it.each([
    ['NTLM without a token', 'NTLM'],
    ['NTLM with a blank token', 'NTLM    '],
    ['Negotiate without a token', 'Negotiate'],
    ['characters outside base64', 'NTLM TlRMTVNTUAAB!AAA'],
    ['base64url characters', `NTLM ${CURL_TYPE1.replace('U', '-')}`],
    ['a length that is not a multiple of 4', `NTLM ${CURL_TYPE1.replace(/=$/, '')}`],
    ['padding only', 'NTLM ===='],
    ['padding in the middle', 'NTLM TlRM=VNTUAAB'],
    ['two tokens', `NTLM ${CURL_TYPE1} ${CURL_TYPE1}`],
    ['MessageType 0', `NTLM ${b64(typed(0))}`],
    ['MessageType 4', `NTLM ${b64(typed(4))}`],
    ['MessageType 0xffffffff', `NTLM ${b64(typed(0xffffffff))}`],
    ['MessageType 3 in the high bytes (0x03000000)', `NTLM ${b64(typed(0x03000000))}`],
    ['NTLM with no NTLMSSP at all', `NTLM ${b64(Buffer.from('definitely not ntlm'))}`],
    ['NTLM with NTLMSSP not at offset 0', `NTLM ${b64(Buffer.concat([Buffer.from([0x60, 0x00]), type1()]))}`],
    ['NTLM with a SPNEGO-wrapped message', `NTLM ${b64(negTokenInit([OID_NTLMSSP], type1()))}`],
    ['a signature with no MessageType (< 12 bytes)', `NTLM ${b64(Buffer.concat([signature, Buffer.from([1, 0])]))}`],
    [
      'Negotiate with a truncated NTLMSSP',
      `Negotiate ${b64(Buffer.concat([Buffer.from([0xa1, 0x0a]), signature, Buffer.from([3])]))}`,
    ],
    ['the signature without its NUL', `NTLM ${b64(Buffer.concat([Buffer.from('NTLMSSP!'), Buffer.alloc(8)]))}`],
  ])('is malformed for %s', (_, header) => {
    expect(readNtlmHeader(header)).toBe('malformed');
  });

  it('is malformed for base64 with non-zero padding bits (one string, one reading)', () => {
    const t = b64(Buffer.concat([type1(), Buffer.from([0x41, 0x41])])); // 34 bytes: "…QQ==", the last 4 bits of the 2nd Q pad
    expect(t.endsWith('QQ==')).toBe(true);
    expect(expectToken(readNtlmHeader(`NTLM ${t}`)).type).toBe(1);
    expect(readNtlmHeader(`NTLM ${t.replace(/QQ==$/, 'QR==')}`)).toBe('malformed');
  });

  it('accepts an 8 KiB token and refuses an oversize one', () => {
    const padded = (size: number): string => `NTLM ${b64(Buffer.concat([type1(), Buffer.alloc(size - 32)]))}`;
    expect(expectToken(readNtlmHeader(padded(8190))).type).toBe(1);
    expect(readNtlmHeader(padded(8196))).toBe('malformed');
    expect(readNtlmHeader(padded(64 * 1024))).toBe('malformed');
    expect(readNtlmHeader(`Negotiate ${'A'.repeat(1_000_000)}`)).toBe('malformed');
  });
  it('reads the NTLMSSP message SPNEGO actually carries, not a decoy elsewhere in the token', () => {
    const decoy = DECOY();
    expect([...decoy].every((byte) => byte < 0x80)).toBe(true); // so it is valid DER OID content
    const real = type3({ user: 'mallory' });
    const result = readNtlmHeader(`Negotiate ${b64(negTokenResp(real, decoy))}`);
    const user =
      result === 'malformed' || result === null || result.type === 'kerberos'
        ? 'refused'
        : parseType3(result.message)?.user;
    expect(user).not.toBe('alice'); // today: alice
    expect(['refused', 'mallory']).toContain(user);
  });

  it('does not find a Type 3 in a Kerberos NegTokenInit that lists a decoy OID', () => {
    const token = negTokenInit([OID_KRB5, DECOY()], kerberosToken());
    const result = readNtlmHeader(`Negotiate ${b64(token)}`);
    expect(result).not.toMatchObject({ type: 3 }); // today: a Type 3 claiming alice
    expect(result === 'malformed' || result?.type === 'kerberos').toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// SPNEGO in strict DER (RFC 4178 §4.2, X.690 §10): one header, one reading. The gateway once kept
// the last of two responseTokens (alice's claim) while a reader of the first (bob's Type 3) logged on.

const ctx = (n: number, inner: Buffer): Buffer => der(0xa0 + n, inner);
const octets = (content: Buffer): Buffer => der(0x04, content);
const mechList = (...oids: Buffer[]): Buffer => der(0x30, ...oids.map((oid) => der(0x06, oid)));
const negState = (value = 1): Buffer => der(0x0a, Buffer.from([value]));
/** NegTokenResp ([1] SEQUENCE) from raw field encodings, in the order given. */
const resp = (...fields: Buffer[]): Buffer => der(0xa1, der(0x30, ...fields));
/** NegTokenInit in its GSS-API wrapper, from raw field encodings, in the order given. */
const init = (...fields: Buffer[]): Buffer => der(0x60, der(0x06, OID_SPNEGO), der(0xa0, der(0x30, ...fields)));
const negotiate = (token: Buffer): string => `Negotiate ${b64(token)}`;

describe('SPNEGO: the tokens clients send are read', () => {
  const bob = type3({ user: 'bob' });
  it.each([
    ['NegTokenResp: negState, responseToken', resp(ctx(0, negState()), ctx(2, octets(bob)))],
    ['NegTokenResp: responseToken alone', resp(ctx(2, octets(bob)))],
    [
      'NegTokenResp: supportedMech NTLMSSP',
      resp(ctx(0, negState()), ctx(1, der(0x06, OID_NTLMSSP)), ctx(2, octets(bob))),
    ],
    [
      'NegTokenResp: responseToken, mechListMIC (Windows with a MIC)',
      resp(ctx(2, octets(bob)), ctx(3, octets(Buffer.alloc(16, 1)))),
    ],
    [
      'NegTokenResp: all four fields',
      resp(
        ctx(0, negState()),
        ctx(1, der(0x06, OID_NTLMSSP)),
        ctx(2, octets(bob)),
        ctx(3, octets(Buffer.alloc(16, 1))),
      ),
    ],
  ])('%s', (_, token) => {
    const read = expectToken(readNtlmHeader(negotiate(token)));
    expect(read).toMatchObject({ scheme: 'Negotiate', type: 3 });
    expect(read.message.equals(bob)).toBe(true);
  });

  it.each([
    ['mechTypes, mechToken', init(ctx(0, mechList(OID_NTLMSSP)), ctx(2, octets(type1())))],
    ['mechTypes NTLMSSP then Kerberos', init(ctx(0, mechList(OID_NTLMSSP, OID_KRB5)), ctx(2, octets(type1())))],
    [
      'reqFlags (BIT STRING, RFC 2478 clients)',
      init(ctx(0, mechList(OID_NTLMSSP)), ctx(1, der(0x03, Buffer.from([1, 0x7e]))), ctx(2, octets(type1()))),
    ],
    ['mechListMIC', init(ctx(0, mechList(OID_NTLMSSP)), ctx(2, octets(type1())), ctx(3, octets(Buffer.alloc(16))))],
  ])('NegTokenInit: %s', (_, token) => {
    expect(expectToken(readNtlmHeader(negotiate(token))).message.equals(type1())).toBe(true);
  });

  it('reads a NegTokenInit laid out as Windows SSPI sends it (NTLMSSP only, Type 1 with Version)', () => {
    // 60 48 06 06 <spnego> a0 3e 30 3c a0 0e 30 0c 06 0a <ntlmssp> a2 2a 04 28 <Type 1, 40 bytes>
    const windows =
      'YEgGBisGAQUFAqA+MDygDjAMBgorBgEEAYI3AgIKoioEKE5UTE1TU1AAAQAAAJeCCOIAAAAAAAAAAAAAAAAAAAAACgBhSgAAAA8=';
    expect(expectToken(readNtlmHeader(`Negotiate ${windows}`))).toMatchObject({ scheme: 'Negotiate', type: 1 });
  });

  it('uses the long form only where it must: a 300-byte Type 3 (0x82) and a 200-byte one (0x81)', () => {
    for (const size of [200, 300]) {
      const t3 = type3({ workstation: 'W'.repeat((size - 88 - 24 - 56 - 6 - 10 - 16) / 2) });
      const token = resp(ctx(2, octets(t3)));
      expect(token[1]).toBe(t3.length + 8 < 0x100 ? 0x81 : 0x82);
      expect(expectToken(readNtlmHeader(negotiate(token))).message.equals(t3)).toBe(true);
    }
  });
});

describe('SPNEGO: anything but strict DER is malformed (400)', () => {
  const bob = type3({ user: 'bob' });
  const alice = type3({ user: 'alice' });
  const mechs = ctx(0, mechList(OID_NTLMSSP));
  const token1 = ctx(2, octets(type1()));
  const valid = resp(ctx(0, negState()), ctx(2, octets(bob)));

  it.each([
    // the reported attack: bob's Type 3 first, alice's claim second
    ['two responseTokens', resp(ctx(0, negState()), ctx(2, octets(bob)), ctx(2, octets(alice)))],
    ['two responseTokens, no negState', resp(ctx(2, octets(bob)), ctx(2, octets(alice)))],
    ['two negStates', resp(ctx(0, negState()), ctx(0, negState()), ctx(2, octets(bob)))],
    ['two supportedMechs', resp(ctx(1, der(0x06, OID_NTLMSSP)), ctx(1, der(0x06, OID_NTLMSSP)), ctx(2, octets(bob)))],
    ['two mechListMICs', resp(ctx(2, octets(bob)), ctx(3, octets(Buffer.alloc(16))), ctx(3, octets(Buffer.alloc(16))))],
    ['responseToken before negState', resp(ctx(2, octets(bob)), ctx(0, negState()))],
    ['mechListMIC before responseToken', resp(ctx(3, octets(Buffer.alloc(16))), ctx(2, octets(bob)))],
    ['an unknown context tag [4]', resp(ctx(2, octets(bob)), ctx(4, octets(alice)))],
    ['an unknown context tag [5] before the token', resp(ctx(5, octets(alice)), ctx(2, octets(bob)))],
    ['a universal OCTET STRING among the fields', resp(ctx(2, octets(bob)), octets(alice))],
    ['two elements inside [2]', resp(ctx(2, Buffer.concat([octets(bob), octets(alice)])))],
    ['a constructed OCTET STRING (BER) as responseToken', resp(ctx(2, der(0x24, octets(bob))))],
    ['negState out of range (4)', resp(ctx(0, negState(4)), ctx(2, octets(bob)))],
    ['negState of two bytes', resp(ctx(0, der(0x0a, Buffer.from([0, 1]))), ctx(2, octets(bob)))],
    ['negState as an INTEGER', resp(ctx(0, der(0x02, Buffer.from([1]))), ctx(2, octets(bob)))],
    ['supportedMech as an OCTET STRING', resp(ctx(1, octets(OID_NTLMSSP)), ctx(2, octets(bob)))],
    ['no responseToken', resp(ctx(0, negState()))],
    ['an empty NegTokenResp', resp()],
    ['two SEQUENCEs in [1]', der(0xa1, der(0x30, ctx(2, octets(bob))), der(0x30, ctx(2, octets(alice))))],
    ['[1] holding an OCTET STRING, not a SEQUENCE', der(0xa1, octets(bob))],
    ['trailing bytes after the outer element', Buffer.concat([valid, Buffer.from([0])])],
    ['a second token after the first', Buffer.concat([resp(ctx(2, octets(bob))), resp(ctx(2, octets(alice)))])],
  ])('NegTokenResp: %s', (_, token) => {
    expect(readNtlmHeader(negotiate(token))).toBe('malformed');
  });

  it.each([
    ['two mechTokens', init(mechs, token1, token1)],
    ['two mechTypes', init(mechs, mechs, token1)],
    ['mechToken before mechTypes', init(token1, mechs)],
    ['mechListMIC before mechToken', init(mechs, ctx(3, octets(Buffer.alloc(16))), token1)],
    [
      "an unknown context tag [4] (negHints/NegTokenInit2 is the server's)",
      init(mechs, token1, ctx(4, octets(type1()))),
    ],
    ['no mechTypes', init(token1)],
    ['an empty mechTypes', init(ctx(0, der(0x30)), token1)],
    ['a mechTypes entry that is not an OID', init(ctx(0, der(0x30, der(0x06, OID_NTLMSSP), octets(type1()))), token1)],
    ['an empty OID in mechTypes', init(ctx(0, der(0x30, der(0x06, OID_NTLMSSP), der(0x06))), token1)],
    ['mechTypes as a SET', init(ctx(0, der(0x31, der(0x06, OID_NTLMSSP))), token1)],
    ['NTLMSSP first but no mechToken', init(mechs)],
    ['reqFlags with 8 unused bits', init(mechs, ctx(1, der(0x03, Buffer.from([8, 0]))), token1)],
    ['reqFlags with its unused bits set', init(mechs, ctx(1, der(0x03, Buffer.from([1, 0x7f]))), token1)],
    ['reqFlags empty', init(mechs, ctx(1, der(0x03)), token1)],
    [
      'two NegTokenInits in [0]',
      der(0x60, der(0x06, OID_SPNEGO), der(0xa0, der(0x30, mechs, token1), der(0x30, mechs, token1))),
    ],
    [
      'bytes after [0] inside the GSS wrapper',
      der(0x60, der(0x06, OID_SPNEGO), der(0xa0, der(0x30, mechs, token1)), Buffer.from([0])),
    ],
    ['a NegTokenResp ([1]) inside the GSS wrapper', der(0x60, der(0x06, OID_SPNEGO), resp(ctx(2, octets(bob))))],
    ['trailing bytes after the outer element', Buffer.concat([init(mechs, token1), Buffer.from([0, 0])])],
  ])('NegTokenInit: %s', (_, token) => {
    expect(readNtlmHeader(negotiate(token))).toBe('malformed');
  });

  // Lengths by hand (X.690 §10.1: definite, shortest form). bob is 128..255 bytes: its minimal length is 81 xx.
  const len = (n: number): number[] => (n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff]);
  const tlv = (tag: number, lengthOctets: number[], content: Buffer): Buffer =>
    Buffer.concat([Buffer.from([tag, ...lengthOctets]), content]);
  const seqOf = (...fields: Buffer[]): Buffer => {
    const seq = der(0x30, ...fields);
    return tlv(0xa1, len(seq.length), seq);
  };
  const bobOctets = (lengthOctets: number[]): Buffer => tlv(0x04, lengthOctets, bob);
  const field2 = (inner: Buffer): Buffer => tlv(0xa2, len(inner.length), inner);
  const indefiniteContent = Buffer.concat([
    Buffer.from([0x30, 0x80]),
    ctx(0, negState()),
    ctx(2, octets(bob)),
    Buffer.from([0, 0]),
  ]);
  const indefinite = tlv(0xa1, len(indefiniteContent.length), indefiniteContent);

  it.each([
    ['long form where the short form fits (a0 81 03)', seqOf(tlv(0xa0, [0x81, 3], negState()), ctx(2, octets(bob)))],
    ['a leading zero length byte (04 82 00 cc)', seqOf(field2(bobOctets([0x82, 0x00, bob.length])))],
    ['three length bytes (04 83 00 00 cc)', seqOf(field2(bobOctets([0x83, 0x00, 0x00, bob.length])))],
    ['the indefinite form (BER): 30 80 … 00 00', indefinite],
    ['an indefinite OCTET STRING', seqOf(field2(Buffer.concat([bobOctets([0x80]), Buffer.from([0, 0])])))],
    // the OCTET STRING claims 5 bytes more than [2] holds, running into the [3] that follows
    [
      'a nested length running past its parent',
      seqOf(field2(bobOctets(len(bob.length + 5))), ctx(3, octets(Buffer.alloc(3)))),
    ],
    [
      'an outer length running past the buffer',
      Buffer.concat([Buffer.from([0xa1, 0x82, 0x10, 0x00]), der(0x30, ctx(2, octets(bob)))]),
    ],
    ['a high tag number (bf 02)', seqOf(tlv(0xbf, [0x02], Buffer.alloc(0)), ctx(2, octets(bob)))],
    ['a tag and no length', Buffer.from([0xa1])],
  ])('%s', (_, token) => {
    expect(readNtlmHeader(negotiate(token))).toBe('malformed');
  });

  it("accepts the same hand-built encodings with minimal lengths (so each refusal above is the variant's)", () => {
    expect(bob.length).toBeGreaterThanOrEqual(0x80); // one length byte after 0x81
    expect(bob.length).toBeLessThan(0x100);
    for (const token of [
      seqOf(tlv(0xa0, [3], negState()), ctx(2, octets(bob))),
      seqOf(field2(bobOctets([0x81, bob.length]))),
      seqOf(field2(bobOctets(len(bob.length))), ctx(3, octets(Buffer.alloc(3)))),
      seqOf(ctx(0, negState()), ctx(2, octets(bob))),
    ]) {
      expect(expectToken(readNtlmHeader(negotiate(token))).message.equals(bob)).toBe(true);
    }
  });
});

describe('parseType3', () => {
  it("reads curl's UNICODE Type 3 (64-byte header, no Version or MIC)", () => {
    const msg = fromB64(CURL_TYPE3_UNICODE);
    const claim = claimOf(msg);
    expect(claim).toMatchObject({ domain: 'LAB', user: 'alice', workstation: 'WORKSTATION', anonymous: false });
    const nt = fieldOf(msg, 'nt');
    expect(claim.responseDigest.equals(msg.subarray(nt.offset, nt.offset + 16))).toBe(true);
  });

  it("reads curl's OEM Type 3", () => {
    const msg = fromB64(CURL_TYPE3_OEM);
    expect(msg.readUInt32LE(60) & (UNICODE | OEM)).toBe(OEM);
    expect(claimOf(msg)).toMatchObject({ domain: 'LAB', user: 'alice', workstation: 'WORKSTATION', anonymous: false });
  });

  it('reads a Windows-shaped Type 3 (Version and MIC, payload at 88) with non-ASCII names', () => {
    const claim = claimOf(type3({ domain: 'LAB', user: 'zoë.ölçü', workstation: 'PC-ÄÖÜ' }));
    expect(claim).toMatchObject({ domain: 'LAB', user: 'zoë.ölçü', workstation: 'PC-ÄÖÜ', anonymous: false });
    expect(claim.responseDigest.toString('latin1')).toBe('0123456789abcdef');
  });

  it.each([
    ['UNICODE only', UNICODE, 'utf16le' as const],
    ['OEM only', OEM, 'latin1' as const],
    ['both: UNICODE wins', UNICODE | OEM, 'utf16le' as const],
  ])('decodes names by the flags: %s', (_, flags, encoding) => {
    const msg = type3({
      flags,
      domain: Buffer.from('LAB', encoding),
      user: Buffer.from('émile', encoding),
      workstation: Buffer.alloc(0),
    });
    expect(claimOf(msg)).toMatchObject({ domain: 'LAB', user: 'émile', workstation: '' });
  });

  it('refuses a message with neither UNICODE nor OEM', () => {
    expect(
      parseType3(type3({ flags: VERSION_FLAG, domain: Buffer.from('LAB'), user: Buffer.from('alice') })),
    ).toBeNull();
    expect(parseType3(type3({ flags: 0, domain: Buffer.from('LAB'), user: Buffer.from('alice') }))).toBeNull();
  });

  it.each([
    ['shorter than the 64-byte header', type3().subarray(0, 63)],
    ['a wrong signature', Buffer.concat([Buffer.from('NTLMSSX\0', 'latin1'), type3().subarray(8)])],
    [
      'MessageType 1',
      (() => {
        const m = type3();
        m.writeUInt32LE(1, 8);
        return m;
      })(),
    ],
    [
      'MessageType 2',
      (() => {
        const m = type3();
        m.writeUInt32LE(2, 8);
        return m;
      })(),
    ],
    ['an empty buffer', Buffer.alloc(0)],
  ])('refuses %s', (_, msg) => {
    expect(parseType3(msg)).toBeNull();
  });

  describe.each(FIELDS.map((name) => [name]))('security buffer %s', (name) => {
    const msg = type3({ versionAndMic: false });
    const { len, offset } = fieldOf(msg, name);
    const size = Math.max(len, 2);

    it.each([
      ['offset past the end', size, msg.length + 1],
      ['ending one byte past the end', size, msg.length - size + 1],
      ['offset 0xffffffff', size, 0xffffffff],
      ['offset 0xfffffffe with length 4 (no u32 wrap-around)', 4, 0xfffffffe],
      ['offset 0 (the signature)', size, 0],
      ['offset 8 (inside the header)', size, 8],
      ['ending at 64 but starting at 62', 2, 62],
    ])('refuses %s', (_, l, o) => {
      expect(parseType3(withField(msg, name, l, o))).toBeNull();
    });

    it('accepts it ending exactly at the end of the message, and starting right after the header', () => {
      const tail = Buffer.concat([msg, Buffer.alloc(size, 0x41)]);
      expect(parseType3(withField(tail, name, size, msg.length))).not.toBeNull();
      expect(parseType3(movedFirst(msg, name, size))).not.toBeNull();
      expect(offset).toBeGreaterThanOrEqual(64);
    });

    it('ignores the offset of an empty buffer, wherever it points', () => {
      for (const o of [0, 12, 0xffffffff]) expect(parseType3(withField(msg, name, 0, o))).not.toBeNull();
    });
  });

  describe('ambiguous security buffers: two fields sharing bytes are refused', () => {
    // An LM response that reads as UTF-16 letters, so only the overlap is wrong with a name taken from it.
    const msg = type3({ versionAndMic: false, lm: Buffer.from('L\0'.repeat(12), 'latin1') });
    const at = (name: FieldName) => fieldOf(msg, name);
    it.each([
      ['user and domain on the same bytes', 'user', at('domain').len, at('domain').offset],
      ['user starting inside domain', 'user', at('user').len, at('domain').offset + 2],
      ['domain running into user', 'domain', at('domain').len + 2, at('domain').offset],
      ['workstation on the user name', 'workstation', at('user').len, at('user').offset],
      ['user on the NTProofStr', 'user', 16, at('nt').offset],
      ['domain inside the LM response', 'domain', 6, at('lm').offset],
      ['the session key on the NT proof', 'sessionKey', 16, at('nt').offset],
      ['the LM response on the NT response', 'lm', 24, at('nt').offset],
      ['the NT response covering the whole payload', 'nt', msg.length - 64, 64],
    ] as const)('%s', (_, name, l, o) => {
      expect(parseType3(withField(msg, name, l, o))).toBeNull();
    });

    it('still reads buffers that touch without sharing a byte, and empty buffers anywhere', () => {
      expect(claimOf(msg).user).toBe('alice');
      expect(at('user').offset).toBe(at('domain').offset + at('domain').len); // adjacent, as every client writes them
      expect(claimOf(withField(msg, 'workstation', 0, at('user').offset)).user).toBe('alice');
    });

    it('ignores MaxLen, as MS-NLMP 2.2.1.3 says the receiver MUST (Windows does too)', () => {
      const copy = Buffer.from(msg);
      const user = at('user');
      writeField(copy, FIELDS.indexOf('user'), user.len, user.offset, 0xffff);
      expect(claimOf(copy).user).toBe('alice');
    });
  });

  it.each(['domain', 'user', 'workstation'] as const)(
    'refuses odd-length UTF-16 in %s, but not odd-length OEM',
    (name) => {
      const odd = Buffer.from('abc', 'latin1');
      expect(parseType3(type3({ [name]: odd }))).toBeNull();
      expect(claimOf(type3({ flags: OEM, [name]: odd }))[name]).toBe('abc');
    },
  );

  describe.each(['domain', 'user', 'workstation'] as const)('control characters in %s', (name) => {
    it.each([
      ['NUL', '\u0000'],
      ['NUL at the end', 'alice\u0000'],
      ['SOH', '\u0001'],
      ['tab', '\t'],
      ['LF', '\n'],
      ['CR', '\r'],
      ['ESC', '\u001b'],
      ['DEL', '\u007f'],
    ])('refuses %s (UNICODE and OEM)', (_, ch) => {
      const value = ch.length === 1 ? `a${ch}b` : ch;
      expect(parseType3(type3({ [name]: value }))).toBeNull();
      expect(parseType3(type3({ flags: OEM, [name]: value }))).toBeNull();
    });
    it('refuses C1 controls such as U+0085 (NEL) and U+009B (CSI)', () => {
      expect(parseType3(type3({ [name]: 'a\u0085b' }))).toBeNull();
      expect(parseType3(type3({ flags: OEM, [name]: Buffer.from([0x61, 0x9b, 0x62]) }))).toBeNull();
    });
  });
  it('refuses a user name with an unpaired surrogate', () => {
    const lone = Buffer.from([0x61, 0x00, 0x00, 0xd8, 0x62, 0x00]); // "a", U+D800, "b"
    expect(parseType3(type3({ user: lone }))).toBeNull();
  });

  it('calls empty user and empty NT response anonymous (LM Z(1)), and nothing else', () => {
    expect(claimOf(type3({ user: '', nt: Buffer.alloc(0), lm: Buffer.alloc(1) })).anonymous).toBe(true);
    expect(
      claimOf(type3({ user: '', domain: '', nt: Buffer.alloc(0), lm: Buffer.alloc(0), sessionKey: Buffer.alloc(0) })),
    ).toMatchObject({
      anonymous: true,
      responseDigest: Buffer.alloc(0),
    });
    // a user name, or an NT response, makes it a claim the caller must check like any other
    expect(claimOf(type3({ user: 'alice', nt: Buffer.alloc(0) })).anonymous).toBe(false);
    expect(claimOf(type3({ user: '' })).anonymous).toBe(false);
    expect(claimOf(type3({ user: '' })).user).toBe('');
  });

  it('reads a UPN with an empty domain', () => {
    expect(claimOf(type3({ domain: '', user: 'alice@lab.test' }))).toMatchObject({
      domain: '',
      user: 'alice@lab.test',
    });
    expect(claimOf(type3({ domain: 'lab.test', user: 'alice' }))).toMatchObject({ domain: 'lab.test', user: 'alice' });
  });

  it('fingerprints a message by its NT response: the NTProofStr, different for every handshake', () => {
    const a = claimOf(type3({ nt: Buffer.concat([Buffer.alloc(16, 1), Buffer.alloc(40, 9)]) }));
    const b = claimOf(type3({ nt: Buffer.concat([Buffer.alloc(16, 2), Buffer.alloc(40, 9)]) }));
    expect(a.responseDigest).toEqual(Buffer.alloc(16, 1));
    expect(b.responseDigest).toEqual(Buffer.alloc(16, 2));
    expect(claimOf(type3({ nt: Buffer.alloc(24, 7) })).responseDigest).toEqual(Buffer.alloc(16, 7)); // NTLMv1-sized
    expect(claimOf(fromB64(CURL_TYPE3_UNICODE)).responseDigest).not.toEqual(
      claimOf(fromB64(CURL_TYPE3_OEM)).responseDigest,
    );
  });
  it('gives LM-only messages different fingerprints', () => {
    const first = claimOf(type3({ nt: Buffer.alloc(0), lm: Buffer.alloc(24, 1) }));
    const second = claimOf(type3({ nt: Buffer.alloc(0), lm: Buffer.alloc(24, 2) }));
    expect(first.anonymous).toBe(false);
    expect(first.responseDigest.equals(second.responseDigest)).toBe(false);
  });
  it('refuses a named logon that carries no response', () => {
    expect(parseType3(type3({ user: 'alice', nt: Buffer.alloc(0), lm: Buffer.alloc(1) }))).toBeNull();
    expect(parseType3(type3({ user: 'alice', nt: Buffer.alloc(0), lm: Buffer.alloc(0) }))).toBeNull();
  });
});

describe('what the installed curl sends', () => {
  const execFileAsync = promisify(execFile);
  const seen: Array<{ url: string; authorization: string | undefined }> = [];
  let server: Server;
  let base: string;

  beforeAll(async () => {
    // A tiny server that answers a Type 1 with a Type 2 (OEM instead of UNICODE under /oem) and records every header.
    server = createServer((req, res) => {
      const authorization = req.headers.authorization;
      seen.push({ url: req.url ?? '', authorization });
      const token = readNtlmHeader(authorization);
      if (token === null || token === 'malformed' || token.type === 'kerberos') {
        res.writeHead(401, { 'WWW-Authenticate': 'NTLM' });
        return void res.end();
      }
      if (token.type === 1) {
        const challenge = buildType2({
          challenge: Buffer.alloc(8, 7),
          clientFlags: 0,
          domain: 'LAB',
          computer: 'EX',
          dnsDomain: 'lab.test',
        });
        if (req.url === '/oem') challenge.writeUInt32LE(((challenge.readUInt32LE(20) & ~UNICODE) | OEM) >>> 0, 20);
        res.writeHead(401, { 'WWW-Authenticate': `NTLM ${b64(challenge)}` });
        return void res.end();
      }
      res.end('ok\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    for (const [path, user] of [
      ['/unicode', 'LAB\\alice:pw'],
      ['/oem', 'LAB\\alice:pw'],
      ['/upn', 'alice@lab.test:pw:with:colons'],
    ] as const) {
      await execFileAsync('curl', ['--silent', '--ntlm', '--user', user, `${base}${path}`], { timeout: 10_000 });
    }
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const legs = (path: string) => seen.filter((s) => s.url === path).map((s) => s.authorization);

  it('sends a raw Type 1 under NTLM', () => {
    const [first] = legs('/unicode');
    expect(expectToken(readNtlmHeader(first))).toMatchObject({ scheme: 'NTLM', type: 1 });
    expect(first).toBe(`NTLM ${CURL_TYPE1}`);
  });

  it.each([
    ['/unicode', UNICODE, { domain: 'LAB', user: 'alice' }],
    ['/oem', OEM, { domain: 'LAB', user: 'alice' }],
    ['/upn', UNICODE, { domain: '', user: 'alice@lab.test' }],
  ])('sends a Type 3 the parser reads (%s)', (path, flag, names) => {
    const [, third] = legs(path);
    const token = expectToken(readNtlmHeader(third));
    expect(token.type).toBe(3);
    expect(token.message.readUInt32LE(60) & (UNICODE | OEM)).toBe(flag);
    const claim = claimOf(token.message);
    expect(claim).toMatchObject({ ...names, workstation: 'WORKSTATION', anonymous: false });
    expect(claim.responseDigest).toHaveLength(16);
  });
});
