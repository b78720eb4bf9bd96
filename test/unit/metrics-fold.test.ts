// Per-request counts wait in the Metrics object and are folded in at each read: a scrape (text or
// JSON, as the workers send theirs) shows exactly what counting each request at once showed.
import { describe, expect, it } from 'vitest';
import type { AccessRecord } from '../../src/pipeline/access-log.js';
import { Metrics } from '../../src/runtime/metrics.js';

const rec = (over: Partial<AccessRecord>): AccessRecord =>
  ({
    service: 'owa',
    decision: 'allow',
    reason: 'allowed',
    status: 200,
    cache: 'hit',
    upstreamMs: null,
    ...over,
  }) as AccessRecord;

describe('Metrics: per-request counts folded in at each scrape', () => {
  it('counts requests, responses, cache results and requests in flight', async () => {
    const m = new Metrics(false);
    m.observe(rec({}));
    m.observe(rec({}));
    m.observe(rec({ service: null, decision: 'deny', reason: 'bad-request', status: 400, cache: null }));
    m.forwarding('owa', 1);
    m.forwarding('owa', 1);
    m.forwarding('owa', -1);
    m.forwarding('ews', 1);
    m.forwarding('ews', -1);
    const text = await m.registry.metrics();
    expect(text).toContain('exgate_requests_total{service="owa",decision="allow",reason="allowed"} 2');
    expect(text).toContain('exgate_requests_total{service="none",decision="deny",reason="bad-request"} 1');
    expect(text).toContain('exgate_responses_total{service="owa",code="200"} 2');
    expect(text).toContain('exgate_responses_total{service="none",code="400"} 1');
    expect(text).toContain('exgate_auth_cache_total{result="hit"} 2');
    expect(text).not.toContain('exgate_auth_cache_total{result="null"}');
    expect(text).toContain('exgate_requests_in_flight{service="owa"} 1');
    expect(text).toContain('exgate_requests_in_flight{service="ews"} 0'); // as inc() then dec() left it

    m.observe(rec({}));
    m.forwarding('owa', -1);
    const json = await m.registry.getMetricsAsJSON();
    const value = (name: string, labels: Record<string, string>) =>
      json.find((x) => x.name === name)?.values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
        ?.value;
    expect(value('exgate_requests_total', { service: 'owa', reason: 'allowed' })).toBe(3);
    expect(value('exgate_responses_total', { service: 'owa', code: '200' })).toBe(3);
    expect(value('exgate_requests_in_flight', { service: 'owa' })).toBe(0);
    expect(await m.registry.metrics()).toContain(
      'exgate_requests_total{service="owa",decision="allow",reason="allowed"} 3',
    );
  });
});
