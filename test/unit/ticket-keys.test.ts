// TicketKeys (src/runtime/ticket-keys.ts): the key source a TLS server follows; the IPC and Redis sources build on it.
import { createServer } from 'node:tls';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { HeldTicketKeys, RotatingTicketKeys, TICKET_KEY_BYTES, useTicketKeys } from '../../src/runtime/ticket-keys.js';

afterEach(() => vi.useRealTimers());

describe('ticket keys', () => {
  it('refuses a key that is not 48 bytes (Node would throw on setTicketKeys)', () => {
    expect(() => new HeldTicketKeys(Buffer.alloc(32))).toThrow(RangeError);
    const held = new HeldTicketKeys(Buffer.alloc(TICKET_KEY_BYTES, 1));
    expect(() => held.set(Buffer.alloc(49))).toThrow(RangeError);
    expect(held.current()).toEqual(Buffer.alloc(TICKET_KEY_BYTES, 1));
  });

  it('rotates on its interval, tells every listener, and stops when closed', () => {
    vi.useFakeTimers();
    const rotated = vi.fn();
    const keys = new RotatingTicketKeys(1000, rotated);
    const seen: Buffer[] = [];
    keys.onChange((k) => seen.push(k));
    const first = keys.current();
    vi.advanceTimersByTime(2500);
    expect(seen).toHaveLength(2);
    expect(rotated).toHaveBeenCalledTimes(2);
    expect(new Set([first, ...seen].map((k) => k.toString('hex'))).size).toBe(3);
    expect(keys.current()).toBe(seen[1]);
    keys.close();
    vi.advanceTimersByTime(5000);
    expect(seen).toHaveLength(2);
  });

  it('a TLS server follows the source: the key now, then each new one', () => {
    const server = createServer();
    const keys = new HeldTicketKeys(Buffer.alloc(TICKET_KEY_BYTES, 7));
    const stop = useTicketKeys(server, keys);
    expect(server.getTicketKeys()).toEqual(Buffer.alloc(TICKET_KEY_BYTES, 7));
    keys.set(Buffer.alloc(TICKET_KEY_BYTES, 8));
    expect(server.getTicketKeys()).toEqual(Buffer.alloc(TICKET_KEY_BYTES, 8));
    stop();
    keys.set(Buffer.alloc(TICKET_KEY_BYTES, 9));
    expect(server.getTicketKeys()).toEqual(Buffer.alloc(TICKET_KEY_BYTES, 8));
  });
});
