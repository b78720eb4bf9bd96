/**
 * Load clients of the memory benchmarks, each run as its own process (the driver's event loop
 * keeps sampling /proc meanwhile):
 *
 *   node .bench/bench/load.js hold   --port P --n N [--conc C] [--sources 127.0.0.2,…] --auth HDR --servername NAME [--heartbeat-ms MS]
 *   node .bench/bench/load.js upload --port P --bytes N --auth HDR --servername NAME [--path PATH]
 *   node .bench/bench/load.js resume --port P --n N --auth HDR --servername NAME [--ticket none|fixed] [--path PATH]
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
 *
 * resume: N TLS connections one after another, each one GET with `Connection: close`. With
 * `--ticket fixed` a first full handshake's session is offered on every later connection (a TLS
 * 1.3 ticket can be presented again). Prints `{"done":…,"ok":…,"reused":…,"keys":[…]}`: `reused`
 * counts `isSessionReused()`, `keys` the distinct ticket key names seen (the first 16 bytes of a
 * ticket in OpenSSL's format: one name per key, so one per worker unless the workers share keys).
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
    ticket: { type: 'string', default: 'none' },
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

/** One GET on a new TLS connection offering `session`; its status, whether it resumed, and its tickets. */
function oneConnection(
  session: Buffer | undefined,
): Promise<{ status: string; reused: boolean; sessions: Buffer[]; keys: string[] }> {
  return new Promise((resolveConn) => {
    const sessions: Buffer[] = [];
    const keys: string[] = [];
    const s = connect({
      port,
      host: '127.0.0.1',
      servername: values.servername,
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
      ...(session ? { session } : {}),
    });
    let head = '';
    let reused = false;
    s.on('session', (t: Buffer) => {
      sessions.push(t);
      // OpenSSL's ticket starts with the 16-byte name of the key that sealed it.
      keys.push(s.getTLSTicket()?.subarray(0, 16).toString('hex') ?? 'unknown');
    });
    s.once('secureConnect', () => {
      reused = s.isSessionReused();
      s.write(
        `GET ${values.path} HTTP/1.1\r\nHost: ${values.servername}\r\nAuthorization: ${values.auth}\r\n` +
          'Connection: close\r\nUser-Agent: exgate-bench\r\n\r\n',
      );
    });
    s.on('data', (d: Buffer) => {
      if (head.length < 64) head += d.toString('latin1', 0, 64);
    });
    s.on('error', () => {});
    s.on('close', () => resolveConn({ status: head.split('\r\n')[0] ?? '', reused, sessions, keys }));
  });
}

async function resume(): Promise<void> {
  const n = Number(values.n);
  const keys = new Set<string>();
  let session: Buffer | undefined;
  if (values.ticket === 'fixed') {
    const first = await oneConnection(undefined);
    session = first.sessions[first.sessions.length - 1];
    for (const k of first.keys) keys.add(k);
    if (!session) throw new Error(`no session ticket from the server (${first.status})`);
  }
  let ok = 0;
  let reused = 0;
  let firstStatus = '';
  const started = performance.now();
  for (let i = 0; i < n; i++) {
    const c = await oneConnection(session);
    firstStatus ||= c.status;
    if (/^HTTP\/1\.1 200 /.test(c.status)) ok++;
    if (c.reused) reused++;
    for (const k of c.keys) keys.add(k);
  }
  say({ done: n, ok, reused, keys: [...keys], firstStatus, ms: Math.round(performance.now() - started) });
  process.exit(0);
}

if (mode === 'hold') hold();
else if (mode === 'resume') void resume();
else if (mode === 'upload') upload();
else {
  process.stderr.write('usage: load.js hold|upload|resume …\n');
  process.exit(2);
}
