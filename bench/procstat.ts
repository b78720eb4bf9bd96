/**
 * What the proxy benchmarks read from /proc (research/perf.md §0, §3): CPU time and RSS of a
 * process tree (a server and every process below it, e.g. nginx's master and workers), the
 * whole box's busy time (to see foreign load), and the open-file limit.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second of utime/stime (USER_HZ; 100 on Linux/x86 in practice). */
export const CLK_TCK: number = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

interface ProcStat {
  readonly pid: number;
  readonly ppid: number;
  /** utime and stime, in ticks. */
  readonly utime: number;
  readonly stime: number;
}

/** /proc/<pid>/stat, or null when the process is gone. Fields after the `(comm)` are split on spaces. */
export function readStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
  return { pid, ppid: Number(rest[1]), utime: Number(rest[11]), stime: Number(rest[12]) };
}

/** The pid and all its descendants (one scan of /proc). */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const st = readStat(pid);
    if (!st) continue;
    const list = children.get(st.ppid) ?? [];
    list.push(pid);
    children.set(st.ppid, list);
  }
  const out: number[] = [];
  const walk = (pid: number) => {
    out.push(pid);
    for (const c of children.get(pid) ?? []) walk(c);
  };
  if (readStat(root)) walk(root);
  return out;
}

/** CPU seconds used so far by a process tree, user and system. Pass `pids` to skip the /proc scan. */
export function treeCpu(
  root: number,
  pids: readonly number[] = processTree(root),
): { user: number; sys: number; total: number } {
  let user = 0;
  let sys = 0;
  for (const pid of pids) {
    const st = readStat(pid);
    user += st?.utime ?? 0;
    sys += st?.stime ?? 0;
  }
  return { user: user / CLK_TCK, sys: sys / CLK_TCK, total: (user + sys) / CLK_TCK };
}

/** VmRSS of one process in KiB (0 when gone). */
export function rssKb(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Summed VmRSS of a process tree in KiB. */
export function treeRssKb(root: number, pids: readonly number[] = processTree(root)): number {
  return pids.reduce((sum, pid) => sum + rssKb(pid), 0);
}

/** Whole-machine CPU counters from /proc/stat: busy and total seconds, summed over all CPUs. */
export function systemCpu(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  const busy = user + nice + system + irq + softirq + steal;
  return { busy: busy / CLK_TCK, total: (busy + idle + iowait) / CLK_TCK };
}

/** The hard open-file limit children inherit (they cannot go above it without CAP_SYS_RESOURCE). */
export function hardNofile(): number {
  const m = /^Max open files\s+\d+\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  return m?.[1] === undefined || m[1] === 'unlimited' ? 1 << 20 : Number(m[1]);
}

/** This process's own CPU plus its reaped children's (cutime/cstime), in seconds: wrk counts here once it exits. */
export function selfAndReapedCpuSeconds(): number {
  const text = readFileSync('/proc/self/stat', 'utf8');
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12]) + Number(rest[13]) + Number(rest[14])) / CLK_TCK;
}
