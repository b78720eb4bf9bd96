/**
 * A minimal NTLMv2 client (MS-NLMP 3.1.5, 3.3.2) for tests that need full control of each request
 * on one connection, which curl does not give (it opens a new connection when credentials change).
 */
import { randomBytes } from 'node:crypto';
import type { Client } from 'undici';
import { hmacMd5, ntowfV2 } from '../../src/standin/ntlm-server.js';

const UNICODE = 0x00000001;
const REQUEST_TARGET = 0x00000004;
const NTLM = 0x00000200;
const ALWAYS_SIGN = 0x00008000;
const EXTENDED_SESSIONSECURITY = 0x00080000;
const TARGET_INFO = 0x00800000;

/** A NEGOTIATE_MESSAGE (Type 1). */
export function type1(): Buffer {
  const b = Buffer.alloc(32);
  b.write('NTLMSSP\0', 0, 'latin1');
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(UNICODE | REQUEST_TARGET | NTLM | ALWAYS_SIGN | EXTENDED_SESSIONSECURITY | TARGET_INFO, 12);
  return b;
}

/** An AUTHENTICATE_MESSAGE (Type 3) answering `type2` for user/domain/password (NTLMv2). */
export function type3(type2: Buffer, user: string, domain: string, password: string): Buffer {
  const challenge = type2.subarray(24, 32);
  const ti = type2.subarray(type2.readUInt32LE(44), type2.readUInt32LE(44) + type2.readUInt16LE(40));
  const clientChallenge = randomBytes(8);
  const time = Buffer.alloc(8);
  time.writeBigUInt64LE((BigInt(Date.now()) + 11_644_473_600_000n) * 10_000n);
  const temp = Buffer.concat([
    Buffer.from([1, 1, 0, 0, 0, 0, 0, 0]),
    time,
    clientChallenge,
    Buffer.alloc(4),
    ti,
    Buffer.alloc(4),
  ]);
  const key = ntowfV2(password, user, domain);
  const nt = Buffer.concat([hmacMd5(key, challenge, temp), temp]);
  const lm = Buffer.concat([hmacMd5(key, challenge, clientChallenge), clientChallenge]);
  const u16 = (s: string) => Buffer.from(s, 'utf16le');
  const fields = [lm, nt, u16(domain), u16(user), u16('WS'), Buffer.alloc(0)];
  const head = Buffer.alloc(64);
  head.write('NTLMSSP\0', 0, 'latin1');
  head.writeUInt32LE(3, 8);
  let offset = 64;
  fields.forEach((f, i) => {
    head.writeUInt16LE(f.length, 12 + 8 * i);
    head.writeUInt16LE(f.length, 14 + 8 * i);
    head.writeUInt32LE(offset, 16 + 8 * i);
    offset += f.length;
  });
  head.writeUInt32LE(UNICODE | NTLM | ALWAYS_SIGN | EXTENDED_SESSIONSECURITY, 60);
  return Buffer.concat([head, ...fields]);
}

/** A DER element (X.690 §10.1: definite length, shortest form). */
function der(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), body]);
}

/**
 * A SPNEGO NegTokenResp (RFC 4178 §4.2.2): negState accept-incomplete, then one responseToken
 * ([2] OCTET STRING) per message. One message is what Windows sends for a Type 3 under
 * `Negotiate`; two is not DER (a field repeated), and each reader may take a different one.
 */
export function negTokenResp(...messages: Buffer[]): Buffer {
  const fields = messages.map((m) => der(0xa2, der(0x04, m)));
  return der(0xa1, der(0x30, der(0xa0, der(0x0a, Buffer.from([1]))), ...fields));
}

/** One request on the client's connection; returns status, headers and body text. */
export async function call(
  client: Client,
  path: string,
  host: string,
  authorization?: string,
): Promise<{ status: number; challenge: string | undefined; body: string }> {
  const res = await client.request({
    path,
    method: 'GET',
    headers: { host, ...(authorization ? { authorization } : {}) },
  });
  const body = await res.body.text();
  const www = res.headers['www-authenticate'];
  return { status: res.statusCode, challenge: Array.isArray(www) ? www.join(', ') : www, body };
}

/** Runs the NTLM handshake on the client's connection; returns the final answer. */
export async function signIn(
  client: Client,
  path: string,
  host: string,
  user: string,
  domain: string,
  password: string,
): Promise<{ status: number; body: string }> {
  const first = await call(client, path, host, `NTLM ${type1().toString('base64')}`);
  const token = /NTLM ([A-Za-z0-9+/=]+)/.exec(first.challenge ?? '')?.[1];
  if (first.status !== 401 || !token) return first;
  return call(
    client,
    path,
    host,
    `NTLM ${type3(Buffer.from(token, 'base64'), user, domain, password).toString('base64')}`,
  );
}
