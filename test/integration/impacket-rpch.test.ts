/**
 * A third-party Outlook Anywhere client through the gateway: impacket's RPC over HTTP v2 transport
 * (Debian's python3-impacket) probes with NTLM, falls back to Basic, and opens both channels with
 * `Expect: 100-continue`. It must get 100 Continue on each, and Exchange must read exactly the
 * RTS PDUs impacket wrote after it, behind a head without `Expect`.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  AUTODISCOVER,
  EXTERNAL,
  INTERNAL,
  startHarness,
  TEST_POLICY,
  type Harness,
} from '../helpers/gateway-harness.js';
import { startRawExchangeBehind, type RawExchange } from '../helpers/raw-exchange.js';

const run = promisify(execFile);
// Debian installs impacket for the system interpreter only (/usr/lib/python3/dist-packages).
const PYTHON = '/usr/bin/python3';
const CLIENT = join(import.meta.dirname, '..', 'helpers', 'impacket-rpch.py');
const POLICY =
  TEST_POLICY.replace('services: [rpc, ecp, powershell, mrsproxy, api]', 'services: [ecp, powershell, mrsproxy, api]') +
  '  - id: outlook-anywhere\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n';

let h: Harness;
let exchange: RawExchange;
let raw: Awaited<ReturnType<typeof startRawExchangeBehind>>;

beforeAll(async () => {
  raw = await startRawExchangeBehind();
  exchange = raw.exchange;
  h = await startHarness({
    directory: 'file',
    policy: POLICY,
    gateway: {
      upstream: raw.upstream,
      // impacket connects to an address and sends no SNI; its Host is 127.0.0.1:<port>
      names: { external: [EXTERNAL, AUTODISCOVER, '127.0.0.1'], internal: [INTERNAL], noSni: 'external' },
    },
  });
});
afterAll(async () => {
  await h?.close();
  await raw?.close();
});

/** What impacket-rpch.py prints: the interim answers it read, and the PDUs it wrote (hex). */
interface ClientResult {
  interim: Record<string, string>;
  auth?: string;
  sentIn?: string;
  sentOut?: string;
  error?: string;
}

/** The bytes Exchange read on the connection that began with `method`, split at the end of the head. */
async function forwarded(method: string, bodyLength: number): Promise<{ head: string; body: Buffer }> {
  const end = Date.now() + 5000;
  for (;;) {
    const conn = exchange.connections.find((c) => c.subarray(0, method.length).toString('latin1') === method);
    const at = conn ? conn.indexOf('\r\n\r\n') : -1;
    if (conn && at >= 0 && conn.length - at - 4 >= bodyLength) {
      return { head: conn.subarray(0, at).toString('latin1'), body: conn.subarray(at + 4) };
    }
    if (Date.now() > end) throw new Error(`Exchange did not read ${bodyLength} body bytes after ${method}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

it('impacket gets 100 Continue on both channels and Exchange reads exactly its RTS PDUs', async () => {
  const url = `https://127.0.0.1:${h.port}/rpc/rpcproxy.dll`;
  const args = [CLIENT, url, USERS.alice.sam, USERS.alice.password, 'LAB'];
  const { stdout } = await run(PYTHON, args, { timeout: 30_000 });
  const result = JSON.parse(stdout) as ClientResult;

  expect(result.error).toBeUndefined();
  expect(result.auth).toBe('Basic'); // NTLM probe refused, Basic offered
  expect(result.interim).toEqual({
    RPC_IN_DATA: 'HTTP/1.1 100 Continue\r\n\r\n',
    RPC_OUT_DATA: 'HTTP/1.1 100 Continue\r\n\r\n',
  });

  const inChannel = await forwarded('RPC_IN_DATA', 104);
  const outChannel = await forwarded('RPC_OUT_DATA', 76);
  expect(inChannel.head.split('\r\n')[0]).toBe('RPC_IN_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001 HTTP/1.1');
  expect(inChannel.head).toMatch(/\r\nContent-Length: 1073741824(\r\n|$)/i);
  expect(outChannel.head).toMatch(/\r\nContent-Length: 76(\r\n|$)/i);
  for (const { head } of [inChannel, outChannel]) expect(head).not.toMatch(/\r\nExpect:/i); // the gateway answered it
  expect(inChannel.body.toString('hex')).toBe(result.sentIn); // CONN/B1, byte for byte
  expect(outChannel.body.toString('hex')).toBe(result.sentOut); // CONN/A1, byte for byte

  await h.record((r) => r.method === 'RPC_IN_DATA' && r.reason === 'no-credentials' && r.status === 401);
  for (const method of ['RPC_IN_DATA', 'RPC_OUT_DATA']) {
    const rec = await h.record((r) => r.method === method && r.decision === 'allow', 5000);
    expect(rec).toMatchObject({ user: 'LAB\\alice', rule: 'outlook-anywhere', service: 'rpc' });
  }
  expect(h.allLogText()).not.toContain(USERS.alice.password);
});
