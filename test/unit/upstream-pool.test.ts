/** The pure parts of the upstream pool: the choice (least connections, ties in turn) and the health state machine. */
import { describe, expect, it } from 'vitest';
import { firstDelayMs, Health, healthGroupOf, nextDelayMs } from '../../src/upstream/health.js';
import { leastConnections } from '../../src/upstream/pool.js';

const up = (connections: number) => ({ healthy: true, connections });
const down = (connections: number) => ({ healthy: false, connections });

describe('leastConnections', () => {
  it.each([
    ['the fewest connections', [up(3), up(1), up(2)], 0, 1],
    ['skips an unhealthy server with fewer', [down(0), up(5), up(4)], 0, 2],
    ['ties in turn (turn 0)', [up(1), up(1), up(2)], 0, 0],
    ['ties in turn (turn 1)', [up(1), up(1), up(2)], 1, 1],
    ['ties in turn (turn 2 wraps)', [up(1), up(1), up(2)], 2, 0],
    ['none healthy', [down(0), down(0)], 0, -1],
    ['no servers', [], 0, -1],
    ['one server (url)', [up(40)], 7, 0],
  ] as const)('%s', (_, candidates, turn, expected) => {
    expect(leastConnections(candidates, turn)).toBe(expected);
  });
});

describe('Health', () => {
  const limits = { failures: 2, successes: 2 };
  it.each([
    ['one failure keeps it in', [false], [null], true],
    ['two consecutive failures take it out', [false, false], [null, 'out'], false],
    ['a success between failures resets the count', [false, true, false], [null, null, null], true],
    ['one success after out keeps it out', [false, false, true], [null, 'out', null], false],
    ['two successes bring it back', [false, false, true, true], [null, 'out', null, 'back'], true],
    [
      'a failure between successes restarts the count',
      [false, false, true, false, true, true],
      [null, 'out', null, null, null, 'back'],
      true,
    ],
    ['further failures while out say nothing', [false, false, false], [null, 'out', null], false],
  ] as const)('%s', (_, results, transitions, finallyUp) => {
    const h = new Health(0);
    const seen = results.map((ok, t) => h.record(ok, ok ? null : 'HTTP 503', limits, t * 1000));
    expect(seen).toEqual(transitions);
    expect(h.up).toBe(finallyUp);
  });

  it('keeps the failed check and when the standing changed (injected clock)', () => {
    const h = new Health(0);
    h.record(false, 'closed without an answer', limits, 10_000);
    h.record(false, 'closed without an answer', limits, 20_000);
    expect({ up: h.up, cause: h.cause, since: h.since }).toEqual({
      up: false,
      cause: 'closed without an answer',
      since: 20_000,
    });
    h.record(true, null, limits, 30_000);
    h.record(true, null, limits, 40_000);
    expect({ up: h.up, since: h.since }).toEqual({ up: true, since: 40_000 });
  });
});

describe('probe timing and protocols', () => {
  it('spreads the first probes over one interval, with up to a tenth of jitter', () => {
    expect([0, 1, 2, 3].map((i) => firstDelayMs(i, 4, 10_000, 0))).toEqual([0, 2500, 5000, 7500]);
    expect(firstDelayMs(3, 4, 10_000, 0.999)).toBeLessThan(10_000 * 0.75 + 1000);
    expect([nextDelayMs(10_000, 0), nextDelayMs(10_000, 1)]).toEqual([9500, 10_500]);
  });

  it('follows the probe page of the vdir a service lives in', () => {
    expect([healthGroupOf('mapi'), healthGroupOf('mrsproxy'), healthGroupOf('activesync')]).toEqual([
      'mapi',
      'ews',
      'activesync',
    ]);
  });
});
