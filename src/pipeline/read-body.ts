/**
 * readBody: the one place the gateway reads a request body itself, the forms sign-in (at most 16 KiB,
 * so that the gateway can check the credentials before Exchange sees them). Every other body streams.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * The whole body, or `too-large` past `limit` bytes (declared or sent), or `aborted` (gone, or not
 * whole within `ms`). A client that waits for `100 Continue` gets it here, once its size is fine.
 */
export function readBody(
  req: IncomingMessage,
  res: ServerResponse,
  limit: number,
  ms: number,
  record?: { bytesIn: number },
): Promise<Buffer | 'too-large' | 'aborted'> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) return Promise.resolve('too-large');
  if (req.headers.expect?.toLowerCase() === '100-continue') res.writeContinue();
  // Ended and read: nothing left. Complete but not yet read (a form pipelined behind a request still
  // being judged: Node buffered it meanwhile) is read below like any other.
  if (req.readableEnded) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (result: Buffer | 'too-large' | 'aborted') => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      if (result !== 'too-large' && result !== 'aborted') return resolve(result);
      req.pause(); // the rest is not read: the refusal closes the connection
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (record) record.bytesIn = size;
      if (size > limit) return done('too-large');
      chunks.push(chunk);
    };
    const onEnd = () => done(Buffer.concat(chunks, size));
    const onClose = () => done('aborted');
    const timer = setTimeout(() => done('aborted'), ms);
    timer.unref();
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('close', onClose);
  });
}
