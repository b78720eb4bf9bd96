/**
 * TLS session-ticket keys (issue 16): one key per cluster, made and rotated by the primary and sent
 * to the workers over IPC, so a client resumes on whichever worker it lands on. Node 20 holds ONE
 * 48-byte key per server (setTicketKeys; no key callback): after a rotation, tickets made with the
 * previous key fall back to a full handshake. A Redis source (issue 15) implements TicketKeys too.
 */
import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import type { Server as TlsServer } from 'node:tls';

/** Node's ticket key: 16 bytes key name, 16 HMAC secret, 16 AES key (tls.Server#setTicketKeys). */
export const TICKET_KEY_BYTES = 48;
const KEYS = 'exgate:ticket-keys';
const KEYS_WANTED = 'exgate:ticket-keys?';
/** A worker waits this long for the primary's key, then makes its own (resumption per worker only). */
const ASK_TIMEOUT_MS = 5000;

/** Where the ticket key comes from. The key itself is never logged. */
export interface TicketKeys {
  /** The key now (48 bytes). */
  current(): Buffer;
  /** Calls `listener` with each new key; returns a function that stops the calls. */
  onChange(listener: (key: Buffer) => void): () => void;
  close(): void;
}

/** A key that can be set from outside (the worker's copy of the primary's); also the base of the others. */
export class HeldTicketKeys implements TicketKeys {
  readonly #listeners = new Set<(key: Buffer) => void>();
  #key: Buffer;

  constructor(key: Buffer) {
    this.#key = checked(key);
  }
  current(): Buffer {
    return this.#key;
  }
  set(key: Buffer): void {
    this.#key = checked(key);
    for (const l of this.#listeners) l(this.#key);
  }
  onChange(listener: (key: Buffer) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
  close(): void {
    this.#listeners.clear();
  }
}

/** Random keys, a new one every `rotateMs` (`tls.ticketKeyRotationSeconds`): the primary's, or one process's. */
export class RotatingTicketKeys extends HeldTicketKeys {
  readonly #timer: NodeJS.Timeout;

  constructor(rotateMs: number, onRotated: () => void = () => {}) {
    super(randomBytes(TICKET_KEY_BYTES));
    this.#timer = setInterval(() => {
      this.set(randomBytes(TICKET_KEY_BYTES));
      onRotated();
    }, rotateMs);
    this.#timer.unref();
  }
  override close(): void {
    clearInterval(this.#timer);
    super.close();
  }
}

/** The primary's key in a worker; close() stops listening to the primary. */
class FollowedTicketKeys extends HeldTicketKeys {
  constructor(
    key: Buffer,
    private readonly unfollow: () => void,
  ) {
    super(key);
  }
  override close(): void {
    this.unfollow();
    super.close();
  }
}

/** Puts the key on `server` now and at each change; returns a function that stops following. */
export function useTicketKeys(server: TlsServer, keys: TicketKeys): () => void {
  server.setTicketKeys(keys.current());
  return keys.onChange((key) => server.setTicketKeys(key));
}

/** In the primary: answers each worker's request for the key, and sends every new key to all. */
export function serveTicketKeys(keys: TicketKeys): { attach(worker: Worker): void; close(): void } {
  const send = (w: Worker) => {
    if (w.isConnected()) w.send({ type: KEYS, key: keys.current().toString('base64') }, () => {});
  };
  const stop = keys.onChange(() => {
    for (const w of Object.values(cluster.workers ?? {})) if (w) send(w);
  });
  return {
    attach: (worker) =>
      worker.on('message', (msg: unknown) => {
        if (typeOf(msg) === KEYS_WANTED) send(worker);
      }),
    close: stop,
  };
}

/**
 * In a worker: the primary's key, and each one it sends later. Without an answer in time (a primary
 * of an older version during an upgrade) the worker uses its own keys: it still serves, resuming
 * only the sessions it made itself.
 */
export function workerTicketKeys(rotateMs: number): Promise<TicketKeys> {
  return new Promise((resolve) => {
    let held: FollowedTicketKeys | null = null;
    const onMessage = (msg: unknown) => {
      if (typeOf(msg) !== KEYS) return;
      const key = Buffer.from(String((msg as { key?: unknown }).key), 'base64');
      if (key.length !== TICKET_KEY_BYTES) return;
      if (held) return held.set(key);
      clearTimeout(timer);
      held = new FollowedTicketKeys(key, () => process.off('message', onMessage));
      resolve(held);
    };
    const timer = setTimeout(() => {
      process.off('message', onMessage);
      resolve(new RotatingTicketKeys(rotateMs));
    }, ASK_TIMEOUT_MS);
    process.on('message', onMessage);
    process.send?.({ type: KEYS_WANTED });
  });
}

function checked(key: Buffer): Buffer {
  if (key.length !== TICKET_KEY_BYTES) throw new RangeError(`a ticket key is ${TICKET_KEY_BYTES} bytes`);
  return key;
}

function typeOf(msg: unknown): unknown {
  return typeof msg === 'object' && msg !== null ? (msg as { type?: unknown }).type : undefined;
}
