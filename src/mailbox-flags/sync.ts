/**
 * One mailbox-flags sync: read AD (mailboxes, transitive members of the policy's groups), read
 * Exchange (current flags), plan, check the safety limits, and — for apply — run the changes.
 *
 * Safety limits (the flaws of the cyclic script this replaces):
 * - a directory or Exchange read that fails refuses the whole sync, never "nobody is allowed";
 * - an allow group that resolves to no member refuses too, even with --force (a lookup that
 *   silently returns nothing must not block everyone);
 * - a plan that would block more than `maxBlockShare` of the mailboxes is refused unless --force.
 */
import type { Logger } from 'pino';
import type { Config } from '../config/load.js';
import { dnKey, type Directory } from '../directory/directory.js';
import type { Policy } from '../policy/compile.js';
import { plan, type CasFlag, type Plan } from './plan.js';
import { byMailbox } from './powershell.js';
import { applyChanges, readCurrent, type MailboxResult, type RunnerSettings } from './runner.js';

export type SyncPlan =
  | { readonly ok: true; readonly plan: Plan; readonly share: number; readonly overShare: boolean }
  | { readonly ok: false; readonly refusal: string };

type Settings = NonNullable<Config['mailboxFlags']>;

export function runnerSettings(s: Settings): RunnerSettings {
  return { command: s.runner, timeoutMs: s.runnerTimeoutSeconds * 1000 };
}

/** Reads both sides and plans. */
export async function planSync(settings: Settings, directory: Directory, policy: Policy): Promise<SyncPlan> {
  const flags = Object.keys(settings.flags) as CasFlag[];
  const services = new Set(Object.values(settings.flags).map((r) => r.service));
  let mailboxes;
  const members = new Map<string, ReadonlySet<string>>();
  try {
    mailboxes = await directory.listMailboxes();
    for (const g of policy.groupDns) members.set(g, await directory.membersOf(g));
  } catch (err) {
    return { ok: false, refusal: `the directory read failed: ${err instanceof Error ? err.message : String(err)}` };
  }
  for (const g of allowGroups(policy, services)) {
    if ((members.get(g)?.size ?? 0) === 0)
      return { ok: false, refusal: `policy group ${policy.groupNames.get(g) ?? g} resolves to no member` };
  }
  let current;
  try {
    current = await readCurrent(runnerSettings(settings), flags);
  } catch (err) {
    return { ok: false, refusal: err instanceof Error ? err.message : String(err) };
  }
  const memberships = new Map<string, Set<string>>();
  for (const [group, users] of members) {
    for (const u of users) {
      const set = memberships.get(u) ?? new Set<string>();
      set.add(group);
      memberships.set(u, set);
    }
  }
  const p = plan({ mailboxes, current, memberships, policy, flags: settings.flags });
  const share = p.total === 0 ? 0 : p.blocked / p.total;
  return { ok: true, plan: p, share, overShare: share > settings.maxBlockShare };
}

/** The groups of allow rules for the services the flags follow. */
function allowGroups(policy: Policy, services: ReadonlySet<string>): Set<string> {
  const out = new Set<string>();
  for (const [service, rules] of policy.byService) {
    if (!services.has(service)) continue;
    for (const r of rules.allow) for (const g of r.groups) out.add(g);
  }
  return out;
}

/** Applies a plan; logs every change and its outcome. */
export async function applyPlan(
  settings: Settings,
  p: Plan,
  log: Pick<Logger, 'info' | 'error'>,
): Promise<MailboxResult[]> {
  const batches = byMailbox(p.changes);
  const results = await applyChanges(runnerSettings(settings), batches, settings.batchSize);
  const byIdentity = new Map(results.map((r) => [dnKey(r.identity), r]));
  for (const c of p.changes) {
    const r = byIdentity.get(dnKey(c.identity));
    const entry = { identity: c.identity, flag: c.flag, from: c.from, to: c.to, reason: c.reason };
    if (r?.ok) log.info(entry, 'mailbox flag changed');
    else log.error({ ...entry, error: r?.error ?? 'no result' }, 'mailbox flag change failed');
  }
  return results;
}
