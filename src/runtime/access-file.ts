/**
 * Where access records are written: a file (or stdout), appended asynchronously and in order.
 * A write that fails never crashes the gateway: pino's file destination emitted an unhandled
 * `error` on the first record (issue 10), and its exit flush loops forever on ENOSPC. Here the
 * records go to stderr instead, and the file is tried again every 5 s until it works.
 */
import { accessSync, closeSync, constants, openSync, statSync, write, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { systemErrorText } from '../errors.js';

/** Told when a write to the file fails, and when it works again. */
export interface AccessFileEvents {
  onWriteError?(err: NodeJS.ErrnoException): void;
  onRecovered?(): void;
}

const RETRY_MS = 5000;
const EAGAIN_MS = 50;

/**
 * Opens `path` for appending; throws the system error when it cannot. Its folder must exist:
 * nothing is created (a recursive mkdir under /proc never returns on Node 20, reproduced).
 */
export function openForAppend(path: string): number {
  return openSync(path, 'a', 0o640);
}

/** Why `path` could not be opened for appending, in words, or null; creates nothing (`exgate check`). */
export function appendProblem(path: string): string | null {
  try {
    const st = statSync(path, { throwIfNoEntry: false });
    if (st?.isDirectory()) return `${path} is a directory`;
    if (st) {
      accessSync(path, constants.W_OK);
      return null;
    }
    const folder = dirname(path);
    const parent = statSync(folder, { throwIfNoEntry: false });
    if (parent === undefined) return `the folder ${folder} does not exist (create it, owned by the service user)`;
    if (!parent.isDirectory()) return `${folder} is not a directory`;
    accessSync(folder, constants.W_OK | constants.X_OK);
    return null;
  } catch (err) {
    return systemErrorText(err);
  }
}

export class AccessFile {
  #fd: number | null;
  #queue: string[] = [];
  #writing = false;
  #broken = false;
  #retryAt = 0;
  #reopen = false;
  #drained: (() => void)[] = [];
  readonly #onExit = () => this.flushSync();

  /** `path` null writes to stdout (fd 1), which is never reopened or closed. Throws when the file cannot be opened. */
  constructor(
    private readonly path: string | null,
    private readonly events: AccessFileEvents = {},
  ) {
    this.#fd = path === null ? 1 : openForAppend(path);
    process.on('exit', this.#onExit);
  }

  /** pino's destination interface. */
  write(line: string): boolean {
    if (this.#fd === null && !this.openAgain()) process.stderr.write(line);
    else {
      this.#queue.push(line);
      if (!this.#writing) this.next();
    }
    return true;
  }

  /** Opens the file again under its name (after logrotate moved it), once no write is in flight. */
  reopen(): void {
    if (this.path === null) return;
    this.#reopen = true;
    if (!this.#writing) this.next();
  }

  /** Resolves when every record so far is written (or went to stderr). */
  drain(): Promise<void> {
    if (!this.#writing && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drained.push(resolve));
  }

  async close(): Promise<void> {
    await this.drain();
    process.off('exit', this.#onExit);
    if (this.path !== null && this.#fd !== null) closeQuietly(this.#fd);
    this.#fd = null;
    this.#retryAt = Infinity;
  }

  private next(): void {
    if (this.#reopen) this.swap();
    const fd = this.#fd;
    if (this.#queue.length === 0 || fd === null) {
      for (const resolve of this.#drained.splice(0)) resolve();
      return;
    }
    const buf = Buffer.from(this.#queue.join(''));
    this.#queue = [];
    this.#writing = true;
    this.writeFrom(fd, buf, 0);
  }

  private writeFrom(fd: number, buf: Buffer, offset: number): void {
    write(fd, buf, offset, buf.length - offset, null, (err, n) => {
      if (err?.code === 'EAGAIN') {
        // a non-blocking pipe is full: wait, never drop
        setTimeout(() => this.writeFrom(fd, buf, offset), EAGAIN_MS);
        return;
      }
      if (err) this.fail(err, buf.subarray(offset));
      else if (offset + n < buf.length) return this.writeFrom(fd, buf, offset + n);
      else if (this.#broken) {
        this.#broken = false;
        this.events.onRecovered?.();
      }
      this.#writing = false;
      this.next();
    });
  }

  /** A write failed: what it held and what waits go to stderr; the file is tried again later. */
  private fail(err: NodeJS.ErrnoException, unwritten: Buffer | string): void {
    process.stderr.write(unwritten);
    for (const line of this.#queue.splice(0)) process.stderr.write(line);
    if (this.path !== null && this.#fd !== null) closeQuietly(this.#fd);
    this.#fd = null;
    this.#broken = true;
    this.#retryAt = Date.now() + RETRY_MS;
    this.events.onWriteError?.(err);
  }

  private openAgain(): boolean {
    if (Date.now() < this.#retryAt) return false;
    try {
      this.#fd = this.path === null ? 1 : openForAppend(this.path);
      return true;
    } catch {
      this.#retryAt = Date.now() + RETRY_MS;
      return false;
    }
  }

  private swap(): void {
    this.#reopen = false;
    if (this.path === null) return;
    if (this.#fd !== null) closeQuietly(this.#fd);
    try {
      this.#fd = openForAppend(this.path);
    } catch (err) {
      this.#fd = null;
      this.fail(err as NodeJS.ErrnoException, '');
    }
  }

  /** At exit, with no event loop left: one synchronous try for what is queued, else stderr. */
  private flushSync(): void {
    const rest = this.#queue.splice(0).join('');
    if (rest === '') return;
    try {
      if (this.#fd === null) throw new Error('not open');
      writeSync(this.#fd, rest);
    } catch {
      process.stderr.write(rest);
    }
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed, or the device is gone: nothing left to do with it
  }
}
