/**
 * The runner: the command that receives a PowerShell script on stdin (INTERFACE.md), e.g.
 * `pwsh -NoProfile -File exchange-session.ps1` with a remote Exchange session. Reads Exchange's
 * current flags with it, and applies changes with it in batches, reporting each mailbox.
 */
import { spawn } from 'node:child_process';
import { dnKey } from '../directory/directory.js';
import type { CasFlag } from './plan.js';
import { changeScript, readScript, type MailboxChange } from './powershell.js';

export interface RunnerSettings {
  readonly command: readonly string[];
  readonly timeoutMs: number;
}

export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the runner with `script` on stdin. Never throws for a non-zero exit: the caller judges. */
export function run(settings: RunnerSettings, script: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = settings.command;
    const child = spawn(cmd as string, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), settings.timeoutMs);
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString('utf8'); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString('utf8'); });
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
    child.stdin.on('error', () => {});
    child.stdin.end(script);
  });
}

/** Exchange's current flags per mailbox (lowercase DN). Throws when the read fails. */
export async function readCurrent(settings: RunnerSettings, flags: readonly CasFlag[]): Promise<Map<string, Partial<Record<CasFlag, boolean | null>>>> {
  const result = await run(settings, readScript(flags));
  if (result.code !== 0 || result.stderr.trim() !== '') {
    throw new Error(`the Exchange read failed (exit ${result.code}): ${result.stderr.trim().slice(0, 500)}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(result.stdout.trim() || '[]');
  } catch {
    throw new Error('the Exchange read did not print JSON');
  }
  // ConvertTo-Json prints a single object, not an array, when there is one mailbox.
  const rows = (Array.isArray(parsed) ? parsed : [parsed]) as Record<string, unknown>[];
  const out = new Map<string, Partial<Record<CasFlag, boolean | null>>>();
  for (const row of rows) {
    if (typeof row?.DistinguishedName !== 'string') continue;
    const state: Partial<Record<CasFlag, boolean | null>> = {};
    for (const f of flags) state[f] = typeof row[f] === 'boolean' ? row[f] : null;
    out.set(dnKey(row.DistinguishedName), state);
  }
  return out;
}

export interface MailboxResult {
  readonly identity: string;
  readonly ok: boolean;
  readonly error?: string;
}

/** Applies changes in batches; one mailbox's failure does not stop the rest. */
export async function applyChanges(settings: RunnerSettings, changes: readonly MailboxChange[], batchSize: number): Promise<MailboxResult[]> {
  const results: MailboxResult[] = [];
  for (let start = 0; start < changes.length; start += batchSize) {
    const batch = changes.slice(start, start + batchSize);
    let outcome: RunResult | null = null;
    let failure = '';
    try {
      outcome = await run(settings, changeScript(batch, start));
    } catch (err) {
      failure = err instanceof Error ? err.message : String(err);
    }
    const lines = new Set((outcome?.stdout ?? '').split(/\r?\n/).map((l) => l.trim()));
    batch.forEach((m, i) => {
      const ok = lines.has(`exgate-ok ${start + i}`);
      results.push(ok ? { identity: m.identity, ok } : {
        identity: m.identity, ok,
        error: failure || (lines.has(`exgate-failed ${start + i}`) ? firstError(outcome?.stderr ?? '') : 'no result from the runner'),
      });
    });
  }
  return results;
}

function firstError(stderr: string): string {
  return stderr.split(/\r?\n/).find((l) => l.trim() !== '')?.trim().slice(0, 300) ?? 'Set-CASMailbox failed';
}
