/**
 * Which headers cross the gateway (src/pipeline/headers.ts): Exchange's internal-server headers and
 * front-end headers never pass, challenges are filtered by the service's auth front-end.
 */
import { describe, expect, it } from 'vitest';
import { frontEndFor } from '../../src/auth/front-ends.js';
import { responseHeaders } from '../../src/pipeline/headers.js';
import type { AuthMode } from '../../src/pipeline/services.js';

/** The front-end of a mode, with `fallback` as the gateway's own challenges. */
const fe = (mode: AuthMode, fallback: readonly string[] = []) => ({
  passes: (v: string) => frontEndFor(mode, 'x').passes(v),
  challenges: fallback,
});

const raw = (pairs: [string, string][]) => pairs.flatMap(([k, v]) => [Buffer.from(k), Buffer.from(v)]);

describe('responseHeaders', () => {
  it('drops every header that names an internal server or build', () => {
    const out = responseHeaders(
      raw([
        ['X-FEServer', 'EX1'],
        ['X-BEServer', 'EX2'],
        ['X-CalculatedBETarget', 'ex2.lab'],
        ['X-DiagInfo', 'EX2'],
        ['X-OWA-Version', '15.2.1118.7'],
        ['X-OWA-MinimumSupportedOWSVersion', 'V2'],
        ['X-FirstHopCafeEFZ', 'x'],
        ['X-RUM-Validated', '1'],
        ['X-RUM-NotUpdateQueriedPath', '1'],
        ['X-Powered-By', 'ASP.NET'],
        ['Content-Type', 'text/html'],
        ['request-id', 'abc'],
      ]),
      200,
      fe('basic'),
    );
    expect(out).toEqual(['Content-Type', 'text/html', 'request-id', 'abc']);
  });

  it("keeps several challenges as separate headers in order, filtered by mode, with the gateway's own when none is left", () => {
    const challenges = raw([
      ['WWW-Authenticate', 'Negotiate'],
      ['WWW-Authenticate', 'NTLM'],
      ['WWW-Authenticate', 'Basic realm="x"'],
    ]);
    expect(responseHeaders(challenges, 401, fe('basic+ntlm'))).toEqual([
      'WWW-Authenticate',
      'NTLM',
      'WWW-Authenticate',
      'Basic realm="x"',
    ]);
    expect(responseHeaders(challenges, 401, fe('basic'))).toEqual(['WWW-Authenticate', 'Basic realm="x"']);
    expect(responseHeaders(raw([['WWW-Authenticate', 'Negotiate']]), 401, fe('ntlm', ['NTLM']))).toEqual([
      'WWW-Authenticate',
      'NTLM',
    ]);
  });

  it.each([
    ['basic', 'Basic realm="a"', true],
    ['basic', 'NTLM', false],
    ['basic', 'Negotiate abc=', false],
    ['ntlm', 'NTLM', true],
    ['ntlm', 'NTLM TlRMTVNTUAAC', true],
    ['ntlm', 'Negotiate', false],
    ['ntlm', 'Negotiate oYIB', true],
    ['ntlm', 'Basic realm="a"', false],
    ['ntlm', 'Kerberos', false],
    ['basic+ntlm', 'Basic realm="a"', true],
  ] as const)('the %s front-end passes %s: %s', (mode, value, allowed) => {
    expect(frontEndFor(mode, 'x').passes(value)).toBe(allowed);
  });
});
