/**
 * `exgate explain --config FILE --user NAME --service SVC [--name HOST] [--ip ADDR] [--json]`:
 * what the gateway would decide for this user and service, and why, without a password. It walks
 * the same stages as a request — the name (421), the service (deny: all before credentials), the
 * account and its state, its transitive groups, every rule — with the same code. The account
 * and its groups are shown whenever the user exists, also when an earlier stage decides.
 *
 * --json prints `{decision, reason, rule, user, groups}` (INTERFACE.md) plus `service`,
 * `account` (the DN), `rules` (each rule for the service: id, effect, matched) and `notes`.
 * Exit 0 whenever the question could be answered, allow or deny; 1 when the config, the policy
 * or the directory fails; 2 on bad arguments.
 */
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { authorize, authorizeAnonymous, ruleMatches, type Principal } from '../pipeline/authorize.js';
import { classify } from '../pipeline/classify.js';
import { loadConfig } from '../config/load.js';
import { parseLogon, type Logon } from '../auth/credentials.js';
import type { Account, Directory, PasswordRefusal } from '../directory/directory.js';
import { ConfigError, DirectoryUnavailableError, type Reason } from '../errors.js';
import { loadPolicy, type Policy } from '../policy/compile.js';
import { isService, type Service } from '../pipeline/services.js';
import { logonDomain, openDirectory } from '../runtime/state.js';

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

/** What `explain` says of a service that signs in with forms (OWA, ECP by default). */
const FORMS_NOTE =
  'signs in with forms: the gateway checks the sign-in form as it checks a Basic password, then keeps a ' +
  'session, re-checked against AD every cache.groupTtlSeconds; a browser without one gets the sign-in page (no-session)';

export const EXPLAIN_USAGE =
  'usage: exgate explain --config FILE --user NAME --service SVC [--name HOST] [--ip ADDR] [--json]';

export async function explain(
  argv: readonly string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: [...argv],
      strict: true,
      options: {
        config: { type: 'string', short: 'c' },
        user: { type: 'string' },
        service: { type: 'string' },
        name: { type: 'string' },
        ip: { type: 'string' },
        json: { type: 'boolean' },
      },
    }).values;
  } catch (e) {
    err.write(`exgate explain: ${(e as Error).message}\n${EXPLAIN_USAGE}\n`);
    return 2;
  }
  const service = args.service?.toLowerCase();
  if (!args.config || !args.user || !service) return usage(err, 'needs --config, --user and --service');
  if (!isService(service)) return usage(err, `unknown service ${args.service}`);
  if (args.ip !== undefined && isIP(args.ip) === 0)
    return usage(err, `--ip ${JSON.stringify(args.ip)} is not an IPv4 or IPv6 address`);
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
  err.write(`exgate explain: ${why}\n${EXPLAIN_USAGE}\n`);
  return 2;
}

/**
 * The decision for (user, service[, name]), as the gateway would make it. The account and its
 * groups are looked up whenever the user exists, also when the gateway would refuse before
 * asking for credentials (a wrong name, a service denied to everyone): that refusal stays the
 * decision, but the answer still shows who the user is and what they belong to.
 */
export async function decide(
  configFile: string,
  userName: string,
  service: Service,
  name?: string,
  ip?: string,
): Promise<Explanation> {
  const config = loadConfig(configFile);
  const directory = openDirectory(config, { warn: () => {} });
  try {
    const domain = logonDomain(config);
    const policy = await loadPolicy(config.policyFile, directory, domain);
    const logon = parseLogon(userName, domain);
    const found = logon.kind === 'refused' ? null : await lookUp(directory, logon, policy);
    const answer: Explanation = {
      decision: 'deny',
      reason: 'bad-credentials',
      rule: null,
      user: found?.account.user ?? logon.display,
      groups: found?.groups ?? [],
      service,
      account: found?.account.dn ?? null,
      rules: ruleMatches(service, found?.principal ?? null, policy).map(({ rule, matched }) => ({
        id: rule.id,
        effect: rule.effect,
        matched,
      })),
      notes: [
        ...(ip ? [`smart lockout state for ${ip} lives in the running gateway; not consulted here`] : []),
        ...(config.services[service].auth === 'forms' ? [FORMS_NOTE] : []),
      ],
    };
    const refused = (reason: Reason, note?: string): Explanation => ({
      ...answer,
      reason,
      notes: note ? [...answer.notes, note] : answer.notes,
    });

    // In the order a request meets them: the name (421), the service (deny: all before
    // credentials), the logon, the account and its state, then the rules.
    if (name) {
      const route = classify(name, name, `/${service}/`, config.names);
      if (!route.ok && route.reason === 'misdirected') return refused('misdirected', route.detail);
    }
    const anonymous = authorizeAnonymous(service, policy);
    if (anonymous) {
      // The deciding rule matches whoever asks, a user who does not exist too.
      const shown = answer.rules.map((r) => (r.id === anonymous.rule ? { ...r, matched: true } : r));
      return {
        ...refused(anonymous.reason, 'refused before credentials are asked'),
        rules: shown,
        rule: anonymous.rule,
      };
    }
    if (logon.kind === 'refused') return refused('bad-credentials', logon.why);
    if (!found) return refused('bad-credentials', 'no such account');
    if (found.refusal) return refused(found.refusal);
    const decision = authorize(service, found.principal, policy);
    return { ...answer, decision: decision.allow ? 'allow' : 'deny', reason: decision.reason, rule: decision.rule };
  } finally {
    await directory.close();
  }
}

interface Found {
  readonly account: Account;
  readonly refusal: PasswordRefusal | null;
  /** Transitive group names, sorted. */
  readonly groups: string[];
  /** The account as the policy sees it: its DN and the policy's groups it belongs to (lowercase DNs). */
  readonly principal: Principal;
}

/** The account a logon names, its state and its groups; null when there is no such account. */
async function lookUp(
  directory: Directory,
  logon: Logon & { kind: 'sam' | 'upn' },
  policy: Policy,
): Promise<Found | null> {
  const account = await directory.findAccount(logon);
  if (!account) return null;
  const [status, groups, memberships] = await Promise.all([
    directory.accountStatus(account),
    directory.groupsOf(account),
    directory.memberships(account, policy.groupDns),
  ]);
  const names = groups.map((g) => g.name).sort((a, b) => a.localeCompare(b));
  return { account, refusal: status.refusal, groups: names, principal: { dn: account.dn, groups: memberships } };
}

function text(a: Explanation): string {
  const lines = [
    `user     ${a.user}${a.account ? `  (${a.account})` : ''}`,
    `service  ${a.service}`,
    `groups   ${a.groups.length > 0 ? a.groups.join(', ') : '(none)'}`,
    'rules',
    ...(a.rules.length > 0
      ? a.rules.map((r) => `  ${r.matched ? '✓' : '·'} ${r.effect.padEnd(5)} ${r.id}`)
      : ['  (no rule names this service)']),
    `decision ${a.decision.toUpperCase()}  reason ${a.reason}${a.rule ? `  rule ${a.rule}` : ''}`,
    ...a.notes.map((n) => `note     ${n}`),
  ];
  return lines.join('\n') + '\n';
}
