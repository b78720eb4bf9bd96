/**
 * The scheduled mailbox-flags sync (`mailboxFlags.intervalMinutes`). Its one owner is `serve`
 * (serve.ts), in the process that supervises: the single process, or the primary of workers,
 * never a worker, so one sync runs at a time however many workers serve.
 */
import type { Logger } from 'pino';
import { loadConfig, type Config } from '../config/load.js';
import { logonDomain, openDirectory } from '../runtime/state.js';
import { loadPolicy } from '../policy/compile.js';
import { applyPlan, planSync } from './sync.js';

/**
 * One scheduled sync: the same plan and the same safety limits as `apply` without --force;
 * refusals and failures are logged, never thrown. The config is read afresh for each sync.
 */
async function syncOnce(configFile: string, log: Pick<Logger, 'info' | 'warn' | 'error'>): Promise<void> {
  try {
    const config = loadConfig(configFile);
    if (!config.mailboxFlags) return;
    const directory = openDirectory(config, { warn: () => {} });
    try {
      const policy = await loadPolicy(config.policyFile, directory, logonDomain(config));
      const planned = await planSync(config.mailboxFlags, directory, policy);
      if (!planned.ok) return log.warn({ refusal: planned.refusal }, 'mailbox-flags sync refused');
      if (planned.overShare)
        return log.warn(
          { blocked: planned.plan.blocked, total: planned.plan.total },
          'mailbox-flags sync refused: over maxBlockShare (run apply --force by hand)',
        );
      if (planned.plan.changes.length === 0) return log.info({ total: planned.plan.total }, 'mailbox flags in step');
      const results = await applyPlan(config.mailboxFlags, planned.plan, log);
      log.info(
        { changed: results.filter((r) => r.ok).length, failed: results.filter((r) => !r.ok).length },
        'mailbox-flags sync done',
      );
    } finally {
      await directory.close();
    }
  } catch (err) {
    log.error({ err: err instanceof Error ? err.message : String(err) }, 'mailbox-flags sync failed');
  }
}

/** Runs a sync every `mailboxFlags.intervalMinutes` (default 0: never). Returns a stop function. */
export function scheduleMailboxFlags(config: Config, log: Pick<Logger, 'info' | 'warn' | 'error'>): () => void {
  const minutes = config.mailboxFlags?.intervalMinutes ?? 0;
  const configFile = config.file;
  if (!(minutes > 0)) return () => {};
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    void syncOnce(configFile, log).finally(() => {
      running = false;
    });
  }, minutes * 60_000);
  timer.unref();
  return () => clearInterval(timer);
}
