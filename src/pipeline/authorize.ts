/**
 * authorize: (service, identity, policy) → Decision. Pure and total: no I/O, no req/res, an
 * answer for every input (STYLE.md §2–4).
 *
 * - A deny that matches beats any allow.
 * - A service no rule allows is denied (default deny); an empty group list means nobody.
 * - In report-only mode a would-be denial is let through with reason `report-only`, and the rule
 *   that would have denied it is named.
 */
import type { Policy, Rule } from '../policy/compile.js';
import type { Service } from './services.js';

/** Who is asking, as far as policy cares: the account's DN and its policy-relevant groups (lowercase DNs). */
export interface Principal {
  readonly dn: string;
  readonly groups: ReadonlySet<string>;
}

export type Allow = { readonly allow: true; readonly reason: 'allowed' | 'report-only'; readonly rule: string | null };
export type Deny = {
  readonly allow: false;
  readonly reason: 'not-allowed' | 'denied-by-rule';
  readonly rule: string | null;
};
export type Decision = Allow | Deny;

/** Decides whether `principal` may use `service`. */
export function authorize(service: Service, principal: Principal, policy: Policy): Decision {
  const verdict = evaluate(service, principal, policy);
  if (verdict.allow || policy.mode === 'enforce') return verdict;
  return { allow: true, reason: 'report-only', rule: verdict.rule };
}

function evaluate(service: Service, principal: Principal, policy: Policy): Decision {
  const rules = policy.byService.get(service);
  if (!rules) return { allow: false, reason: 'not-allowed', rule: null };
  const userKey = principal.dn.toLowerCase();
  const denied = firstMatch(indexOf(rules.deny), userKey, principal.groups);
  if (denied) return { allow: false, reason: 'denied-by-rule', rule: denied.id };
  const allowed = firstMatch(indexOf(rules.allow), userKey, principal.groups);
  if (allowed) return { allow: true, reason: 'allowed', rule: allowed.id };
  return { allow: false, reason: 'not-allowed', rule: null };
}

/**
 * Rules by what names them, each pointing at the first rule (in policy order) that does: a request
 * costs one lookup per group of the user, however many rules and groups the policy has (1,000 rules
 * and 10,000 groups walked every rule's groups: 2.98× the cost of one rule, issue 16).
 */
interface RuleIndex {
  readonly rules: readonly Rule[];
  /** The first rule naming everyone, or Infinity. */
  readonly everyone: number;
  readonly byGroup: ReadonlyMap<string, number>;
  readonly byUser: ReadonlyMap<string, number>;
}

/** Built once per rule list (a policy is frozen; a reload makes new lists). */
const indexes = new WeakMap<readonly Rule[], RuleIndex>();

function indexOf(rules: readonly Rule[]): RuleIndex {
  let index = indexes.get(rules);
  if (index) return index;
  const byGroup = new Map<string, number>();
  const byUser = new Map<string, number>();
  let everyone = Number.POSITIVE_INFINITY;
  rules.forEach((rule, i) => {
    if (rule.everyone && everyone === Number.POSITIVE_INFINITY) everyone = i;
    for (const g of rule.groups) if (!byGroup.has(g)) byGroup.set(g, i);
    for (const u of rule.users) if (!byUser.has(u)) byUser.set(u, i);
  });
  index = { rules, everyone, byGroup, byUser };
  indexes.set(rules, index);
  return index;
}

/** The first rule of the list that names the principal, or null (the same answer as trying each in turn). */
function firstMatch(index: RuleIndex, userKey: string, groups: ReadonlySet<string>): Rule | null {
  let first = Math.min(index.everyone, index.byUser.get(userKey) ?? Number.POSITIVE_INFINITY);
  for (const g of groups) {
    const i = index.byGroup.get(g);
    if (i !== undefined && i < first) first = i;
  }
  return first === Number.POSITIVE_INFINITY ? null : (index.rules[first] ?? null);
}

/** A rule for a service, and whether it names the principal. */
export interface RuleMatch {
  readonly rule: Rule;
  readonly matched: boolean;
}

/**
 * Every rule for `service` in the order authorize() weighs them (deny rules, then allow rules),
 * each with whether it names `principal` (null, no such account: none does). For `explain`.
 */
export function ruleMatches(service: Service, principal: Principal | null, policy: Policy): RuleMatch[] {
  const rules = policy.byService.get(service);
  if (!rules) return [];
  const userKey = principal?.dn.toLowerCase() ?? '';
  return [...rules.deny, ...rules.allow].map((rule) => ({
    rule,
    matched: principal !== null && matches(rule, userKey, principal.groups),
  }));
}

/** An allow rule that names at least someone (an empty group list means nobody). */
function admitsAnyone(rule: Rule): boolean {
  return rule.everyone || rule.groups.size > 0 || rule.users.size > 0;
}

function matches(rule: Rule, userKey: string, groups: ReadonlySet<string>): boolean {
  if (rule.everyone) return true;
  if (rule.users.has(userKey)) return true;
  for (const g of rule.groups) if (groups.has(g)) return true;
  return false;
}

/**
 * What can be decided before anyone has authenticated: a service denied to everyone
 * (`deny: all`) or allowed to no one is refused without asking for credentials.
 * Returns null when the answer depends on who is asking.
 */
export function authorizeAnonymous(service: Service, policy: Policy): Deny | null {
  const rules = policy.byService.get(service);
  const denyAll = rules?.deny.find((r) => r.everyone);
  const verdict: Deny | null = denyAll
    ? { allow: false, reason: 'denied-by-rule', rule: denyAll.id }
    : !rules?.allow.some(admitsAnyone)
      ? { allow: false, reason: 'not-allowed', rule: null }
      : null;
  if (verdict === null || policy.mode === 'enforce') return verdict;
  return null; // report-only: authenticate anyway, so the would-be denial is logged with its user
}
