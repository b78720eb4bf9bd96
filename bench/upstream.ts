/**
 * The upstream of the proxy benchmarks, run as its own process so its CPU is apart from the
 * proxy's and the driver's:
 *
 *   node .bench/bench/upstream.js --kind plain|standin [--cert FILE --key FILE]
 *
 * - `standin`: the Exchange stand-in (src/standin/exchange.ts). Its request record is emptied
 *   every 250 ms (it would otherwise grow with every request of a load test); ActiveSync Pings
 *   are counted first.
 * - `plain`: a minimal node:http server for the throughput runs, so that the upstream does not
 *   eat the CPU the proxies compete for on a small box (the stand-in hashes every body, makes a
 *   UUID and keeps a record per request). It answers like the stand-in where the benchmarks need
 *   it: 401 without Authorization; GET → 1 KiB (`?bytes=N` for another size) with the stand-in's
 *   Exchange-like response headers (which the gateway strips and nginx passes); POST → reads and
 *   counts the body and answers `{"bytes":N}`; an ActiveSync Ping is held for
 *   `X-Standin-Heartbeat-Ms` (default 60 s) with nothing sent.
 *
 * Prints `{"port":N}` once listening, then `{"pings":N}` whenever the number of Pings received
 * changes (checked every 250 ms). SIGTERM ends it.
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { startExchangeStandin } from '../src/standin/exchange.js';

const { values } = parseArgs({
  options: { kind: { type: 'string', default: 'plain' }, cert: { type: 'string' }, key: { type: 'string' } },
  strict: true,
});
const tls = values.cert && values.key ? { cert: readFileSync(values.cert), key: readFileSync(values.key) } : undefined;
let pings = 0;
const say = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');

const FILLER = Buffer.alloc(1024 * 1024, 'x');
const PING = /[?&]cmd=ping(&|$)/i;
// What the stand-in (and Exchange) put on every response; see LEAKY_HEADERS in src/standin/exchange.ts.
const EXCHANGE_HEADERS: Record<string, string> = {
  'X-FEServer': 'EXCH-FE01',
  'X-BEServer': 'EXCH-BE01.lab.test',
  'X-CalculatedBETarget': 'exch-be01.lab.test',
  'X-DiagInfo': 'EXCH-BE01',
  'X-BackEndHttpStatus': '200',
  'X-Powered-By': 'ASP.NET',
  Server: 'Microsoft-IIS/10.0',
};
let requestId = 0;

function plain(req: IncomingMessage, res: ServerResponse): void {
  const url = req.url ?? '/';
  const answer = (status: number, type: string, body: Buffer | string) => {
    res.writeHead(status, {
      ...EXCHANGE_HEADERS,
      'request-id': `bench-${(requestId++).toString(16)}`,
      'Content-Type': type,
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  };
  // Exchange's forms sign-in, as little of it as the forms row needs: the form sets `cadata`, and a
  // request with that cookie is signed in (src/standin/owa-forms.ts has the whole flow).
  if (req.method === 'POST' && url.endsWith('/auth.owa')) {
    req.resume();
    res.writeHead(302, { Location: '/owa/', 'Set-Cookie': 'cadata=bench; path=/; HttpOnly', 'Content-Length': 0 });
    res.end();
    return;
  }
  if (req.headers.authorization === undefined && !String(req.headers.cookie ?? '').includes('cadata=')) {
    req.resume();
    return answer(401, 'text/plain', '401 Unauthorized\n');
  }
  if (req.method === 'GET' || req.method === 'HEAD') {
    const m = /[?&]bytes=(\d+)/.exec(url);
    const bytes = Math.min(FILLER.length, m ? Number(m[1]) : 1024);
    return answer(200, 'text/plain', FILLER.subarray(0, bytes));
  }
  let bytes = 0;
  req.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    if (req.method === 'POST' && PING.test(url)) {
      pings += 1;
      const ms = Number(req.headers['x-standin-heartbeat-ms'] ?? 60_000) || 60_000;
      const t = setTimeout(
        () => answer(200, 'application/vnd.ms-sync.wbxml', Buffer.from([0x03, 0x01, 0x6a, 0x00])),
        ms,
      );
      res.once('close', () => clearTimeout(t));
      return;
    }
    answer(200, 'application/json; charset=utf-8', JSON.stringify({ bytes }));
  });
}

async function main(): Promise<void> {
  let port: number;
  if (values.kind === 'standin') {
    const standin = await startExchangeStandin(tls ? { tls } : {});
    port = standin.port;
    setInterval(() => {
      pings += standin.seen((r) => r.method === 'POST' && PING.test(r.url));
      standin.reset();
    }, 250);
  } else if (values.kind === 'plain') {
    const server = tls ? createHttpsServer(tls, plain) : createHttpServer(plain);
    server.keepAliveTimeout = 300_000; // longer than any proxy's idle upstream pool
    server.headersTimeout = 310_000;
    server.requestTimeout = 0;
    await new Promise<void>((resolve) => server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve));
    port = (server.address() as AddressInfo).port;
  } else {
    throw new Error(`unknown --kind ${values.kind}`);
  }
  say({ port });
  let told = 0;
  setInterval(() => {
    if (pings !== told) say({ pings: (told = pings) });
  }, 250);
}

process.on('SIGTERM', () => process.exit(0));
main().catch((err: unknown) => {
  process.stderr.write(`upstream: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
