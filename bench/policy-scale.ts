/**
 * `policy`: the gateway's CPU per request (keep-alive GET, warm auth) with 1 rule and 10 groups
 * against 1,000 rules and 10,000 groups in the file directory, beside nginx and the bare
 * forwarder in the same run. The large policy is built so that the user's request is decided by
 * its last rule: 100 deny rules and 899 allow rules name groups the user is not in.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { table } from './stats.js';
import { GET_PATH, type Lab, NAME, S, suite, TARGETS, USER } from './lab.js';
import { comparison, header, interleave, perRound, ratio, sanity, type Target, verdict, x } from './measure.js';
import { profileGateway } from './profile.js';
import { startBare, startGatewayProcess, startNginx, startUpstream } from './servers.js';

const SERVICES = ['owa', 'ews', 'activesync'];

/** A users file and a policy with `rules` rules over `groups` groups; the user is in 10 of them. */
export function writePolicy(lab: Lab, tag: string, rules: number, groups: number): Record<string, unknown> {
  const alice = (parse(readFileSync(lab.users, 'utf8')) as { users: Record<string, unknown> }).users[USER];
  const name = (i: number) => `G${String(i).padStart(5, '0')}`;
  const mine = Array.from({ length: 9 }, (_, i) => name(groups - 10 + i)); // plus BenchUsers: 10 groups
  const dir: Record<string, { members: string[] }> = { BenchUsers: { members: [USER] } };
  for (let i = 0; i < groups - 1; i++) dir[name(i)] = { members: mine.includes(name(i)) ? [USER] : [] };
  const list: Record<string, unknown>[] = [];
  for (let r = 0; r < rules - 1; r++) {
    const named = Array.from({ length: 10 }, (_, k) => name(r * 10 + k)).filter((g) => !mine.includes(g) && g in dir);
    const who = { groups: named.length ? named : [name(0)] };
    list.push({ id: `r${r}`, services: SERVICES, ...(r % 10 === 0 ? { deny: who } : { allow: who }) });
  }
  list.push({ id: 'bench', services: SERVICES, allow: { groups: ['BenchUsers', ...mine] } });
  const users = join(lab.dir, `users-${tag}.yaml`);
  const policy = join(lab.dir, `policy-${tag}.yaml`);
  // No YAML aliases for the repeated lists (the gateway's loader caps them, as a YAML bomb guard).
  writeFileSync(users, stringify({ users: { [USER]: alice }, groups: dir }, { aliasDuplicateObjects: false }));
  writeFileSync(policy, stringify({ mode: 'enforce', rules: list }, { aliasDuplicateObjects: false }));
  return {
    directory: { type: 'file', path: users, netbiosDomain: 'BENCH', upnSuffixes: [NAME] },
    policyFile: policy,
  };
}

export async function policyScaleBench(): Promise<string> {
  return suite(async (lab) => {
    const upstream = await startUpstream(S.upstream, lab);
    const nginx = await startNginx(lab, 'nginx', upstream.port);
    const bare = await startBare(lab, upstream.port);
    const small = await startGatewayProcess(lab, 'gw-small', 'gateway, 1 rule, 10 groups', upstream.port, {
      extra: writePolicy(lab, 'small', 1, 10),
    });
    const largeExtra = writePolicy(lab, 'large', 1000, 10_000);
    const large = await startGatewayProcess(lab, 'gw-large', 'gateway, 1,000 rules, 10,000 groups', upstream.port, {
      extra: largeExtra,
    });
    const targets: Target[] = [nginx, bare, small, large].map((s) => ({
      ...s,
      url: `https://127.0.0.1:${s.port}${GET_PATH}`,
      upstream,
      baseline: !s.id.startsWith('gw-'),
    }));
    for (const t of targets) await sanity(t);
    const runs = await interleave(targets, 'policy');
    const scale = ratio(runs, 'gw-large', 'gw-small');
    const profile =
      S.profile === 'always' || (S.profile === 'auto' && !(scale <= TARGETS.policyScale))
        ? await profileGateway(lab, upstream, 'gw-large-profiled', 'gateway, 1,000 rules, 10,000 groups', largeExtra)
        : '';
    return [
      header([
        `Load: as in \`proxy\` (keep-alive GET 1 KiB, warm Basic auth, access log on), ${S.rounds} interleaved rounds of ${S.seconds} s. Both gateways: file directory with the one bench user in 10 groups. Small: 10 groups, 1 rule. Large: 10,000 groups, 1,000 rules of 10 groups each (every 10th a deny rule); only the last rule names the user's groups, so every request walks all of them once its decision is not cached.`,
      ]),
      '',
      '### Policy size, keep-alive GET 1 KiB',
      '',
      comparison(targets, runs),
      '',
      'Per round:',
      '',
      perRound(targets, runs),
      '',
      '### Target (issue 16)',
      '',
      table(
        ['target', 'measured', 'limit', 'result'],
        [
          [
            '1,000 rules and 10,000 groups ÷ 1 rule and 10 groups, CPU/req',
            x(scale),
            `≤ ${TARGETS.policyScale}×`,
            verdict(scale, TARGETS.policyScale, 'max'),
          ],
        ],
      ),
      ...(profile ? ['', profile] : []),
    ].join('\n');
  });
}
