// `exgate report` (src/commands/report.ts, src/report/): exact counts for every section over a
// generated log (plain, gzip without a .gz name, an operational line, a malformed line, records
// outside the window), the table layout against a golden fixture, absolute and relative
// --since/--until, exit 1 naming an unreadable file, exit 2 on bad arguments, terminal-safe
// output of hostile user names, and a 100k-record gzip file streamed in bounded memory.
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createGzip, gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import type { AccessRecord } from '../../src/pipeline/access-log.js';
import { report } from '../../src/commands/report.js';
import { parseTime } from '../../src/report/range.js';
import type { Report } from '../../src/report/summarize.js';

const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures/report');
const DIR = mkdtempSync(join(tmpdir(), 'exgate-report-'));
afterAll(() => rmSync(DIR, { recursive: true, force: true }));

/** A complete access record as the gateway writes it (pino adds `level`). */
function rec(time: string, fields: Partial<AccessRecord>): string {
  const r: AccessRecord & { level: string } = {
    level: 'info',
    time,
    requestId: '00000000-0000-4000-8000-000000000000',
    client: '198.51.100.1',
    sni: 'outlook-ext.lab.test',
    host: 'outlook-ext.lab.test',
    method: 'POST',
    path: '/mapi/emsmdb/',
    service: 'mapi',
    user: 'LAB\\alice',
    decision: 'allow',
    reason: 'allowed',
    rule: 'outlook',
    status: 200,
    durationMs: 4,
    cache: 'hit',
    upstreamMs: 3,
    upstream: null,
    bytesIn: 100,
    bytesOut: 200,
    userAgent: 'Microsoft Office/16.0',
    operation: 'Execute',
    detail: null,
    ...fields,
  };
  return JSON.stringify(r);
}

const day = (hhmmss: string) => `2024-05-01T${hhmmss}.000Z`;
const deny = (
  reason: AccessRecord['reason'],
  status: number,
  fields: Partial<AccessRecord> = {},
): Partial<AccessRecord> => ({
  decision: 'deny',
  reason,
  status,
  rule: null,
  cache: null,
  upstreamMs: null,
  ...fields,
});
const SECRET_DETAIL = 'detail-that-must-never-be-printed';

/** The known day: 22 records on 2024-05-01, 4 outside it, 3 lines that are not records, 1 blank. */
const DAY_LOG =
  [
    // LAB\alice, mapi: 4 served from two addresses; ews: 2 served; one mapi request Exchange failed (502)
    rec(day('08:00:00'), { client: '198.51.100.1' }),
    rec(day('09:00:00'), { client: '198.51.100.2' }),
    rec(day('10:00:00'), { client: '198.51.100.1' }),
    rec(day('11:00:00'), { client: '198.51.100.2', status: 304 }),
    rec(day('12:00:00'), { service: 'ews', path: '/EWS/Exchange.asmx' }),
    rec(day('13:00:00'), { service: 'ews', path: '/EWS/Exchange.asmx' }),
    rec(day('13:30:00'), { status: 502, reason: 'allowed', detail: SECRET_DETAIL }),
    // LAB\bob, activesync, let through by report-only mode
    ...['07:00:00', '07:30:00', '18:00:00'].map((t) =>
      rec(day(t), {
        client: '203.0.113.9',
        service: 'activesync',
        user: 'LAB\\bob',
        reason: 'report-only',
        rule: 'mobile',
      }),
    ),
    // LAB\carol, ews, not allowed by the policy
    ...['14:00:00', '14:05:00'].map((t) =>
      rec(day(t), {
        client: '203.0.113.9',
        service: 'ews',
        user: 'LAB\\carol',
        ...deny('not-allowed', 403, { detail: SECRET_DETAIL }),
      }),
    ),
    '{"level":"warn","time":"2024-05-01T14:06:00.000Z","name":"exgate","msg":"directory slow","err":{"message":"timeout"}}',
    // no credentials, then a password guesser, from one address
    ...['01:00:00', '01:01:00', '01:02:00', '01:03:00', '01:04:00'].map((t) =>
      rec(day(t), { client: '192.0.2.50', user: null, ...deny('no-credentials', 401) }),
    ),
    ...['02:00:00', '02:01:00', '02:02:00'].map((t) =>
      rec(day(t), { client: '192.0.2.50', user: 'LAB\\mallory', ...deny('bad-credentials', 401) }),
    ),
    rec(day('02:03:00'), { client: '192.0.2.50', user: 'LAB\\mallory', ...deny('gateway-lockout', 401) }),
    '{"level":"info","time":"2024-05-01T02:04:00.000Z","method":"GET","decision":"allow"', // cut off mid-line
    '',
    rec(day('23:59:59'), {
      client: '192.0.2.51',
      service: null,
      user: null,
      path: '/nothing',
      ...deny('unknown-service', 404),
    }),
    '{"time":"2024-05-01T03:00:00.000Z","method":"GET","decision":"allow"}', // no status: not a record
    // just outside 2024-05-01 (until is exclusive), and well outside
    rec('2024-04-30T23:59:59.999Z', {}),
    rec('2024-05-02T00:00:00.000Z', {}),
    rec('2024-04-29T12:00:00.000Z', { user: 'LAB\\old', ...deny('bad-credentials', 401) }),
    rec('2024-05-03T12:00:00.000Z', { user: 'LAB\\late', ...deny('bad-credentials', 401) }),
  ].join('\n') + '\n';

const PLAIN = join(DIR, 'access.log');
const GZIP = join(DIR, 'access.log.1'); // gzip without a .gz name: detected by its magic bytes
writeFileSync(PLAIN, DAY_LOG);
writeFileSync(GZIP, gzipSync(DAY_LOG));

/** Runs the command; its exit code, stdout and stderr. */
async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = collector();
  const err = collector();
  const code = await report(argv, out.stream, err.stream);
  return { code, out: out.text(), err: err.text() };
}

function collector(): { stream: Writable; text(): string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return { stream, text: () => chunks.join('') };
}

async function json(...argv: string[]): Promise<Report> {
  const { code, out, err } = await run(...argv, '--json');
  expect(err).toBe('');
  expect(code).toBe(0);
  return JSON.parse(out) as Report;
}

describe('report --json over the known day', () => {
  const ONE_DAY = ['--since', '2024-05-01', '--until', '2024-05-02'];

  it('totals: records read, in range, skipped lines (blank lines are not), span', async () => {
    const r = await json(PLAIN, ...ONE_DAY);
    expect(r.range).toEqual({ since: '2024-05-01T00:00:00.000Z', until: '2024-05-02T00:00:00.000Z' });
    expect(r.totals).toEqual({
      records: 26,
      inRange: 22,
      skipped: 3,
      allowed: 10,
      denied: 12,
      first: day('01:00:00'),
      last: day('23:59:59'),
    });
  });

  it('access: allowed and served (status < 400) per user and service, report-only counted, by user then service', async () => {
    const r = await json(PLAIN, ...ONE_DAY);
    expect(r.access).toEqual([
      {
        user: 'LAB\\alice',
        service: 'ews',
        requests: 2,
        reportOnly: 0,
        clients: 1,
        firstSeen: day('12:00:00'),
        lastSeen: day('13:00:00'),
      },
      {
        user: 'LAB\\alice',
        service: 'mapi',
        requests: 4,
        reportOnly: 0,
        clients: 2,
        firstSeen: day('08:00:00'),
        lastSeen: day('11:00:00'),
      },
      {
        user: 'LAB\\bob',
        service: 'activesync',
        requests: 3,
        reportOnly: 3,
        clients: 1,
        firstSeen: day('07:00:00'),
        lastSeen: day('18:00:00'),
      },
    ]);
  });

  it('access leaves out allowed requests without an account (NTLM Type 1 legs, autodiscover.json)', async () => {
    const file = join(DIR, 'no-account.log');
    writeFileSync(
      file,
      [
        rec(day('08:00:00'), { user: null, detail: 'NTLM negotiate (Type 1) forwarded for the challenge' }),
        rec(day('08:00:01'), { user: null, service: 'autodiscover', path: '/autodiscover/autodiscover.json' }),
        rec(day('08:00:02'), {}),
      ].join('\n') + '\n',
    );
    const r = await json(file);
    expect(r.access.map((a: { user: string | null }) => a.user)).toEqual(['LAB\\alice']);
    expect(r.totals.allowed).toBe(3);
  });

  it('covers the browser door: sign-ins under their user and service, no-session and refused forms as denials', async () => {
    const file = join(DIR, 'browser.log');
    const owa = { method: 'GET', path: '/owa/', service: 'owa' as const, operation: null };
    writeFileSync(
      file,
      [
        rec(day('08:00:00'), { ...owa, user: null, path: '/owa/auth/logon.aspx', detail: 'sign-in page' }),
        rec(day('08:00:01'), { ...deny('no-session', 302), ...owa, user: null }),
        rec(day('08:00:02'), { ...owa, method: 'POST', path: '/owa/auth.owa', status: 302, detail: 'sign-in form' }),
        rec(day('08:00:03'), { ...owa }),
        rec(day('08:00:04'), { ...owa, method: 'POST', path: '/owa/auth.owa', service: 'ecp', status: 302 }),
        rec(day('08:00:05'), { ...deny('not-allowed', 403), ...owa, path: '/owa/auth.owa', user: 'LAB\\bob' }),
        rec(day('08:00:06'), { ...deny('bad-credentials', 302), ...owa, path: '/owa/auth.owa', user: 'LAB\\bob' }),
      ].join('\n') + '\n',
    );
    const r = await json(file);
    expect(r.access.map((a) => [a.user, a.service, a.requests])).toEqual([
      ['LAB\\alice', 'ecp', 1],
      ['LAB\\alice', 'owa', 2],
    ]);
    expect(r.denials.byReason).toEqual({ 'bad-credentials': 1, 'no-session': 1, 'not-allowed': 1 });
  });

  it('denials by reason (most first, ties by name) and by user (null user kept null)', async () => {
    const r = await json(PLAIN, ...ONE_DAY);
    expect(Object.entries(r.denials.byReason)).toEqual([
      ['no-credentials', 5],
      ['bad-credentials', 3],
      ['not-allowed', 2],
      ['gateway-lockout', 1],
      ['unknown-service', 1],
    ]);
    expect(r.denials.byUser).toEqual([
      { user: null, denials: 6, byReason: { 'no-credentials': 5, 'unknown-service': 1 } },
      { user: 'LAB\\mallory', denials: 4, byReason: { 'bad-credentials': 3, 'gateway-lockout': 1 } },
      { user: 'LAB\\carol', denials: 2, byReason: { 'not-allowed': 2 } },
    ]);
  });

  it('sources: requests, denials, distinct users; most requests first, ties by address', async () => {
    const r = await json(PLAIN, ...ONE_DAY);
    expect(r.sources).toEqual([
      { client: '192.0.2.50', requests: 9, denials: 9, users: 1 },
      { client: '198.51.100.1', requests: 5, denials: 0, users: 1 },
      { client: '203.0.113.9', requests: 5, denials: 2, users: 2 },
      { client: '198.51.100.2', requests: 2, denials: 0, users: 1 },
      { client: '192.0.2.51', requests: 1, denials: 1, users: 0 },
    ]);
  });

  it('the gzip copy (no .gz name) gives the same report; both files together count twice', async () => {
    expect(await json(GZIP, ...ONE_DAY)).toEqual(await json(PLAIN, ...ONE_DAY));
    const both = await json(PLAIN, GZIP, ...ONE_DAY);
    expect(both.totals).toMatchObject({ records: 52, inRange: 44, skipped: 6 });
    expect(both.access.map((a) => a.requests)).toEqual([4, 8, 6]);
    expect(both.access.map((a) => a.clients)).toEqual([1, 2, 1]);
  });

  it('without a window every record counts', async () => {
    const r = await json(PLAIN);
    expect(r.range).toEqual({ since: null, until: null });
    expect(r.totals).toMatchObject({
      records: 26,
      inRange: 26,
      skipped: 3,
      first: '2024-04-29T12:00:00.000Z',
      last: '2024-05-03T12:00:00.000Z',
    });
    expect(r.access.find((a) => a.service === 'mapi')?.requests).toBe(6);
    expect(r.denials.byReason['bad-credentials']).toBe(5);
  });

  it('never prints a detail field', async () => {
    expect((await run(PLAIN)).out).not.toContain(SECRET_DETAIL);
    expect((await run(PLAIN, '--json')).out).not.toContain(SECRET_DETAIL);
  });
});

describe('report tables', () => {
  it('match the golden fixture for a small log', async () => {
    const { code, out, err } = await run(join(FIXTURES, 'small.log'));
    expect({ code, err }).toEqual({ code: 0, err: '' });
    expect(out).toBe(readFileSync(join(FIXTURES, 'small.expected.txt'), 'utf8'));
  });

  it('say (none) for empty sections and still exit 0 when nothing matched', async () => {
    const { code, out } = await run(PLAIN, '--since', '2030-01-01');
    expect(code).toBe(0);
    expect(out).toContain('Access from outside (allowed and served)\n  (none)\n');
    expect(out).toContain('Denials by user\n  (none)\n');
    expect(out).toMatch(/records read +26\n +in range +0\n/);
    expect(out).toMatch(/first record +-\n/);
  });

  it('show a user name with terminal controls escaped, in tables and JSON', async () => {
    const file = join(DIR, 'hostile.log');
    writeFileSync(
      file,
      rec(day('08:00:00'), { user: 'x\u001b]0;owned\u0007\u009b31m', ...deny('bad-credentials', 401) }) + '\n',
    );
    const table = (await run(file)).out;
    expect(table).toContain('x\\x1b]0;owned\\x07\\x9b31m');
    const raw = (await run(file, '--json')).out;
    expect(raw).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
    expect((JSON.parse(raw) as Report).denials.byUser[0]?.user).toBe('x\u001b]0;owned\u0007\u009b31m');
  });
});

describe('report --since/--until', () => {
  it('absolute date-times: since inclusive, until exclusive, offsets honoured, no offset = UTC', async () => {
    expect(
      (await json(PLAIN, '--since', '2024-05-01T08:00:00Z', '--until', '2024-05-01T10:00:00Z')).totals.inRange,
    ).toBe(2);
    expect(
      (await json(PLAIN, '--since', '2024-05-01T10:00:00+02:00', '--until', '2024-05-01 12:00')).totals.inRange,
    ).toBe(4);
    expect((await json(PLAIN, '--until', '2024-05-01')).totals.inRange).toBe(2);
    expect((await json(PLAIN, '--since', '2024-05-02')).totals.inRange).toBe(2);
  });

  it('relative to now: 30m, 24h, 7d', async () => {
    const now = Date.now();
    const ago = (ms: number) => new Date(now - ms).toISOString();
    const H = 3_600_000;
    const file = join(DIR, 'recent.log');
    writeFileSync(
      file,
      [ago(10 * 60_000), ago(2 * H), ago(3 * 24 * H), ago(10 * 24 * H)].map((t) => rec(t, {})).join('\n') + '\n',
    );
    expect((await json(file, '--since', '30m')).totals.inRange).toBe(1);
    expect((await json(file, '--since', '24h')).totals.inRange).toBe(2);
    expect((await json(file, '--since', '7d', '--until', '1h')).totals.inRange).toBe(2);
    expect((await json(file, '--until', '7d')).totals.inRange).toBe(1);
  });

  it.each([
    ['7d', Date.UTC(2024, 4, 8) - 7 * 86_400_000],
    ['90m', Date.UTC(2024, 4, 8) - 90 * 60_000],
    ['2024-05-01', Date.UTC(2024, 4, 1)],
    ['2024-05-01T08:30', Date.UTC(2024, 4, 1, 8, 30)],
    ['2024-05-01T08:30:15.250Z', Date.UTC(2024, 4, 1, 8, 30, 15, 250)],
    ['2024-05-01T08:30:00-0130', Date.UTC(2024, 4, 1, 10, 0)],
  ])('parseTime(%s)', (value, expected) => {
    expect(parseTime(value, Date.UTC(2024, 4, 8))).toBe(expected);
  });

  it.each([
    [['--since', 'yesterday'], '"yesterday" is not a time'],
    [['--since', '2024-02-30'], '"2024-02-30" is not a time'],
    [['--until', '2024-13-01'], '"2024-13-01" is not a time'],
    [['--since', '7y'], '"7y" is not a time'],
    [['--since', ''], '"" is not a time'],
    [['--since', '2024-05-02', '--until', '2024-05-01'], 'is not before --until'],
    [['--since'], 'argument missing'],
    [['--colour'], "Unknown option '--colour'"],
  ])('bad arguments %j → exit 2 with the reason', async (args, message) => {
    const { code, out, err } = await run(PLAIN, ...args);
    expect(code).toBe(2);
    expect(out).toBe('');
    expect(err).toContain(message);
    expect(err).toContain('usage: exgate report');
  });

  it('no FILE → exit 2', async () => {
    const { code, err } = await run('--json');
    expect(code).toBe(2);
    expect(err).toContain('at least one FILE is required');
  });
});

describe('report: unreadable files', () => {
  it('a missing file → exit 1 naming it, before reading the others, no report', async () => {
    const missing = join(DIR, 'no-such.log');
    const { code, out, err } = await run(PLAIN, missing);
    expect(code).toBe(1);
    expect(out).toBe('');
    expect(err).toBe(`exgate report: cannot read ${missing}: no such file\n`);
  });

  it('a directory or a truncated gzip → exit 1 naming it', async () => {
    expect(await run(DIR)).toMatchObject({
      code: 1,
      out: '',
      err: `exgate report: cannot read ${DIR}: is a directory\n`,
    });
    const cut = join(DIR, 'cut.gz');
    writeFileSync(cut, gzipSync(DAY_LOG).subarray(0, 200));
    const { code, out, err } = await run(cut);
    expect({ code, out }).toEqual({ code: 1, out: '' });
    expect(err).toContain(`cannot read ${cut}: corrupt gzip data`);
  });
});

describe('report: a large file streams', () => {
  const RECORDS = 100_000;
  const PADDING = 'x'.repeat(1500); // ~1.9 KB per line: ~190 MB uncompressed

  /** Writes RECORDS records through gzip without building the file in memory. */
  async function writeBigLog(file: string): Promise<void> {
    function* lines() {
      const start = Date.UTC(2024, 4, 1);
      for (let i = 0; i < RECORDS; i++) {
        const fields: Partial<AccessRecord> =
          i % 10 === 0
            ? { user: `LAB\\guess${i % 50}`, ...deny('bad-credentials', 401) }
            : { user: `LAB\\user${i % 100}`, service: i % 2 ? 'mapi' : 'activesync' };
        yield rec(new Date(start + i * 1000).toISOString(), {
          client: `10.0.${i % 7}.${i % 30}`,
          detail: PADDING,
          ...fields,
        }) + '\n';
      }
    }
    await pipeline(Readable.from(lines()), createGzip({ level: 1 }), createWriteStream(file));
  }

  it(`${RECORDS.toLocaleString('en')} records in bounded memory, with exact counts`, { timeout: 120_000 }, async () => {
    const file = join(DIR, 'big.log.gz');
    await writeBigLog(file);
    const before = process.resourceUsage().maxRSS; // KiB, the process's high-water mark
    const r = await json(file);
    const grownKiB = process.resourceUsage().maxRSS - before;
    expect(r.totals).toMatchObject({
      records: RECORDS,
      inRange: RECORDS,
      skipped: 0,
      denied: RECORDS / 10,
      allowed: RECORDS * 0.9,
    });
    expect(r.access).toHaveLength(90); // user<i % 100> for i % 10 ≠ 0, each on one service (i % 100 fixes i % 2)
    expect(r.access.reduce((n, a) => n + a.requests, 0)).toBe(RECORDS * 0.9);
    expect(r.denials.byUser).toHaveLength(5); // i % 10 === 0 → i % 50 ∈ {0, 10, 20, 30, 40}
    expect(r.sources).toHaveLength(20);
    // The uncompressed log is ~190 MB: reading it whole raises the peak RSS by more than that
    // (about 550 MB when tried); streaming it leaves the peak where writing the file put it.
    expect(grownKiB).toBeLessThan(64 * 1024);
  });
});
