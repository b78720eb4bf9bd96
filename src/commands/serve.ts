/**
 * `exgate serve --config FILE`: start the gateway (start.ts) and run until SIGTERM/SIGINT, as one
 * process or as the primary of workers (cluster.ts). SIGHUP reloads config, policy and
 * certificate; on any error the running state stays.
 */
import cluster from 'node:cluster';
import { accessLogger, appLogger } from '../pipeline/access-log.js';
import { loadConfig, type Config } from '../config/load.js';
import { ConfigError, DirectoryUnavailableError, fatalText, ServiceAccountRefusedError } from '../errors.js';
import { holdWith503, type Holding } from '../runtime/holding.js';
import { scheduleMailboxFlags } from '../mailbox-flags/schedule.js';
import { startGateway, systemdSocket, systemdSocketPassed, type RunningGateway } from '../runtime/start.js';
import { ensureSelfSigned, loadTlsMaterial } from '../runtime/tls.js';
import { joinCluster, runPrimary, workerBus, workerTicketKeys } from '../runtime/cluster.js';

const RETRY_MS = 5000;
/**
 * The exit code when the DC refused the service account: EX_CONFIG (sysexits.h), which the unit
 * lists in RestartPreventExitStatus=, since every restart would bind again and count toward AD's lockout.
 */
export const EXIT_SERVICE_ACCOUNT_REFUSED = 78;

/**
 * Runs the gateway until a stop signal: as one process, or, with `workers` above 1, as the
 * primary of a cluster (cluster.ts). Waits for the directory if it is down at startup (fail
 * closed: every request meanwhile gets 503 with Retry-After, holding.ts).
 */
export async function serve(file: string): Promise<number> {
  let config: Config;
  try {
    config = loadConfig(file);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(fatalText(err));
      return 1;
    }
    throw err;
  }
  if (config.workers > 1 && cluster.isPrimary && systemdSocketPassed()) {
    process.stderr.write(`${config.file}: workers: socket activation (exgate.socket) needs workers: 1\n`);
    return 1;
  }
  // The process that supervises (the single one, or the primary) syncs mailbox flags; a worker never.
  const stopSync = cluster.isPrimary ? scheduleMailboxFlags(config, appLogger(config.log.level)) : () => {};
  if (config.workers > 1 && cluster.isPrimary) return runPrimary(config, stopSync);

  // Signals that arrive while starting must not kill the process with their default action.
  let reload = (): void => {};
  let stop: ((signal: string) => void) | null = null;
  let stopAsked: string | null = null;
  const onHup = () => reload();
  const onStop = (signal: string) => {
    if (stop) stop(signal);
    else stopAsked ??= signal;
  };
  process.on('SIGHUP', onHup);
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);

  let running: RunningGateway | undefined;
  // While the directory is down at startup the port answers 503 (holding.ts), not "refused".
  let holding: Holding | null = null;
  const release = async () => {
    const h = holding;
    holding = null;
    await h?.close();
  };
  for (;;) {
    try {
      running = await startGateway(file, {
        ...(cluster.isWorker ? { adminPort: false, bus: workerBus, ticketKeys: workerTicketKeys } : {}),
        beforeListen: release,
      });
      break;
    } catch (err) {
      // Only a DC that did not answer is waited for: a refused service account, a port in use or
      // a log that cannot be opened will not fix itself (issue 10: retrying locked the account).
      if (!(err instanceof DirectoryUnavailableError) || err instanceof ServiceAccountRefusedError || stopAsked) {
        await release();
        process.stderr.write(fatalText(err));
        const refused = err instanceof ConfigError && err.cause instanceof ServiceAccountRefusedError;
        const code = refused ? EXIT_SERVICE_ACCOUNT_REFUSED : 1;
        // A worker that cannot start must end (its IPC channel would keep it alive): the
        // primary sees it and starts another, with backoff.
        if (cluster.isWorker) process.exit(code);
        process.off('SIGHUP', onHup).off('SIGTERM', onStop).off('SIGINT', onStop);
        stopSync();
        setTimeout(() => process.exit(code), 1000).unref(); // nothing may keep a failed start alive
        return code;
      }
      process.stderr.write(`exgate: ${err.message}; retrying in ${RETRY_MS / 1000} s\n`);
      if (holding === null && systemdSocket() === null) holding = await holdPort(config);
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }
  const gw = running;
  if (cluster.isWorker) joinCluster(gw);
  reload = () => {
    void gw.reload();
  };
  await new Promise<void>((resolve) => {
    let stopping = false;
    stop = (signal: string) => {
      if (stopping) return; // a second SIGTERM (systemd, the primary) changes nothing
      stopping = true;
      gw.log.info({ signal }, 'stopping');
      stopSync();
      void gw.close(gw.gateway.state.config.http.shutdownGraceMs).then(resolve);
    };
    if (stopAsked) stop(stopAsked);
  });
  // Everything is closed; whatever still holds the event loop (an IPC channel, a socket a
  // library keeps) must not keep a stopped gateway alive.
  setTimeout(() => process.exit(0), 1000).unref();
  if (cluster.isWorker) process.disconnect?.();
  return 0;
}

/** Answers 503 on the gateway's port until the gateway can start; null when the port is taken. */
async function holdPort(config: Config): Promise<Holding | null> {
  try {
    await ensureSelfSigned(config);
    const access = accessLogger(config.log.access);
    const holding = await holdWith503(config, loadTlsMaterial(config), access.log, config.listen);
    process.stderr.write(
      `exgate: answering 503 on ${config.listen.host}:${config.listen.port} until the directory answers\n`,
    );
    return {
      close: async () => {
        await holding.close();
        await access.close();
      },
    };
  } catch (err) {
    process.stderr.write(
      `exgate: cannot answer on ${config.listen.host}:${config.listen.port} meanwhile: ${err instanceof Error ? err.message : String(err)}\n`,
    );
    return null;
  }
}
