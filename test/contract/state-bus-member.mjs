// A worker for the StateBus contract over IPC (state-bus.contract.test.ts): the built IpcBus
// (dist/, `npm run build` first) on this process's IPC channel, driven by `ctl` messages from the
// test, which is the primary. Everything it hears on the bus goes back to the test.
import { Lockout } from '../../dist/auth/lockout.js';
import { workerBus } from '../../dist/state/ipc-bus.js';

const bus = workerBus(new Lockout(JSON.parse(process.argv[2] ?? '{}'))); // its own: the fallback only
bus.subscribe((event) => process.send({ ctl: 'event', event }));
const held = new Map();
process.on('message', async (m) => {
  if (typeof m?.ctl !== 'string') return;
  if (m.ctl === 'publish') bus.publish(m.event);
  else if (m.ctl === 'release') {
    held.get(m.cid)?.();
    held.delete(m.cid);
  } else if (m.ctl === 'reserve') {
    const attempt = await bus.reserve(m.account, m.source, m.fingerprint);
    held.set(m.cid, attempt.release);
    process.send({ ctl: 'answer', cid: m.cid, verdict: attempt.verdict });
  } else if (m.ctl === 'slot') {
    const slot = await bus.acquireSlot(m.key, m.cap);
    if (slot) held.set(m.cid, () => slot.release());
    process.send({ ctl: 'answer', cid: m.cid, ok: slot !== null });
  }
});
process.send({ ctl: 'ready' });
