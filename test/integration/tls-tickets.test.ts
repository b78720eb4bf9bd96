/**
 * TLS session tickets with `workers: 2` (issue 16): the primary makes the key and sends it to the
 * workers, so a session resumes on whichever worker the connection lands on (which worker holds it is
 * read with `ss -p`). Rotation: a ticket from before it gets a full handshake; one from after resumes
 * everywhere. The key never appears in a log.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { EXTERNAL, freePort, startHarness, type Harness } from '../helpers/gateway-harness.js';

const ROTATE_SECONDS = 5;
const ROTATED = '"msg":"rotated the TLS session-ticket key"';

let h: Harness;
let child: ChildProcess;
let port: number;
let stderr = '';

beforeAll(async () => {
  h = await startHarness({ directory: 'file' });
  await h.running.close(); // keep the stand-in and the files; serve as processes
  port = await freePort();
  const config = parse(readFileSync(h.configFile, 'utf8')) as { tls: Record<string, unknown> } & Record<
    string,
    unknown
  >;
  Object.assign(config, { workers: 2, listen: { host: '127.0.0.1', port }, log: { level: 'info', access: 'stdout' } });
  config.tls.ticketKeyRotationSeconds = ROTATE_SECONDS;
  const file = join(h.dir, 'tickets.yaml');
  writeFileSync(file, stringify(config));
  const bin = join(import.meta.dirname, '..', '..', 'bin', 'exgate.js');
  child = spawn(process.execPath, [bin, 'serve', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => (stderr += d));
  const end = Date.now() + 15_000;
  while ((stderr.match(/"msg":"exgate listening"/g) ?? []).length < 2) {
    if (Date.now() > end) throw new Error(`workers did not start:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
});
afterAll(async () => {
  child?.kill('SIGKILL');
  await h?.close();
});

interface Handshake {
  readonly reused: boolean;
  /** The worker that holds the connection. */
  readonly pid: number;
  /** The ticket the server sent after a full handshake. */
  readonly session: Buffer | null;
}

/**
 * One TLS connection (TLS 1.3), resuming `session` if given. A full handshake waits for its ticket
 * (the server sends it after the handshake); a resumed one gets none from Node, and ends at once.
 */
function handshake(session?: Buffer): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket: TLSSocket = connect({ port, host: '127.0.0.1', servername: EXTERNAL, ca: h.gatewayCa, session });
    socket.on('error', reject);
    socket.on('data', () => {});
    socket.once('secureConnect', () => {
      const pid = ownerOf(socket.localPort as number);
      const reused = socket.isSessionReused();
      const done = (ticket: Buffer | null) => {
        resolve({ reused, pid, session: ticket });
        socket.destroy();
      };
      if (reused) done(null);
      else socket.once('session', done);
    });
  });
}

/** The pid of the process holding the gateway's end of the connection from `clientPort`. */
function ownerOf(clientPort: number): number {
  const out = execFileSync('ss', ['-tnpH', 'state', 'established', `( sport = :${port} and dport = :${clientPort} )`], {
    encoding: 'utf8',
  });
  const pids = [...out.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1]));
  expect(pids, out).toHaveLength(1);
  return pids[0] as number;
}

/** Waits for the primary's next key rotation, then for the new key to reach the workers. */
async function nextRotation(): Promise<void> {
  const count = () => stderr.split(ROTATED).length;
  const before = count();
  const end = Date.now() + (ROTATE_SECONDS + 5) * 1000;
  while (count() === before) {
    if (Date.now() > end) throw new Error(`no rotation logged:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 200));
}

describe('TLS session tickets across workers', () => {
  it('a session resumes on every worker, and after a rotation a new ticket does; the old one gets a full handshake', async () => {
    await nextRotation(); // a whole rotation period ahead
    const first = await handshake();
    expect(first.reused).toBe(false);
    const resumed = [];
    for (let i = 0; i < 6; i++) resumed.push(await handshake(first.session!));
    expect(resumed.map((r) => r.reused)).toEqual(Array(6).fill(true));
    expect(new Set([first.pid, ...resumed.map((r) => r.pid)]).size).toBe(2); // both workers resumed it

    await nextRotation();
    const stale = await handshake(first.session!);
    expect(stale.reused).toBe(false); // Node 20 holds one key: the previous key's tickets do not resume
    const after = [];
    for (let i = 0; i < 4; i++) after.push(await handshake(stale.session!));
    expect(after.map((r) => r.reused)).toEqual(Array(4).fill(true));
    expect(new Set(after.map((r) => r.pid)).size).toBe(2);
  }, 30_000);

  // Node's setSecureContext (the certificate reload) drops the ticket key: put back at once.
  it('a session made before a reload (SIGHUP) still resumes on every worker', async () => {
    await nextRotation();
    const first = await handshake();
    const reloads = () => (stderr.match(/"msg":"reloaded"/g) ?? []).length;
    const before = reloads();
    child.kill('SIGHUP');
    const end = Date.now() + 3000;
    while (reloads() < before + 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(reloads()).toBe(before + 2);
    const resumed = [];
    for (let i = 0; i < 4; i++) resumed.push(await handshake(first.session!));
    expect(resumed.map((r) => r.reused)).toEqual(Array(4).fill(true));
    expect(new Set(resumed.map((r) => r.pid)).size).toBe(2);
  }, 30_000);

  it('never logs a key', () => {
    expect(stderr).toContain(ROTATED);
    expect(stderr).not.toMatch(/[A-Za-z0-9+/]{60,}/); // a 48-byte key is 64 base64 or 96 hex characters
  });
});
