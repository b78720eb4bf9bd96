/**
 * One 'close' listener per response, whatever number of stages must know when it closes. Each
 * `res.once('close')` allocates a wrapper and grows, then shrinks, the emitter's listener array:
 * five per proxied request cost ~3 % of its CPU (issue 16 profile, node:events).
 */
import type { ServerResponse } from 'node:http';

const waiting = new WeakMap<ServerResponse, (() => void)[]>();

/**
 * Runs `fn` when `res` emits 'close', after the functions registered before it, like `res.once`:
 * one that throws stops the rest, and one registered after the 'close' never runs.
 */
export function onClose(res: ServerResponse, fn: () => void): void {
  const fns = waiting.get(res);
  if (fns) {
    fns.push(fn);
    return;
  }
  const first = [fn];
  waiting.set(res, first);
  res.once('close', () => {
    waiting.delete(res);
    for (let i = 0; i < first.length; i++) first[i]!();
  });
}
