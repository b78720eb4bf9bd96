/**
 * The primary's end of the workers' state bus: each worker's IPC channel becomes a member of the
 * primary's Hub. A worker that disconnects (exits, dies) leaves, and its reservations and slots are
 * released; one that joins later hears the events still kept.
 */
import type { LockoutVerdict } from '../auth/lockout.js';
import type { BusEvent } from './bus.js';
import { MSG, typeOf } from './ipc-bus.js';
import type { Hub, LocalBus } from './local-bus.js';

/** The primary's end of one worker's channel (a cluster Worker or a forked ChildProcess). */
export interface WorkerChannel {
  send(message: unknown, callback: (err: Error | null) => void): unknown;
  on(event: 'message', listener: (message: unknown) => void): unknown;
  once(event: 'disconnect', listener: () => void): unknown;
}

type Request =
  | { readonly type: typeof MSG.JOIN }
  | { readonly type: typeof MSG.PUBLISH; readonly event: BusEvent }
  | {
      readonly type: typeof MSG.RESERVE;
      readonly id: number;
      readonly account: string;
      readonly source: string;
      readonly fingerprint: string;
    }
  | { readonly type: typeof MSG.SLOT; readonly id: number; readonly key: string; readonly cap: number }
  | { readonly type: typeof MSG.RELEASE; readonly id: number };

const TYPES = new Set<unknown>([MSG.JOIN, MSG.PUBLISH, MSG.RESERVE, MSG.SLOT, MSG.RELEASE]);

/** Serves `hub` to workers: attach() each worker's channel when it is forked. */
export function servePrimary(hub: Hub): { attach(worker: WorkerChannel): void } {
  return {
    attach(worker) {
      let connected = true;
      let member: LocalBus | null = null;
      /** What the worker holds, by its request id: released on its RELEASE, or when it leaves. */
      const held = new Map<number, () => void>();
      const send = (msg: object) => {
        if (!connected) return;
        try {
          worker.send(msg, () => {});
        } catch {
          /* disconnected meanwhile: 'disconnect' follows */
        }
      };
      const join = () => (member ??= hub.join((events) => send({ type: MSG.EVENTS, events })));
      const answer = (id: number, a: { verdict?: LockoutVerdict; ok?: boolean }, release: (() => void) | null) => {
        if (release && !connected) return release();
        if (release) held.set(id, release);
        send({ type: MSG.ANSWER, id, ...a });
      };
      worker.on('message', (raw: unknown) => {
        if (!TYPES.has(typeOf(raw))) return; // the metrics requests, cluster.ts
        const msg = raw as Request;
        switch (msg.type) {
          case MSG.JOIN: // a (re)started bus: hear what is kept
            if (member) send({ type: MSG.EVENTS, events: hub.retained() });
            else join();
            return;
          case MSG.PUBLISH:
            return join().publish(msg.event);
          case MSG.RESERVE:
            // May wait for other attempts of the account to settle (Lockout.acquire); answers once decided.
            void join()
              .reserve(msg.account, msg.source, msg.fingerprint)
              .then((attempt) =>
                answer(msg.id, { verdict: attempt.verdict }, attempt.verdict === 'open' ? attempt.release : null),
              );
            return;
          case MSG.SLOT:
            void join()
              .acquireSlot(msg.key, msg.cap)
              .then((slot) => answer(msg.id, { ok: slot !== null }, slot?.release ?? null));
            return;
          case MSG.RELEASE:
            held.get(msg.id)?.();
            held.delete(msg.id);
        }
      });
      worker.once('disconnect', () => {
        connected = false;
        held.clear();
        member?.close(); // releases everything it held
      });
    },
  };
}
