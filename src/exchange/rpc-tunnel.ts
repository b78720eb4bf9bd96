/**
 * Outlook Anywhere (RPC over HTTP), Basic only. Node's parser rejects RPC_IN_DATA/RPC_OUT_DATA, so
 * the first decrypted bytes of each connection are peeked at (research/node-proxy.md §1.3); an RPC
 * head (≤ 16 KiB) runs the gateway's stages (judge) and, when allowed, the connection becomes a raw
 * tunnel to Exchange carrying exactly the declared body, cut after idleTimeoutSeconds of silence.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { newAccessRecord, type AccessRecord } from '../pipeline/access-log.js';
import { authorize } from '../pipeline/authorize.js';
import { failedHead, rpcBodyLength } from './client-error.js';
import type { DenyReason } from '../errors.js';
import { basicChallenge } from '../auth/front-ends.js';
import { judge } from '../gateway.js';
import { refuseSocket, type DenyOptions } from '../pipeline/respond.js';
import { RPC_METHODS } from '../pipeline/services.js';
import { parseHead, rebuildHead, type RpcHead } from './rpc-head.js';
import type { State } from '../runtime/state.js';
import type { Identity } from '../auth/authenticate.js';
import { sourceKey } from '../auth/lockout.js';
import { connectHealthy } from '../upstream/connect.js';
import { clientAddress } from '../runtime/client-address.js';

const MAX_HEAD = 16 * 1024;
const HEAD_END = Buffer.from('\r\n\r\n');
const PREFIXES = [...RPC_METHODS].map((m) => Buffer.from(`${m} `, 'latin1'));

/**
 * Looks at the first bytes of a TLS connection. `toHttp` receives every connection that is not
 * Outlook Anywhere, with the bytes read so far put back.
 */
export function peek(
  socket: TLSSocket,
  state: () => State,
  toHttp: (socket: TLSSocket) => void,
  writeRecord: (r: AccessRecord) => void,
): void {
  let buf: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => {
    socket.off('data', onData);
    refuseRaw(socket, writeRecord, buf, 408, 'request head not received in time');
  }, state().config.http.headersTimeoutMs);
  const handOff = () => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.pause();
    socket.unshift(buf);
    toHttp(socket);
    socket.resume();
  };
  const onData = (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    const prefix = matchPrefix(buf);
    if (prefix === 'no') return handOff();
    if (prefix === 'maybe') return;
    const end = buf.indexOf(HEAD_END);
    if (end < 0) {
      if (buf.length > MAX_HEAD) {
        clearTimeout(timer);
        socket.off('data', onData);
        refuseRaw(socket, writeRecord, buf, 431, 'request head too large');
      }
      return;
    }
    clearTimeout(timer);
    socket.off('data', onData);
    // The limit holds for the head itself, also when its end arrived in the same read.
    if (end > MAX_HEAD) return refuseRaw(socket, writeRecord, buf, 431, 'request head too large');
    socket.pause();
    void tunnel(socket, buf.subarray(0, end), buf.subarray(end + 4), state(), writeRecord);
  };
  socket.on('data', onData);
  socket.once('close', () => clearTimeout(timer));
}

function matchPrefix(buf: Buffer): 'yes' | 'no' | 'maybe' {
  for (const p of PREFIXES) {
    const n = Math.min(p.length, buf.length);
    if (buf.subarray(0, n).equals(p.subarray(0, n))) return buf.length >= p.length ? 'yes' : 'maybe';
  }
  return 'no';
}

/**
 * Runs an RPC request through the gateway's stages (gateway.ts judge) and, when allowed, turns the
 * connection into a tunnel to Exchange.
 */
async function tunnel(
  socket: TLSSocket,
  rawHead: Buffer,
  rest: Buffer,
  state: State,
  writeRecord: (r: AccessRecord) => void,
): Promise<void> {
  const head = parseHead(rawHead);
  if (!head) return refuseRaw(socket, writeRecord, rawHead, 400, 'malformed RPC request head');
  const record = newAccessRecord(socket, head);
  const started = performance.now();
  const refuse = (reason: DenyReason, opts: DenyOptions & { keepDecision?: boolean } = {}) => {
    refuseSocket(socket, record, reason, opts);
    record.durationMs = Math.round(performance.now() - started);
    writeRecord(record);
  };
  const request = {
    method: head.method,
    url: head.url,
    httpVersion: head.version.slice('HTTP/'.length),
    headers: head.headers,
    rawHeaders: head.rawHeaders,
    socket,
  };
  const judged = await judge(request, record, state, undefined, true);
  if (judged.kind === 'refuse') return refuse(judged.reason, judged);
  if (judged.kind !== 'allow' || judged.identity === null) {
    return refuse('bad-credentials', {
      challenges: [basicChallenge(state.realm)],
      detail: 'the Outlook Anywhere tunnel takes Basic credentials only',
    });
  }
  const length = rpcBodyLength(head.rawHeaders, head.headers) as number; // admitted: exactly one
  const source = clientAddress(socket) ?? '';
  const cap = state.config.services.rpc.maxTunnelsPerSource;
  // Counted on the state bus: with workers, the cap holds for the address across all of them.
  const slot = await state.bus.acquireSlot(`tunnel\0${sourceKey(source)}`, cap);
  if (!slot)
    return refuse('gateway-lockout', {
      status: 429,
      detail: `more than ${cap} Outlook Anywhere tunnels from one address`,
    });
  if (socket.destroyed) return slot.release();
  // A healthy server for rpc; a connect failure tries the next (connect.ts).
  const connected = await connectHealthy(state.upstream, 'rpc');
  if (!connected.ok || socket.destroyed) {
    slot.release();
    if (connected.ok) return void connected.socket.destroy();
    return refuse(connected.reason, { detail: connected.detail, keepDecision: true });
  }
  record.upstream = connected.member.server.key;
  record.upstreamMs = Math.round(performance.now() - started);
  // A client that waits for 100 before its body (impacket, IIS answers at once) hears it only now,
  // once allowed; Exchange never sees the Expect (rebuildHead drops it).
  if (head.headers.expect !== undefined) socket.write('HTTP/1.1 100 Continue\r\n\r\n');
  const recheck = recheckPeriodically(socket, judged.identity, state, record);
  pipeTunnel(socket, connected.socket, head, rest, length, state, record, started, () => {
    clearInterval(recheck);
    slot.release();
    writeRecord(record);
  });
}

/**
 * A tunnel lives for hours (Outlook Anywhere's keep-alives): the account's groups and state are
 * checked again every groupTtlSeconds, and the tunnel is cut when the policy no longer allows it.
 */
function recheckPeriodically(
  socket: TLSSocket,
  identity: Identity,
  state: State,
  record: AccessRecord,
): NodeJS.Timeout {
  const every = Math.max(1, state.config.cache.groupTtlSeconds) * 1000;
  const timer = setInterval(() => {
    void state.authenticator
      .refresh(identity, {
        source: clientAddress(socket) ?? '',
        groupDns: state.policy.groupDns,
        policyVersion: state.policy.version,
      })
      .then((auth) => {
        const allowed = auth.ok && authorize('rpc', auth.identity, state.policy).allow;
        if (!allowed && !socket.destroyed) {
          record.detail = 'tunnel closed: no longer allowed';
          socket.destroy();
        }
      });
  }, every);
  timer.unref();
  return timer;
}

function pipeTunnel(
  client: TLSSocket,
  upstream: Socket,
  head: RpcHead,
  rest: Buffer,
  length: number,
  state: State,
  record: AccessRecord,
  started: number,
  done: () => void,
): void {
  const idleMs = state.config.services.rpc.idleTimeoutSeconds * 1000;
  let finished = false;
  let answered = false; // a byte from Exchange reached the client
  // `failure`: Exchange failed before answering anything; the client gets 502/504 as on the HTTP path.
  const finish = (detail: string | null, failure?: 502 | 504) => {
    if (finished) return;
    finished = true;
    if (detail && record.detail === null) record.detail = detail;
    record.durationMs = Math.round(performance.now() - started);
    upstream.destroy();
    if (failure && !answered && client.writable) {
      refuseSocket(client, record, failure === 504 ? 'upstream-timeout' : 'upstream-error', { keepDecision: true });
      setTimeout(() => client.destroy(), 1000).unref(); // the rest of an upload is not awaited
    } else {
      client.destroy();
    }
    done();
  };
  upstream.write(rebuildHead(head, length, client, record.requestId));
  // Exactly the declared body goes on; a byte beyond it would be a second request smuggled
  // past the checks, so the tunnel ends there (one request per tunnel).
  let remaining = length;
  const relay = (d: Buffer): void => {
    if (finished) return;
    if (d.length > remaining) {
      record.detail = 'bytes beyond the declared Content-Length';
      finish(null);
      return;
    }
    remaining -= d.length;
    record.bytesIn += d.length;
    if (d.length > 0 && !upstream.write(d)) client.pause();
  };
  upstream.on('drain', () => client.resume());
  relay(rest);
  client.on('data', relay);
  let first = true;
  upstream.on('data', (d: Buffer) => {
    if (first) {
      first = false;
      answered = true;
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(d.subarray(0, 16).toString('latin1'));
      record.status = status ? Number(status[1]) : 0;
    }
    record.bytesOut += d.length;
  });
  upstream.pipe(client);
  client.resume();
  // Both directions must be silent for idleMs before the tunnel is cut (Outlook Anywhere's own
  // keep-alive is 720/900 s, research/node-proxy.md §4).
  let lastActivity = Date.now();
  const touch = () => {
    lastActivity = Date.now();
  };
  client.on('data', touch);
  upstream.on('data', touch);
  const idle = setInterval(
    () => {
      if (Date.now() - lastActivity >= idleMs) finish('tunnel idle timeout', 504);
    },
    Math.min(idleMs, 30_000),
  );
  idle.unref();
  const end = (detail: string | null, failure?: 502 | 504) => () => {
    clearInterval(idle);
    finish(detail, failure);
  };
  upstream.once('error', (err: NodeJS.ErrnoException) => end(`upstream: ${err.code ?? err.message}`, 502)());
  client.once('error', end(null));
  upstream.once('close', () => end(answered ? null : 'Exchange closed the connection without answering', 502)());
  client.once('close', end(null));
}

/** Answers a connection whose head could not be read whole or parsed: logged with as much of
 * its request line, Host and User-Agent as arrived. */
function refuseRaw(
  socket: TLSSocket,
  writeRecord: (r: AccessRecord) => void,
  raw: Buffer,
  status: number,
  detail: string,
): void {
  const head = failedHead(raw, raw.length);
  const record = newAccessRecord(socket, head ?? { headers: {} });
  if (head && RPC_METHODS.has(head.method)) record.service = 'rpc';
  refuseSocket(socket, record, 'bad-request', { status, detail });
  writeRecord(record);
}
