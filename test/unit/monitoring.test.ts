/**
 * deploy/'s monitoring files against the real thing: promtool checks and unit-tests the alert
 * rules, and every metric the rules and the Grafana dashboard name is one a running gateway
 * exports on its admin listener's /metrics (a gateway with a `file` directory: no DC needed).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { USERS } from '../helpers/ad-fixtures.js';
import { send, startHarness, type Harness } from '../helpers/gateway-harness.js';

const RULES = 'deploy/prometheus-rules.yml';
const promtool = (...args: string[]) =>
  execFileSync('promtool', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

interface Rule {
  alert: string;
  expr: string;
}
interface Panel {
  title: string;
  type: string;
  targets?: { expr: string }[];
}

const rules = (): Rule[] =>
  (parse(readFileSync(RULES, 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);
const dashboard = () =>
  JSON.parse(readFileSync('deploy/grafana-dashboard.json', 'utf8')) as {
    panels: Panel[];
    templating: { list: { name: string; definition?: string }[] };
  };

/** The metric names a PromQL expression reads: identifiers left once strings, matchers, ranges,
 * grouping lists, variables, function calls and keywords are taken out. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '')
    .replace(/\$\w+/g, '');
  const keywords = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);
  const words = [...bare.matchAll(/\b[a-zA-Z_:][\w:]*\b(?!\s*\()/g)].map((m) => m[0]);
  return words.filter((w) => !keywords.has(w.toLowerCase()));
}

describe('alert rules', () => {
  it('pass promtool check rules', () => {
    expect(promtool('check', 'rules', RULES)).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('pass their promtool unit tests (deploy/prometheus-rules.test.yml)', () => {
    expect(promtool('test', 'rules', 'deploy/prometheus-rules.test.yml')).toContain('SUCCESS');
  });

  it('cover the DC, Exchange, a server out of the pool, lockouts, certificate expiry, failed reloads, 5xx and shared state', () => {
    expect(
      rules()
        .map((r) => r.alert)
        .sort(),
    ).toEqual([
      'ExgateCertificateExpiringSoon',
      'ExgateDirectoryUnreachable',
      'ExgateExchangeServerOut',
      'ExgateExchangeUnreachable',
      'ExgateHigh5xxRate',
      'ExgateLockoutsSurging',
      'ExgateReloadFailed',
      'ExgateSharedStateUnreachable',
    ]);
    expect(rules().find((r) => r.alert === 'ExgateCertificateExpiringSoon')?.expr).toContain('- time() < 14 * 86400');
  });
});

describe('metric names in the rules and the dashboard', () => {
  let h: Harness;
  let exported: Set<string>;
  beforeAll(async () => {
    h = await startHarness({ directory: 'file', gateway: { admin: { host: '127.0.0.1', port: 0 } } });
    await send(h, '/owa/', { user: 'alice', password: USERS.alice.password });
    const text = await (await request(`http://127.0.0.1:${h.running.admin!.port}/metrics`)).body.text();
    exported = new Set();
    for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      exported.add(name!);
      if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exported.add(name! + s);
      if (type === 'summary') for (const s of ['_sum', '_count']) exported.add(name! + s);
    }
  });
  afterAll(async () => {
    await h?.close();
  });

  it('reads names out of PromQL', () => {
    const quantile = 'histogram_quantile(0.95, sum by (le, service) (rate(a_bucket{x=~"$i",c="5.."}[5m])))';
    expect(metricNames(quantile)).toEqual(['a_bucket']);
    expect(metricNames('b - time() < 14 * 86400 and on (instance) c{d="e"} offset 5m')).toEqual(['b', 'c']);
  });

  it('the rules name only metrics the gateway exports', () => {
    for (const r of rules()) {
      const names = metricNames(r.expr);
      expect(names.length, r.alert).toBeGreaterThan(0);
      for (const n of names) expect(exported.has(n), `${r.alert}: ${n}`).toBe(true);
    }
  });

  it('the dashboard parses, has the panels the operators need, and names only exported metrics', () => {
    const d = dashboard();
    const titles = d.panels.map((p) => p.title);
    const wanted = [
      'Requests by service and decision',
      'Denials by reason',
      'Authentication latency',
      'Upstream latency (p95) by service',
      'Open connections and requests in flight',
      'Lockouts',
    ];
    for (const t of wanted) expect(titles).toContain(t);
    const exprs = d.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
    expect(exprs.length).toBeGreaterThanOrEqual(d.panels.length);
    for (const v of d.templating.list) {
      const metric = v.definition?.replace(/^label_values\((\w+),.*$/, '$1');
      if (metric) exprs.push({ panel: `$${v.name}`, expr: metric });
    }
    for (const { panel, expr } of exprs) {
      const names = metricNames(expr);
      expect(names.length, panel).toBeGreaterThan(0);
      for (const n of names) expect(exported.has(n), `${panel}: ${n}`).toBe(true);
    }
  });
});
