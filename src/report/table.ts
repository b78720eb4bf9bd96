/**
 * The report as plain-text tables for a terminal: aligned columns, numbers right-aligned, no
 * colours. Every value from the log is made safe to print first: user names in failed sign-ins
 * are whatever the client typed, and a control character in them must not reach the terminal.
 */
import { TOP_SOURCES, type Report } from './summarize.js';

type Align = 'left' | 'right';
interface Column {
  readonly title: string;
  readonly align: Align;
}

const GAP = '  ';
/** Longest value shown in a column; longer ones end in `…` (the JSON output keeps them whole). */
export const MAX_CELL = 64;

/** The whole report, sections in the order: access, denials by reason, denials by user, sources, totals. */
export function formatTable(r: Report): string {
  return [accessSection(r), reasonSection(r), userDenialSection(r), sourceSection(r), totalsSection(r)].join('\n');
}

function accessSection(r: Report): string {
  const rows = r.access.map((a) => [
    user(a.user),
    a.service ?? '-',
    num(a.requests),
    num(a.reportOnly),
    num(a.clients),
    time(a.firstSeen),
    time(a.lastSeen),
  ]);
  return section(
    'Access from outside (allowed and served)',
    [
      left('USER'),
      left('SERVICE'),
      right('REQUESTS'),
      right('REPORT-ONLY'),
      right('CLIENTS'),
      left('FIRST SEEN'),
      left('LAST SEEN'),
    ],
    rows,
  );
}

function reasonSection(r: Report): string {
  const rows = Object.entries(r.denials.byReason).map(([reason, n]) => [reason, num(n)]);
  return section('Denials by reason', [left('REASON'), right('DENIALS')], rows);
}

function userDenialSection(r: Report): string {
  const rows = r.denials.byUser.map((d) => [
    user(d.user),
    num(d.denials),
    Object.entries(d.byReason)
      .map(([k, n]) => `${k} ${n}`)
      .join(', '),
  ]);
  return section('Denials by user', [left('USER'), right('DENIALS'), left('BY REASON')], rows);
}

function sourceSection(r: Report): string {
  const rows = r.sources.map((s) => [s.client ?? '(unknown)', num(s.requests), num(s.denials), num(s.users)]);
  return section(
    `Top source addresses (by requests, at most ${TOP_SOURCES})`,
    [left('ADDRESS'), right('REQUESTS'), right('DENIALS'), right('USERS')],
    rows,
  );
}

function totalsSection(r: Report): string {
  const t = r.totals;
  const rows = [
    ['records read', num(t.records)],
    ['in range', num(t.inRange)],
    ['allowed', num(t.allowed)],
    ['denied', num(t.denied)],
    ['skipped lines', num(t.skipped)],
    ['first record', t.first === null ? '-' : time(t.first)],
    ['last record', t.last === null ? '-' : time(t.last)],
    ['since', r.range.since === null ? '(any)' : time(r.range.since)],
    ['until', r.range.until === null ? '(any)' : time(r.range.until)],
  ];
  return `Totals\n${align(rows, [left(''), left('')])
    .map((l) => GAP + l)
    .join('\n')}\n`;
}

/** A titled table; `(none)` under the title when there are no rows. */
function section(title: string, columns: readonly Column[], rows: readonly string[][]): string {
  if (rows.length === 0) return `${title}\n${GAP}(none)\n`;
  const lines = align([columns.map((c) => c.title), ...rows], columns);
  return `${title}\n${lines.map((l) => GAP + l).join('\n')}\n`;
}

/** Pads every cell to its column's width; the last column is not padded on the right. */
function align(rows: readonly string[][], columns: readonly Column[]): string[] {
  const cells = rows.map((row) => row.map(printable));
  const widths = columns.map((_, i) => cells.reduce((w, row) => Math.max(w, [...(row[i] ?? '')].length), 0));
  return cells.map((row) =>
    row
      .map((cell, i) => pad(cell, widths[i] ?? 0, columns[i]?.align ?? 'left', i === row.length - 1))
      .join(GAP)
      .trimEnd(),
  );
}

function pad(cell: string, width: number, how: Align, last: boolean): string {
  const fill = ' '.repeat(Math.max(0, width - [...cell].length));
  if (how === 'right') return fill + cell;
  return last ? cell : cell + fill;
}

// C0 and C1 controls, DEL, and the bidi/line separators that could reorder or break a terminal line.
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/gu;

/** A cell safe for a terminal: controls as `\xNN`/`\uNNNN`, at most MAX_CELL characters. */
export function printable(value: string): string {
  const safe = value.replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
  const chars = [...safe];
  return chars.length > MAX_CELL ? chars.slice(0, MAX_CELL - 1).join('') + '…' : safe;
}

function left(title: string): Column {
  return { title, align: 'left' };
}
function right(title: string): Column {
  return { title, align: 'right' };
}
function num(n: number): string {
  return String(n);
}
function user(u: string | null): string {
  return u ?? '(anonymous)';
}
/** `2024-05-01T08:00:00.000Z` → `2024-05-01 08:00:00Z`: seconds are enough on screen. */
function time(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
