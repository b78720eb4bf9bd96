/**
 * Requests pipelined on one connection are decided in order. Node parses a request as soon as the one
 * before it has its body, so a request can arrive while the one before is still being judged (a sign-in
 * form being checked). It waits for that decision, and is never served when that answer closes the
 * connection (RFC 9112 §9.6): found by attacking the forms door, where it was forwarded unanswered.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** The last request that took a turn on each connection. */
const latest = new WeakMap<Socket, ServerResponse>();
const undecided = new WeakSet<ServerResponse>();
/** The request waiting for each undecided one (pipelining gives at most one). */
const next = new WeakMap<ServerResponse, (closing: boolean) => void>();

/**
 * Takes this request's turn. Null: nothing before it is undecided, go on. Otherwise a promise of
 * whether it may be served (false: an earlier answer closes the connection).
 */
export function takeTurn(socket: Socket, res: ServerResponse): Promise<boolean> | null {
  const before = latest.get(socket);
  latest.set(socket, res);
  undecided.add(res);
  if (!before) return null;
  if (!undecided.has(before)) return before.shouldKeepAlive ? null : Promise.resolve(false);
  return new Promise((resolve) => next.set(before, (closing) => resolve(!closing)));
}

/** This request is decided (answered, refused or forwarded): the one after it may go. */
export function endTurn(res: ServerResponse): void {
  undecided.delete(res);
  const waiting = next.get(res);
  if (!waiting) return;
  next.delete(res);
  waiting(!res.shouldKeepAlive);
}
