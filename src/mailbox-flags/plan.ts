/**
 * plan: the Set-CASMailbox changes that bring Exchange's per-mailbox flags in step with the
 * policy groups (second line of defence behind the gateway). Pure: the same inputs always give
 * the same changes, and a plan over a state it produced is empty (idempotent).
 *
 * For each mailbox and each mapped flag, the policy decides whether the mailbox's user may use
 * the flag's service from outside (authorize(), transitive groups); the flag gets the mapped
 * value for "allowed", the other one for "not allowed". Report-only mode counts as allowed: a
 * policy being tried out never blocks anyone here either.
 */
import { authorize } from '../pipeline/authorize.js';
import { dnKey, type Account } from '../directory/directory.js';
import type { Policy } from '../policy/compile.js';
import type { Service } from '../pipeline/services.js';

export type CasFlag =
  | 'MAPIBlockOutlookRpcHttp'
  | 'MAPIBlockOutlookExternalConnectivity'
  | 'ActiveSyncEnabled'
  | 'EwsEnabled'
  | 'OWAEnabled';

export interface FlagRule {
  readonly service: Service;
  /** The value for a user the policy allows the service from outside. */
  readonly allowedValue: boolean;
}

/** One flag of one mailbox to change (INTERFACE.md `{identity, flag, from, to, reason}`). */
export interface Change {
  /** The mailbox's distinguishedName: unique in the forest. */
  readonly identity: string;
  readonly flag: CasFlag;
  /** The current value (null: Exchange reported none). */
  readonly from: boolean | null;
  readonly to: boolean;
  readonly reason: string;
  /** True when the change takes access away (blocks). */
  readonly blocks: boolean;
}

export interface PlanInput {
  readonly mailboxes: readonly Account[];
  /** Exchange's current flags per mailbox, keyed by lowercase DN. */
  readonly current: ReadonlyMap<string, Readonly<Partial<Record<CasFlag, boolean | null>>>>;
  /** Each mailbox's policy-group memberships (lowercase DNs), keyed by lowercase DN. */
  readonly memberships: ReadonlyMap<string, ReadonlySet<string>>;
  readonly policy: Policy;
  readonly flags: Readonly<Partial<Record<CasFlag, FlagRule>>>;
}

export interface Plan {
  readonly changes: readonly Change[];
  /** Mailboxes considered (in AD and in Exchange). */
  readonly total: number;
  /** Mailboxes the plan blocks (at least one change that takes access away). */
  readonly blocked: number;
  /** Mailboxes in AD that Exchange did not report (left alone). */
  readonly missing: readonly string[];
}

export function plan(input: PlanInput): Plan {
  const changes: Change[] = [];
  const missing: string[] = [];
  const blockedBoxes = new Set<string>();
  let total = 0;
  const rules = Object.entries(input.flags) as [CasFlag, FlagRule][];
  for (const mailbox of [...input.mailboxes].sort((a, b) => a.dn.localeCompare(b.dn))) {
    const key = dnKey(mailbox.dn);
    const current = input.current.get(key);
    if (!current) {
      missing.push(mailbox.dn);
      continue;
    }
    total++;
    const principal = { dn: mailbox.dn, groups: input.memberships.get(key) ?? new Set<string>() };
    for (const [flag, rule] of rules) {
      const decision = authorize(rule.service, principal, input.policy);
      const to = decision.allow ? rule.allowedValue : !rule.allowedValue;
      const from = current[flag] ?? null;
      if (from === to) continue;
      const blocks = !decision.allow;
      if (blocks) blockedBoxes.add(key);
      changes.push({ identity: mailbox.dn, flag, from, to, reason: why(rule.service, decision), blocks });
    }
  }
  return { changes, total, blocked: blockedBoxes.size, missing };
}

function why(service: Service, d: ReturnType<typeof authorize>): string {
  const rule = d.rule ? ` by rule ${d.rule}` : '';
  return d.allow
    ? `allowed ${service} from outside${rule}`
    : `not allowed ${service} from outside (${d.reason}${rule})`;
}
