/**
 * Load clients of the memory benchmarks, each run as its own process (the driver's event loop
 * keeps sampling /proc meanwhile):
 *
 *   node .bench/bench/load.js hold   --port P --n N [--conc C] [--sources 127.0.0.2,…] --auth HDR --servername NAME [--heartbeat-ms MS]
 *   node .bench/bench/load.js upload --port P --bytes N --auth HDR --servername NAME [--path PATH]
 *
 * hold: opens N TLS connections, C handshakes at a time, and sends on each an ActiveSync Ping
 * that the upstream holds for `--heartbeat-ms` (sending nothing meanwhile): N idle long-polls.
 * Source addresses rotate over `--sources` so that ephemeral ports never run short. Prints
 * `{"sent":…,"failed":…,"answered":…}` lines (every 500 ms while it changes, and once all are
 * sent); a connection that is answered or closed early counts as answered/failed, with the first
 * status line it saw. SIGTERM closes everything.
 *
 * upload: one POST of `--bytes` bytes (a repeated 64 KiB pattern, with backpressure) and prints
 * `{"status":…,"ms":…,"body":…}` once the response is read.
 */
import { request } from 'node:https';
import { connect, type TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';

const [mode, ...rest] = process.argv.slice(2);
const { values } = parseArgs({
  args: rest,
  options: {
    port: { type: 'string' },
    n: { type: 'string', default: '1000' },
    conc: { type: 'string', default: '100' },
    sources: { type: 'string', default: '' },
    auth: { type: 'string', default: '' },
    servername: { type: 'string', default: 'bench.lab.test' },
    'heartbeat-ms': { type: 'string', default: '3600000' },
    bytes: { type: 'string', default: String(2 ** 30) },
    path: { type: 'string', default: '/EWS/Exchange.asmx' },
  },
  strict: true,
});
const port = Number(values.port);
const say = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');

function hold(): void {
  const n = Number(values.n);
  const conc = Number(values.conc);
  const sources = values.sources ? values.sources.split(',') : [undefined];
  const body = Buffer.from([0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x48, 0x03, 0x36, 0x30, 0x00, 0x01]); // a WBXML-shaped Ping
  const sockets: TLSSocket[] = [];
  let started = 0;
  let sent = 0;
  let failed = 0;
  let answered = 0;
  let firstAnswer: string | null = null;
  let firstError: string | null = null;
  const next = () => {
    if (started >= n) return;
    const i = started++;
    const localAddress = sources[i % sources.length];
    const s = connect({
      port,
      host: '127.0.0.1',
      ...(localAddress ? { localAddress } : {}),
      servername: values.servername,
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    });
    sockets.push(s);
    let done = false;
    const settle = (ok: boolean) => {
      if (done) return;
      done = true;
      if (ok) sent++;
      else failed++;
      next();
    };
    s.once('secureConnect', () => {
      const head =
        `POST /Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=BENCH${i}&DeviceType=Bench HTTP/1.1\r\n` +
        `Host: ${values.servername}\r\nAuthorization: ${values.auth}\r\nMS-ASProtocolVersion: 16.1\r\n` +
        `Content-Type: application/vnd.ms-sync.wbxml\r\nContent-Length: ${body.length}\r\n` +
        `X-Standin-Heartbeat-Ms: ${values['heartbeat-ms']}\r\nUser-Agent: exgate-bench\r\n\r\n`;
      s.write(Buffer.concat([Buffer.from(head, 'latin1'), body]), (err) => settle(!err));
    });
    s.once('data', (d: Buffer) => {
      answered++;
      firstAnswer ??= d.toString('latin1').split('\r\n')[0] ?? '';
    });
    s.on('error', (err: NodeJS.ErrnoException) => {
      firstError ??= err.code ?? err.message;
      settle(false);
    });
    s.on('close', () => settle(false));
  };
  for (let k = 0; k < conc; k++) next();
  let told = '';
  const report = () => {
    const line = JSON.stringify({ sent, failed, answered, firstAnswer, firstError, done: sent + failed === n });
    if (line !== told) process.stdout.write((told = line) + '\n');
  };
  setInterval(report, 500);
  process.on('SIGTERM', () => {
    for (const s of sockets) s.destroy();
    process.exit(0);
  });
}

function upload(): void {
  const total = Number(values.bytes);
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = i & 0xff;
  const started = performance.now();
  const req = request(
    {
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: values.path,
      servername: values.servername,
      rejectUnauthorized: false,
      agent: false,
      headers: {
        host: values.servername,
        authorization: values.auth,
        'content-type': 'text/xml; charset=utf-8',
        'content-length': total,
        'user-agent': 'exgate-bench',
      },
    },
    (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => {
        say({
          status: res.statusCode,
          ms: Math.round(performance.now() - started),
          body: Buffer.concat(parts).toString('utf8').slice(0, 300),
        });
        process.exit(0);
      });
    },
  );
  req.on('error', (err) => {
    say({ status: 0, error: err.message, ms: Math.round(performance.now() - started) });
    process.exit(1);
  });
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const part = total - sent >= chunk.length ? chunk : chunk.subarray(0, total - sent);
      sent += part.length;
      if (!req.write(part)) return void req.once('drain', pump);
    }
    req.end();
  };
  pump();
}

if (mode === 'hold') hold();
else if (mode === 'upload') upload();
else {
  process.stderr.write('usage: load.js hold|upload …\n');
  process.exit(2);
}
