/**
 * Debian's HAProxy as a layer-4 balancer in tests (scripts/ensure-test-deps.mjs installs it): run in
 * the foreground from a config written into the test's folder, ready once every `bind` accepts.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';

export interface Haproxy {
  /** What HAProxy wrote (its warnings and errors). */
  output(): string;
  close(): Promise<void>;
}

/** Starts `haproxy -db -f <dir>/haproxy.cfg` with `config`, and waits until `ports` accept on 127.0.0.1. */
export async function startHaproxy(dir: string, config: string, ports: readonly number[]): Promise<Haproxy> {
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, config);
  const child = spawn('/usr/sbin/haproxy', ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout.on('data', (d: Buffer) => (text += d));
  child.stderr.on('data', (d: Buffer) => (text += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const end = Date.now() + 10_000;
  for (const port of ports) {
    while (!(await accepts(port))) {
      if (child.exitCode !== null || Date.now() > end) {
        child.kill('SIGKILL');
        throw new Error(`haproxy did not start:\n${text}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    output: () => text,
    close: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
