/**
 * Paired A/B of two gateway builds (issue 16's "profile and cut"): both load at once, one wrk each,
 * so the shared box's other work hits both alike; sequential runs moved ±20 % and hid 5 % cuts.
 *   node .bench/bench/ab.js BASE_DIR NEW_DIR   (each a copy of bin/ and dist/ with node_modules)
 * Knobs: AB_ROUNDS (12), AB_SECONDS (5), BENCH_WRK_CONNECTIONS (64; 32 each is fairer on 2 vCPUs).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Child, freePort, GET_PATH, type Lab, listening, num, suite } from './lab.js';
import { runWrk, sanity } from './measure.js';
import { processTree, treeCpu } from './procstat.js';
import { gatewayConfig, type Server, startUpstream } from './servers.js';
import { median } from './stats.js';

async function gatewayFrom(lab: Lab, id: string, dir: string, upstreamPort: number): Promise<Server> {
  const port = await freePort();
  mkdirSync(join(lab.dir, 'logs'), { recursive: true });
  const accessLog = join(lab.dir, 'logs', `${id}-access.log`);
  const config = join(lab.dir, `${id}.yaml`);
  writeFileSync(config, stringify(gatewayConfig(lab, port, upstreamPort, accessLog)));
  const child = new Child(id, process.execPath, [join(dir, 'bin', 'exgate.js'), 'serve', '--config', config]);
  await listening(child, port);
  return { id, label: `${id} (${dir})`, child, port, accessLog };
}

const [baseDir, newDir] = process.argv.slice(2);
if (!baseDir || !newDir) throw new Error('usage: node .bench/bench/ab.js BASE_DIR NEW_DIR');
const rounds = num('AB_ROUNDS', 12);
const seconds = num('AB_SECONDS', 5);
const report = await suite(async (lab) => {
  // One upstream each: neither gateway waits on the other's.
  const [up1, up2] = [await startUpstream('plain', lab), await startUpstream('plain', lab)];
  const a = await gatewayFrom(lab, 'base', baseDir, up1.port);
  const b = await gatewayFrom(lab, 'new', newDir, up2.port);
  const url = (s: Server) => `https://127.0.0.1:${s.port}${GET_PATH}`;
  for (const [s, up] of [
    [a, up1],
    [b, up2],
  ] as const)
    await sanity({ ...s, url: url(s), upstream: up, baseline: false });
  await Promise.all([runWrk(url(a), 3), runWrk(url(b), 3)]); // warm-up: JIT, the auth cache
  const us: { a: number[]; b: number[]; ratio: number[] } = { a: [], b: [], ratio: [] };
  for (let r = 1; r <= rounds; r++) {
    const [pa, pb] = [processTree(a.child.pid), processTree(b.child.pid)];
    const [a0, b0] = [treeCpu(a.child.pid, pa).total, treeCpu(b.child.pid, pb).total];
    const [wa, wb] = await Promise.all([runWrk(url(a), seconds), runWrk(url(b), seconds)]);
    const ua = ((treeCpu(a.child.pid, pa).total - a0) * 1e6) / wa.requests;
    const ub = ((treeCpu(b.child.pid, pb).total - b0) * 1e6) / wb.requests;
    us.a.push(ua);
    us.b.push(ub);
    us.ratio.push(ub / ua);
    process.stderr.write(
      `[ab] round ${r}: base ${ua.toFixed(1)} µs/req, new ${ub.toFixed(1)}, new ÷ base ${(ub / ua).toFixed(3)}\n`,
    );
  }
  const [lo, hi] = [Math.min(...us.ratio), Math.max(...us.ratio)];
  return `CPU µs/req (median of ${rounds} simultaneous rounds of ${seconds} s): base ${median(us.a).toFixed(1)}, new ${median(us.b).toFixed(1)}; new ÷ base ${median(us.ratio).toFixed(3)} (${lo.toFixed(3)}–${hi.toFixed(3)})`;
});
console.log(report);
