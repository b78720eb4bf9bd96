/**
 * `npm run bench`: every benchmark, each side by side with its baseline, printed as markdown
 * tables with the machine they ran on. `npm run bench -- auth` runs one suite.
 * The cold-auth suite starts a throwaway Samba AD DC (root; see test/helpers/samba.ts).
 */
import { coldAuthBench, cachedAuthBench } from './auth.js';
import { idleMemoryBench, uploadMemoryBench } from './memory.js';
import { newConnectionBench } from './newconn.js';
import { policyScaleBench } from './policy-scale.js';
import { proxyBench } from './proxy.js';
import { sharedStateBench } from './shared-state.js';
import { machine } from './stats.js';

const SUITES: Record<string, () => Promise<string>> = {
  'auth-cached': () => cachedAuthBench(),
  'auth-cold': () => coldAuthBench(),
  'auth-cached-redis': () => sharedStateBench(),
  proxy: () => proxyBench(),
  newconn: () => newConnectionBench(),
  policy: () => policyScaleBench(),
  'memory-idle': () => idleMemoryBench(),
  'memory-upload': () => uploadMemoryBench(),
};

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  const names =
    wanted.length > 0 ? Object.keys(SUITES).filter((n) => wanted.some((w) => n.startsWith(w))) : Object.keys(SUITES);
  process.stdout.write(`exgate benchmarks — ${new Date().toISOString()} — ${machine()}\n\n`);
  for (const name of names) {
    const started = Date.now();
    const out = await SUITES[name]!();
    process.stdout.write(`## ${name} (${((Date.now() - started) / 1000).toFixed(0)} s)\n\n${out}\n\n`);
  }
}

main().then(
  () => {
    // Anything still open here is a leak in a suite: say so, then end the run anyway.
    const open = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'PipeWrap' && r !== 'Timeout'); // stdio and unref'd timers;
    if (open.length > 0) process.stderr.write(`bench: still open at the end: ${open.join(', ')}\n`);
    process.exit(0);
  },
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
