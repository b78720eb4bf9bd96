/**
 * vitest globalSetup: one throwaway Samba AD DC (domain LAB.TEST, fixtures from helpers/ad-fixtures.ts)
 * for the whole test run, shared by all test files.
 *
 * Tests read the connection details with `inject('ldapUrl')` etc. (typed by the ProvidedContext
 * declaration at the bottom). Samba runs in this (main) process; test workers can administer the directory
 * over LDAP with `sambaAdmin(inject('ldapUrl'))`, and stop/restart the DC through a small HTTP control
 * endpoint on 127.0.0.1 with `sambaControl(inject('sambaControlUrl'))`.
 *
 * Requires root; see helpers/samba.ts.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TestProject } from 'vitest/node';
import { startSamba, type SambaControlAction, type SambaHandle } from './helpers/samba.js';

/** Serves POST /stop-server and POST /start-server on 127.0.0.1 (random port) for test workers. */
async function startControlServer(samba: SambaHandle): Promise<{ url: string; server: Server }> {
  const actions: Record<SambaControlAction, () => Promise<void>> = {
    'stop-server': () => samba.stopServer(),
    'start-server': () => samba.startServer(),
  };
  // Serialize requests so a stop and a start never interleave.
  let queue: Promise<unknown> = Promise.resolve();
  const server = createServer((req, res) => {
    const action = actions[(req.url ?? '').replace(/^\//, '') as SambaControlAction];
    if (req.method !== 'POST' || !action) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('POST /stop-server or /start-server\n');
      return;
    }
    const job = queue.then(action);
    queue = job.catch(() => undefined);
    job.then(
      () =>
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: true, pid: samba.pid })),
      (err: unknown) =>
        res.writeHead(500, { 'content-type': 'text/plain' }).end(err instanceof Error ? err.message : String(err)),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  server.unref();
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/`, server };
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const samba = await startSamba({ log: (m) => console.log(`[samba] ${m}`) });
  let control: { url: string; server: Server };
  try {
    control = await startControlServer(samba);
  } catch (err) {
    await samba.stop();
    throw err;
  }

  project.provide('ldapUrl', samba.ldapUrl);
  project.provide('ldapsUrl', samba.ldapsUrl);
  project.provide('ldapCaFile', samba.caFile);
  project.provide('ldapCaPem', samba.caPem);
  project.provide('sambaControlUrl', control.url);

  const t = samba.timings;
  console.log(
    `[samba] ready in ${t.total} ms (template ${t.templateCreated ? `created in ${t.template}` : `reused, ${t.template}`} ms, ` +
      `copy ${t.copy} ms, start ${t.start} ms, fixtures ${t.fixtures} ms), pid ${samba.pid}, dir ${samba.dir}`,
  );

  return async () => {
    await new Promise<void>((resolve) => control.server.close(() => resolve()));
    await samba.stop();
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** `ldap://127.0.0.1:389` (simple binds allowed without TLS). */
    ldapUrl: string;
    /** `ldaps://127.0.0.1:636` */
    ldapsUrl: string;
    /** Path of the PEM of the CA that issued the DC's certificate. */
    ldapCaFile: string;
    /** The same CA as PEM text. */
    ldapCaPem: string;
    /** Base URL of the control endpoint for `sambaControl()` (stop/start the DC). */
    sambaControlUrl: string;
  }
}
