/**
 * `exgate mailbox-flags plan --config FILE [--json]` and `exgate mailbox-flags apply --config FILE
 * [--force]`: keep Exchange's per-mailbox flags (Set-CASMailbox) in step with the policy groups.
 *
 * plan prints every change (who, which flag, from, to, why) and the exact PowerShell apply would
 * run; `--json` prints `{changes: [{identity, flag, from, to, reason}]}` plus `total`, `blocked`,
 * `share`, `missing` and, when refused, `refusal`. apply runs the plan in batches and reports
 * each mailbox. Exit 0 when done or nothing to do, 1 when refused or any mailbox failed, 2 on bad
 * arguments. `--force` overrides the share limit only, never an empty group or a failed read.
 */
import { parseArgs } from 'node:util';
import { appLogger } from '../pipeline/access-log.js';
import { loadConfig } from '../config/load.js';
import { ConfigError, DirectoryUnavailableError } from '../errors.js';
import { byMailbox, quotable, setLine } from '../mailbox-flags/powershell.js';
import { applyPlan, planSync, type SyncPlan } from '../mailbox-flags/sync.js';
import { loadPolicy } from '../policy/compile.js';
import { logonDomain, openDirectory } from '../runtime/state.js';

export const MAILBOX_FLAGS_USAGE =
  'usage: exgate mailbox-flags plan --config FILE [--json]\n       exgate mailbox-flags apply --config FILE [--force]';

export async function mailboxFlags(
  argv: readonly string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const [action, ...rest] = argv;
  let args;
  try {
    args = parseArgs({
      args: rest,
      strict: true,
      options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean' }, force: { type: 'boolean' } },
    }).values;
  } catch (e) {
    err.write(`exgate mailbox-flags: ${(e as Error).message}\n${MAILBOX_FLAGS_USAGE}\n`);
    return 2;
  }
  if ((action !== 'plan' && action !== 'apply') || !args.config || (action === 'plan' && args.force)) {
    err.write(`${MAILBOX_FLAGS_USAGE}\n`);
    return 2;
  }
  try {
    const config = loadConfig(args.config);
    if (!config.mailboxFlags) {
      err.write(`${config.file}: mailboxFlags: not configured (runner, flags)\n`);
      return 1;
    }
    const settings = config.mailboxFlags;
    const directory = openDirectory(config, { warn: () => {} });
    try {
      const policy = await loadPolicy(config.policyFile, directory, logonDomain(config));
      const planned = await planSync(settings, directory, policy);
      if (action === 'plan') return printPlan(planned, settings.maxBlockShare, args.json === true, out);
      return await apply(planned, args.force === true, settings, config.log.level, out, err);
    } finally {
      await directory.close();
    }
  } catch (e) {
    if (e instanceof ConfigError || e instanceof DirectoryUnavailableError) {
      err.write(`${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

function printPlan(planned: SyncPlan, limit: number, json: boolean, out: NodeJS.WritableStream): number {
  if (!planned.ok) {
    out.write(
      json ? JSON.stringify({ changes: [], refusal: planned.refusal }) + '\n' : `refused: ${planned.refusal}\n`,
    );
    return 1;
  }
  const { plan, share } = planned;
  if (json) {
    out.write(
      JSON.stringify({
        changes: plan.changes.map(({ identity, flag, from, to, reason }) => ({ identity, flag, from, to, reason })),
        total: plan.total,
        blocked: plan.blocked,
        share,
        missing: plan.missing,
        ...(planned.overShare ? { refusal: shareRefusal(plan.blocked, plan.total, limit) } : {}),
      }) + '\n',
    );
    return 0;
  }
  if (plan.changes.length === 0) {
    out.write(`nothing to change (${plan.total} mailboxes in step)\n`);
    return 0;
  }
  for (const c of plan.changes)
    out.write(`${c.identity}\n  ${c.flag}: ${c.from ?? '(none)'} -> ${c.to}   ${c.reason}\n`);
  out.write(
    `\n${plan.changes.length} changes on ${byMailbox(plan.changes).length} of ${plan.total} mailboxes; ${plan.blocked} blocked (${(share * 100).toFixed(1)}%)\n`,
  );
  if (planned.overShare)
    out.write(`apply would refuse: ${shareRefusal(plan.blocked, plan.total, limit)} (--force overrides)\n`);
  if (plan.missing.length > 0)
    out.write(`${plan.missing.length} mailboxes in AD were not reported by Exchange and are left alone\n`);
  out.write('\nPowerShell that apply would run:\n');
  for (const m of byMailbox(plan.changes)) {
    out.write(
      quotable(m.identity) ? setLine(m) + '\n' : `# skipped: ${JSON.stringify(m.identity)} has a control character\n`,
    );
  }
  return 0;
}

async function apply(
  planned: SyncPlan,
  force: boolean,
  settings: NonNullable<ReturnType<typeof loadConfig>['mailboxFlags']>,
  level: string,
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream,
): Promise<number> {
  if (!planned.ok) {
    err.write(`refused: ${planned.refusal}\n`);
    return 1;
  }
  if (planned.overShare && !force) {
    err.write(
      `refused: ${shareRefusal(planned.plan.blocked, planned.plan.total, settings.maxBlockShare)}; --force to apply anyway\n`,
    );
    return 1;
  }
  if (planned.plan.changes.length === 0) {
    out.write(`nothing to change (${planned.plan.total} mailboxes in step)\n`);
    return 0;
  }
  const results = await applyPlan(settings, planned.plan, appLogger(level));
  for (const r of results) out.write(`${r.ok ? 'ok    ' : 'FAILED'} ${r.identity}${r.error ? `  ${r.error}` : ''}\n`);
  const failed = results.filter((r) => !r.ok).length;
  out.write(`${results.length - failed} mailboxes changed, ${failed} failed\n`);
  return failed > 0 ? 1 : 0;
}

function shareRefusal(blocked: number, total: number, limit: number): string {
  return `the plan blocks ${blocked} of ${total} mailboxes (${((blocked / Math.max(1, total)) * 100).toFixed(1)}%), more than maxBlockShare ${limit}`;
}
