/**
 * Preloaded into the gateway by the memory benchmarks (`node --expose-gc --import …/gc-hook.js
 * bin/exgate.js serve …`): SIGUSR2 runs a full garbage collection, so that RSS is read after GC
 * as in research/perf.md §3, and writes process.memoryUsage() to $EXGATE_BENCH_MEMFILE (when
 * set), which splits RSS into the JS heap and the rest (TLS and socket buffers, code). Nothing
 * else in the gateway changes.
 */
import { writeFileSync } from 'node:fs';

process.on('SIGUSR2', () => {
  (globalThis as { gc?: () => void }).gc?.();
  const file = process.env.EXGATE_BENCH_MEMFILE;
  if (file) writeFileSync(file, JSON.stringify(process.memoryUsage()));
});
