/**
 * `exgate explain --config FILE --user NAME --service SVC [--name HOST] [--ip ADDR] [--json]`:
 * what the gateway would decide for this user and service, and why, without a password. It walks
 * the same stages as a request — the name (421), the service (deny: all before credentials), the
 * account and its state, its transitive groups, every rule — with the same code.
 *
 * --json prints `{decision, reason, rule, user, groups}` (INTERFACE.md) plus `service`,
 * `account` (the DN), `rules` (each rule for the service: id, effect, matched) and `notes`.
 * Exit 0 whenever the question could be answered, allow or deny; 1 when the config, the policy
 * or the directory fails; 2 on bad arguments.
 */
import { parseArgs } from 'node:util';
import { authorize, authorizeAnonymous } from '../authorize.js';
import { classify } from '../classify.js';
import { loadConfig } from '../config/load.js';
import { parseLogon } from '../credentials.js';
import { dnKey } from '../directory/directory.js';
import { ConfigError, DirectoryUnavailableError, type Reason } from '../errors.js';
import { loadPolicy } from '../policy/compile.js';
import { isService, type Service } from '../services.js';
import { logonDomain, openDirectory } from '../state.js';

export interface Explanation {
  decision: 'allow' | 'deny';
  reason: Reason;
  rule: string | null;
  /** `LAB\bob`, normalized. */
  user: string;
  /** Transitive group names (sAMAccountName). */
  groups: string[];
  service: Service;
  account: string | null;
  rules: { id: string; effect: 'allow' | 'deny'; matched: boolean }[];
  notes: string[];
}

const USAGE = 'usage: exgate explain --config FILE --user NAME --service SVC [--name HOST] [--ip ADDR] [--json]';

export async function explain(argv: readonly string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: [...argv], strict: true,
      options: { config: { type: 'string', short: 'c' }, user: { type: 'string' }, service: { type: 'string' }, name: { type: 'string' }, ip: { type: 'string' }, json: { type: 'boolean' } },
    }).values;
  } catch (e) {
    err.write(`exgate explain: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const service = args.service?.toLowerCase();
  if (!args.config || !args.user || !service) return usage(err, 'needs --config, --user and --service');
  if (!isService(service)) return usage(err, `unknown service ${args.service}`);
  try {
    const answer = await decide(args.config, args.user, service, args.name, args.ip);
    out.write(args.json ? JSON.stringify(answer) + '\n' : text(answer));
    return 0;
  } catch (e) {
    if (e instanceof ConfigError || e instanceof DirectoryUnavailableError) {
      err.write(`${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

function usage(err: NodeJS.WritableStream, why: string): number {
  err.write(`exgate explain: ${why}\n${USAGE}\n`);
  return 2;
}

/** The decision for (user, service[, name]), as the gateway would make it. */
export async function decide(configFile: string, userName: string, service: Service, name?: string, ip?: string): Promise<Explanation> {
  const config = loadConfig(configFile);
  const directory = openDirectory(config, { warn: () => {} });
  try {
    const domain = logonDomain(config);
    const policy = await loadPolicy(config.policyFile, directory, domain);
    const logon = parseLogon(userName, domain);
    const answer: Explanation = {
      decision: 'deny', reason: 'bad-credentials', rule: null, user: logon.display, groups: [], service,
      account: null, rules: [], notes: [],
    };
    if (ip) answer.notes.push(`smart lockout state for ${ip} lives in the running gateway; not consulted here`);
    const allRules = policy.byService.get(service);
    if (name) {
      const route = classify(name, name, `/${service}/`, config.names);
      if (!route.ok && route.reason === 'misdirected') return { ...answer, reason: 'misdirected', notes: [...answer.notes, route.detail] };
    }
    // As a request: a service denied to everyone is refused before anyone is looked up.
    const anonymous = authorizeAnonymous(service, policy);
    if (anonymous) {
      answer.rules = [...(allRules?.deny ?? []), ...(allRules?.allow ?? [])].map((r) => ({ id: r.id, effect: r.effect, matched: r.id === anonymous.rule }));
      return { ...answer, reason: anonymous.reason, rule: anonymous.rule, notes: [...answer.notes, 'refused before credentials are asked'] };
    }
    if (logon.kind === 'refused') return { ...answer, notes: [...answer.notes, logon.why] };
    const account = await directory.findAccount(logon);
    if (!account) return { ...answer, notes: [...answer.notes, 'no such account'] };
    const [status, groups, memberships] = await Promise.all([
      directory.accountStatus(account), directory.groupsOf(account), directory.memberships(account, policy.groupDns),
    ]);
    answer.user = account.user;
    answer.account = account.dn;
    answer.groups = groups.map((g) => g.name).sort((a, b) => a.localeCompare(b));
    const key = dnKey(account.dn);
    answer.rules = [...(allRules?.deny ?? []), ...(allRules?.allow ?? [])].map((r) => ({
      id: r.id, effect: r.effect, matched: r.everyone || r.users.has(key) || [...r.groups].some((g) => memberships.has(g)),
    }));
    if (status.refusal) return { ...answer, reason: status.refusal };
    const decision = authorize(service, { dn: account.dn, groups: memberships }, policy);
    return { ...answer, decision: decision.allow ? 'allow' : 'deny', reason: decision.reason, rule: decision.rule };
  } finally {
    await directory.close();
  }
}

function text(a: Explanation): string {
  const lines = [
    `user     ${a.user}${a.account ? `  (${a.account})` : ''}`,
    `service  ${a.service}`,
    `groups   ${a.groups.length > 0 ? a.groups.join(', ') : '(none)'}`,
    'rules',
    ...(a.rules.length > 0 ? a.rules.map((r) => `  ${r.matched ? '✓' : '·'} ${r.effect.padEnd(5)} ${r.id}`) : ['  (no rule names this service)']),
    `decision ${a.decision.toUpperCase()}  reason ${a.reason}${a.rule ? `  rule ${a.rule}` : ''}`,
    ...a.notes.map((n) => `note     ${n}`),
  ];
  return lines.join('\n') + '\n';
}
