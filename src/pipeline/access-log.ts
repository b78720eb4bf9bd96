/**
 * The access record: one per request, shape fixed up front, filled by each stage, written once
 * when the response closes (STYLE.md §11). Also the pino setup for both logs, with redaction as
 * a second line: no stage ever puts a header, cookie or password into a record.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import pino, { type DestinationStream, type Logger } from 'pino';
import { pathOf, hostName } from './classify.js';
import { AccessFile, type AccessFileEvents } from '../runtime/access-file.js';
import { clientAddress } from '../runtime/client-address.js';
import type { Reason } from '../errors.js';
import type { Service } from './services.js';

/** The access-log record (INTERFACE.md, "Access log"). Every field is always present. */
export interface AccessRecord {
  /** When the request arrived (ISO 8601). */
  time: string;
  /** A random UUID, made here and sent to Exchange as `X-Request-Id` (headers.ts): IIS can log it. */
  requestId: string;
  client: string | null;
  sni: string | null;
  host: string | null;
  method: string;
  /** The request path as sent, without the query string. */
  path: string;
  /** `unknown` for a path no service claims (404); null when the request never got that far. */
  service: Service | 'unknown' | null;
  /** `NETBIOS\sam` once a name could be parsed, also when authentication failed. */
  user: string | null;
  decision: 'allow' | 'deny';
  reason: Reason | null;
  rule: string | null;
  /** The status sent; 499 when the client went away before an answer. */
  status: number;
  durationMs: number;
  /** Whether a cached decision answered: `hit`, `miss`, or null when no authentication ran. */
  cache: 'hit' | 'miss' | 'stale' | null;
  /** Time from dispatch to Exchange's response headers; null when not forwarded. */
  upstreamMs: number | null;
  /** The Exchange server the request went to (`host:port`); null when not forwarded. */
  upstream: string | null;
  bytesIn: number;
  bytesOut: number;
  userAgent: string | null;
  /** MAPI `X-RequestType` / ActiveSync `Cmd`: what the client was doing. */
  operation: string | null;
  /** Technical detail for a denial (never a credential). */
  detail: string | null;
}

const MAX_FIELD = 512;

/** What a record is made from: a parsed request, or the head of one Node's parser refused. */
export interface RequestHead {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly headers: IncomingMessage['headers'];
}

/** A fresh record for a request, with everything the request itself tells. */
export function newAccessRecord(socket: Socket, req: RequestHead, started = Date.now()): AccessRecord {
  const sni = (socket as Partial<TLSSocket>).servername;
  return {
    time: new Date(started).toISOString(),
    requestId: randomUUID(),
    client: clientAddress(socket) ?? null,
    sni: typeof sni === 'string' ? sni.toLowerCase() : null,
    host: hostName(req.headers.host),
    method: req.method ?? '',
    path: clip(pathOf(req.url ?? '')),
    service: null,
    user: null,
    decision: 'deny',
    reason: null,
    rule: null,
    status: 0,
    durationMs: 0,
    cache: null,
    upstreamMs: null,
    upstream: null,
    bytesIn: 0,
    bytesOut: 0,
    userAgent: clipOrNull(req.headers['user-agent']),
    operation: clipOrNull(req.headers['x-requesttype']),
    detail: null,
  };
}

export function clip(s: string): string {
  return s.length > MAX_FIELD ? s.slice(0, MAX_FIELD) + '…' : s;
}

function clipOrNull(v: string | string[] | undefined): string | null {
  const s = Array.isArray(v) ? v[0] : v;
  return s === undefined ? null : clip(s);
}

/** Paths pino must never print, whatever object a log call is given. */
export const REDACT_PATHS = [
  'authorization',
  'cookie',
  'password',
  'bindPassword',
  'rawPacket',
  '*.authorization',
  '*.cookie',
  '*.password',
  '*.bindPassword',
  '*.rawPacket',
  '*["set-cookie"]',
  'headers.authorization',
  'headers.cookie',
  'req.headers.authorization',
  'req.headers.cookie',
  'err.rawPacket',
  'err.config',
];

const FORMATTERS = { level: (label: string) => ({ level: label }) };

/** The access logger and what its destination does besides taking records. */
export interface AccessLog {
  readonly log: Logger;
  /** Opens the file again under its name: after logrotate moved it (SIGHUP does this). */
  reopen(): void;
  /** Waits until every record so far is written, then closes the file. */
  close(): Promise<void>;
}

/**
 * The access logger: JSON lines to stdout or a file; records carry their own `time`. Throws the
 * system error when the file cannot be opened; a write that fails later goes to `events`, and
 * the records to stderr (access-file.ts).
 */
export function accessLogger(target: string, stream?: DestinationStream, events: AccessFileEvents = {}): AccessLog {
  const file = stream ? null : new AccessFile(target === 'stdout' ? null : target, events);
  // No redaction here: a record has a fixed shape with no header, cookie or password in it
  // (newAccessRecord), and wildcard redaction cost ~9 % of a request's CPU (bench profile).
  const log = pino({ base: null, timestamp: false, messageKey: 'msg', formatters: FORMATTERS }, file ?? stream);
  const sink = file ?? stream;
  if (sink) SINKS.set(log, sink);
  return {
    log,
    reopen: () => file?.reopen(),
    close: async () => {
      if (file) await file.close();
      else if (stream) flush(stream);
    },
  };
}

/** The destination of each access logger accessLogger() built: writeRecord() writes to it directly. */
const SINKS = new WeakMap<Logger, DestinationStream>();

/**
 * Writes one access record: the same JSON line pino writes for `log.info(record)` (`level` first, then
 * the record's fields in order), made by one JSON.stringify instead of pino's per-key serializer, which
 * cost ~4 % of a proxied request's CPU (issue 16 profile). Any other logger gets `log.info(record)`.
 */
export function writeRecord(log: Logger, record: AccessRecord): void {
  const sink = SINKS.get(log);
  if (sink === undefined || !log.isLevelEnabled('info')) log.info(record);
  else sink.write(`{"level":"info",${JSON.stringify(record).slice(1)}\n`);
}

/** The operational log: startup, reloads, faults. JSON lines to stderr. */
export function appLogger(level: string, stream?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { name: 'exgate', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: FORMATTERS,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      // An error is logged as type, code, message and stack only: a library error may carry the
      // request it failed on (headers, credentials) in properties or in its cause.
      serializers: { err: errorFields },
    },
    stream ?? pino.destination({ dest: 2, sync: true }),
  );
}

function errorFields(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  const code = (err as NodeJS.ErrnoException).code;
  return { type: err.name, ...(code === undefined ? {} : { code }), message: err.message, stack: err.stack };
}

function flush(dest: DestinationStream): void {
  const d = dest as DestinationStream & { flushSync?: () => void };
  try {
    d.flushSync?.();
  } catch {
    // not ready yet (sonic-boom before open) or already closed: nothing to flush
  }
}

/** What an ActiveSync request does: its `Cmd=` (plain query form; base64 queries stay null). */
export function activeSyncCommand(url: string): string | null {
  const q = url.indexOf('?');
  if (q < 0) return null;
  for (const pair of url.slice(q + 1).split('&')) {
    if (pair.slice(0, 4).toLowerCase() === 'cmd=') return clip(pair.slice(4));
  }
  return null;
}
