// The operational log's error serializer: an error is logged as type, code, message and stack,
// never with the properties or cause a library may have attached (request headers, credentials).
import { Socket } from 'node:net';
import { Writable } from 'node:stream';
import pino, { type DestinationStream } from 'pino';
import { describe, expect, it } from 'vitest';
import {
  accessLogger,
  appLogger,
  newAccessRecord,
  writeRecord,
  type AccessRecord,
} from '../../src/pipeline/access-log.js';

function capture(): { stream: Writable; text: () => string } {
  let out = '';
  const stream = new Writable({
    write(chunk, _enc, cb) {
      out += String(chunk);
      cb();
    },
  });
  return { stream, text: () => out };
}

describe('appLogger', () => {
  it('logs an error without the headers or cause a library attached to it', () => {
    const { stream, text } = capture();
    const log = appLogger('info', stream);
    const err = Object.assign(new Error('request failed', { cause: new Error('Authorization: Basic c2VjcmV0') }), {
      code: 'UND_ERR_SOCKET',
      headers: { authorization: 'Basic c2VjcmV0', cookie: 'X-OWA-CANARY=s3cr3t' },
      request: { headers: { authorization: 'NTLM c2VjcmV0' } },
    });
    log.error({ err, path: '/owa/' }, 'internal error while handling a request');
    const line = JSON.parse(text()) as { err: Record<string, unknown> };
    expect(line.err).toMatchObject({ type: 'Error', code: 'UND_ERR_SOCKET', message: 'request failed' });
    expect(text()).not.toContain('c2VjcmV0');
    expect(text()).not.toContain('s3cr3t');
  });
});

describe('writeRecord', () => {
  const hostile = [
    'plain',
    'quote " backslash \\ slash / tab \t newline \n return \r nul \u0000 bell \u0007 del \u007f',
    '\u2028 line and \u2029 paragraph separators, é, 漢字, 😀',
    'lone surrogates \ud800 and \udfff',
    'x'.repeat(600) + '"\\', // longer than pino's short-string path
    '{"level":"warn"}',
  ];
  const record = (s: string): AccessRecord => ({
    ...newAccessRecord(new Socket(), { method: 'GET', url: '/owa/', headers: { host: 'mail.example.test' } }),
    user: s,
    path: s,
    userAgent: s,
    detail: s,
    operation: s,
    status: 200,
    upstreamMs: 12.5,
    cache: undefined as unknown as null, // a front-end that reports no cache: the key is left out, as pino does
  });

  it.each(hostile)('writes the line pino writes for log.info(record): %j', (s) => {
    const ours: string[] = [];
    const theirs: string[] = [];
    const fast = accessLogger('unused', sinkOf(ours)).log;
    const r = record(s);
    writeRecord(fast, r);
    const plain = pino(
      { base: null, timestamp: false, messageKey: 'msg', formatters: { level: (l: string) => ({ level: l }) } },
      sinkOf(theirs),
    );
    plain.info(r);
    expect(ours).toHaveLength(1);
    expect(JSON.parse(ours[0]!)).toEqual(JSON.parse(theirs[0]!));
    expect(JSON.parse(ours[0]!)).toMatchObject({ level: 'info', user: s, path: s, detail: s });
    expect(Object.keys(JSON.parse(ours[0]!))).toEqual(Object.keys(JSON.parse(theirs[0]!)));
    expect(ours[0]!.endsWith('}\n')).toBe(true);
    if (s === 'plain') expect(ours[0]).toBe(theirs[0]); // byte for byte
  });

  it('is silent when the access logger is', () => {
    const ours: string[] = [];
    const fast = accessLogger('unused', sinkOf(ours)).log;
    fast.level = 'silent';
    writeRecord(fast, record('x'));
    expect(ours).toEqual([]);
  });

  function sinkOf(lines: string[]): DestinationStream {
    return { write: (line: string) => void lines.push(line) };
  }
});
