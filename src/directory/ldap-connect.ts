/**
 * Connections to a DC: ldaps://, or ldap:// upgraded with StartTLS (its handshake bounded in time),
 * and the fault of a connection or operation as DirectoryUnavailableError, in words.
 */
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Client } from 'ldapts';
import type { LdapSettings } from '../config/load.js';
import { DirectoryUnavailableError } from '../errors.js';
import { answered, describe } from './ldap-errors.js';

/** A new connection to `url`, TLS-protected as configured. */
export async function connectLdap(url: string, settings: LdapSettings): Promise<Client> {
  const { connectTimeoutMs, timeoutMs, ca, startTls } = settings;
  const tlsOptions: ConnectionOptions = { minVersion: 'TLSv1.2', ...(ca ? { ca } : {}) };
  // ldapts opens implicit TLS whenever tlsOptions is non-empty, even for ldap:// (research/samba.md
  // §3): pass it only for ldaps://, and upgrade ldap:// with startTLS.
  const client = new Client({
    url,
    connectTimeout: connectTimeoutMs,
    timeout: timeoutMs,
    ...(url.startsWith('ldaps:') ? { tlsOptions } : {}),
  });
  if (startTls && url.startsWith('ldap:')) {
    const host = new URL(url).hostname;
    // ldapts times the StartTLS request but not the TLS handshake after it: bound both.
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`StartTLS handshake timed out after ${connectTimeoutMs + timeoutMs} ms`)),
        connectTimeoutMs + timeoutMs,
      );
    });
    try {
      await Promise.race([client.startTLS({ ...tlsOptions, ...(isIP(host) ? {} : { servername: host }) }), stalled]);
    } catch (err) {
      client.unbind().catch(() => {});
      throw unavailable('StartTLS', err);
    } finally {
      clearTimeout(timer);
    }
  }
  return client;
}

export function unavailable(what: string, err: unknown): DirectoryUnavailableError {
  if (err instanceof DirectoryUnavailableError) return err;
  return new DirectoryUnavailableError(`directory ${what} failed: ${describe(err)}`, { answered: answered(err) });
}

/** True for errors that mean the connection was never made (the request was not sent). */
export function notConnected(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return (
    ['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN'].includes(code ?? '') ||
    /^Connection timeout/.test((err as Error).message ?? '')
  );
}
