// The operational log's error serializer: an error is logged as type, code, message and stack,
// never with the properties or cause a library may have attached (request headers, credentials).
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { appLogger } from '../../src/pipeline/access-log.js';

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
