/**
 * A raw connection to a healthy Exchange server, for the Outlook Anywhere tunnel (rpc-tunnel.ts):
 * the same trust, SNI and verified name as forwarding. A TCP or TLS connect failure, before any
 * byte was written, counts against that server and tries the next healthy one, all within
 * upstream.connectTimeoutMs.
 */
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect } from 'node:tls';
import type { DenyReason } from '../errors.js';
import type { Service } from '../pipeline/services.js';
import type { Member } from './pool.js';
import type { Upstream } from './upstream.js';

export type Connected =
  | { readonly ok: true; readonly socket: Socket; readonly member: Member }
  | { readonly ok: false; readonly reason: DenyReason; readonly detail: string };

/** Connects to a healthy server for `service`, trying the next one after a connect failure. */
export async function connectHealthy(upstream: Upstream, service: Service): Promise<Connected> {
  const deadline = performance.now() + upstream.config.connectTimeoutMs;
  const tried = new Set<Member>();
  let last: { reason: DenyReason; detail: string } | null = null;
  for (;;) {
    const member = upstream.pool.pick(service, tried);
    const left = deadline - performance.now();
    if (!member || left <= 0) {
      // With one `url` (no health checks) a failed connect answers 502/504 as it always did.
      if (last && !upstream.checked) return { ok: false, ...last };
      return {
        ok: false,
        reason: 'upstream-unavailable',
        detail: last?.detail ?? `no healthy Exchange server for ${service}`,
      };
    }
    tried.add(member);
    try {
      const socket = await connectTo(upstream, member, left);
      member.hold(socket);
      return { ok: true, socket, member };
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const timeout = e.code === 'ETIMEDOUT';
      const detail = `${member.server.key}: ${timeout ? 'upstream connect timed out' : `upstream: ${e.code ?? e.message}`}`;
      last = { reason: timeout ? 'upstream-timeout' : 'upstream-error', detail };
      upstream.pool.connectFailed(member, `${e.code ?? e.name}: ${e.message}`);
    }
  }
}

function connectTo(upstream: Upstream, member: Member, timeoutMs: number): Promise<Socket> {
  const { ca, insecureSkipVerify } = upstream.config;
  const { url, servername } = member.server;
  const https = url.protocol === 'https:';
  const port = Number(url.port) || (https ? 443 : 80);
  // No SNI for an IP address (RFC 6066 §3; Node warns, DEP0123), as on the HTTP path; the
  // certificate is checked against the servername all the same.
  const sni = isIP(servername) ? {} : { servername };
  const host = url.hostname.replace(/^\[|\]$/g, ''); // URL keeps an IPv6 literal's brackets
  const socket: Socket = https
    ? tlsConnect({
        host,
        port,
        ...sni,
        ...(ca ? { ca } : {}),
        rejectUnauthorized: !insecureSkipVerify,
        ALPNProtocols: ['http/1.1'],
        minVersion: 'TLSv1.2',
        checkServerIdentity: (_name, cert) => checkServerIdentity(servername, cert),
      })
    : netConnect({ host, port });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    const failed = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.once('error', failed);
    socket.once(https ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      socket.off('error', failed);
      socket.on('error', () => {}); // until the tunnel listens: its 'close' handler ends it
      resolve(socket);
    });
  });
}
