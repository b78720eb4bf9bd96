/**
 * `exgate report FILE… [--since T] [--until T] [--json]`: summarise access logs, plain or gzip,
 * to answer "who uses Outlook from outside?" (INTERFACE.md, "Command line"): who reached which
 * service and when, the denials by reason and user, the top source addresses.
 *
 * Exit codes: 0 when the report was printed (also when nothing matched), 1 when a file cannot
 * be read (the message names it; no report is printed), 2 on bad arguments.
 */
import { parseArgs } from 'node:util';
import { parseRange, TimeArgumentError, type TimeRange } from '../report/range.js';
import { checkReadable, LogFileError, readLines } from '../report/read.js';
import { ReportAccumulator, type Report } from '../report/summarize.js';
import { formatTable } from '../report/table.js';

export const REPORT_USAGE = `usage: exgate report FILE… [--since T] [--until T] [--json]

  FILE        access log, plain or gzip (any number; the operational log may be mixed in)
  --since T   only records at or after T
  --until T   only records before T
              T: 2024-05-01, 2024-05-01T08:00:00Z (no offset = UTC), or back from now: 30m, 24h, 7d
  --json      one JSON object instead of tables
`;

interface ReportOptions {
  readonly files: readonly string[];
  readonly range: TimeRange;
  readonly json: boolean;
  readonly help: boolean;
}

/** Bad arguments: exit 2 with the usage. */
class UsageError extends Error {}

/**
 * Runs the command; resolves to the exit code. The report goes to `out` (default stdout),
 * errors to `err` (default stderr). `now` anchors relative --since/--until (default: the clock).
 */
export async function report(
  argv: readonly string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
  now: number = Date.now(),
): Promise<number> {
  let options: ReportOptions;
  try {
    options = parseOptions(argv, now);
  } catch (e) {
    if (!(e instanceof UsageError || e instanceof TimeArgumentError || isParseArgsError(e))) throw e;
    err.write(`exgate report: ${(e as Error).message}\n\n${REPORT_USAGE}`);
    return 2;
  }
  if (options.help) {
    out.write(REPORT_USAGE);
    return 0;
  }
  let result: Report;
  try {
    result = await summarizeFiles(options.files, options.range);
  } catch (e) {
    if (!(e instanceof LogFileError)) throw e;
    err.write(`exgate report: ${e.message}\n`);
    return 1;
  }
  out.write(options.json ? toJson(result) : formatTable(result));
  return 0;
}

/** Streams every file, in the order given, through one accumulator. */
export async function summarizeFiles(files: readonly string[], range: TimeRange): Promise<Report> {
  await checkReadable(files);
  const acc = new ReportAccumulator(range);
  for (const file of files) {
    for await (const line of readLines(file)) acc.addLine(line);
  }
  return acc.report();
}

function parseOptions(argv: readonly string[], now: number): ReportOptions {
  const { values, positionals } = parseArgs({
    args: [...argv],
    options: {
      since: { type: 'string' },
      until: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  const help = values.help === true;
  if (positionals.length === 0 && !help) throw new UsageError('at least one FILE is required');
  return { files: positionals, range: parseRange(values.since, values.until, now), json: values.json === true, help };
}

/** node:util parseArgs throws a TypeError with an ERR_PARSE_ARGS_* code for an unknown option or a missing value. */
function isParseArgsError(e: unknown): boolean {
  const code = e instanceof TypeError ? (e as NodeJS.ErrnoException).code : undefined;
  return code?.startsWith('ERR_PARSE_ARGS_') === true;
}

/**
 * The report as one line of JSON. C1 controls and the line/paragraph separators, which
 * JSON.stringify leaves raw, are escaped too, so a hostile user name cannot drive the terminal.
 */
function toJson(r: Report): string {
  return (
    JSON.stringify(r).replace(
      /[\u007f-\u009f\u2028\u2029]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
    ) + '\n'
  );
}
