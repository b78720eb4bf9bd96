/**
 * The runner: the command that receives a PowerShell script on stdin (INTERFACE.md), e.g.
 * `pwsh -NoProfile -File exchange-session.ps1` with a remote Exchange session. Reads Exchange's
 * current flags with it, and applies changes with it in batches, reporting each mailbox.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dnKey } from '../directory/directory.js';
import type { CasFlag } from './plan.js';
import { changeScript, quotable, readScript, type MailboxChange } from './powershell.js';

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
    // SIGTERM first: the runner closes its remote session (Exchange limits shells per user).
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    }, settings.timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString('utf8');
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString('utf8');
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(script);
  });
}

/** Exchange's current flags per mailbox (lowercase DN). Throws when the read fails. */
export async function readCurrent(
  settings: RunnerSettings,
  flags: readonly CasFlag[],
): Promise<Map<string, Partial<Record<CasFlag, boolean | null>>>> {
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
export async function applyChanges(
  settings: RunnerSettings,
  all: readonly MailboxChange[],
  batchSize: number,
): Promise<MailboxResult[]> {
  const results: MailboxResult[] = all
    .filter((m) => !quotable(m.identity))
    .map((m) => ({
      identity: m.identity,
      ok: false,
      error: 'the identity has a control character and cannot be written safely',
    }));
  const changes = all.filter((m) => quotable(m.identity));
  const nonce = randomBytes(6).toString('hex');
  for (let start = 0; start < changes.length; start += batchSize) {
    const batch = changes.slice(start, start + batchSize);
    let outcome: RunResult | null = null;
    let failure = '';
    try {
      outcome = await run(settings, changeScript(batch, nonce, start));
    } catch (err) {
      failure = err instanceof Error ? err.message : String(err);
    }
    const lines = (outcome?.stdout ?? '').split(/\r?\n/).map((l) => l.trim());
    batch.forEach((m, i) => {
      const ok = lines.includes(`exgate-ok ${nonce} ${start + i}`);
      const failedAt = lines.indexOf(`exgate-failed ${nonce} ${start + i}`);
      results.push(
        ok
          ? { identity: m.identity, ok }
          : {
              identity: m.identity,
              ok,
              error:
                failure ||
                (failedAt >= 0
                  ? (lines[failedAt + 1] || 'Set-CASMailbox failed').slice(0, 300)
                  : 'no result from the runner'),
            },
      );
    });
  }
  return results;
}
