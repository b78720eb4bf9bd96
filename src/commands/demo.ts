/**
 * `exgate demo` (`npm start`): the self-contained demo. It starts the built-in Exchange
 * stand-in on the upstream address of config/demo.yaml, then the gateway with that config:
 * a generated self-signed certificate, the embedded `file` directory (alice may, bob may not),
 * access records on stdout.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config } from '../config/load.js';
import { ConfigError, fatalText, systemErrorText } from '../errors.js';
import { startExchangeStandin } from '../standin/exchange.js';
import { startGateway, type RunningGateway } from '../runtime/start.js';

/** The demo's config, shipped in the package. */
export const DEMO_CONFIG = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'config', 'demo.yaml');

/**
 * The demo users' passwords (config/demo-users.yaml keeps only their hashes), so that the stand-in's
 * forms sign-in accepts them when a browser opens the stand-in itself.
 */
export const DEMO_FORMS_USERS: Readonly<Record<string, string>> = { alice: 'Alice-Demo-1', bob: 'Bob-Demo-1' };

export async function demo(configFile = DEMO_CONFIG): Promise<number> {
  let upstreamUrl: URL;
  let directory: Config['directory'];
  try {
    ({
      upstream: { url: upstreamUrl },
      directory,
    } = loadConfig(configFile));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(fatalText(err));
      return 1;
    }
    throw err;
  }
  let standin: Awaited<ReturnType<typeof startExchangeStandin>>;
  try {
    standin = await startExchangeStandin({
      host: upstreamUrl.hostname,
      port: Number(upstreamUrl.port),
      formsUsers: { ...DEMO_FORMS_USERS },
      ntlmDomain: directory.type === 'file' ? directory.netbiosDomain : undefined,
      ntlmDnsDomain: directory.type === 'file' ? directory.upnSuffixes[0] : undefined,
    });
  } catch (err) {
    const why = systemErrorText(err);
    process.stderr.write(
      `exgate: ${configFile}: upstream.url: cannot start the Exchange stand-in on ${upstreamUrl.host}: ${why}\n`,
    );
    return 1;
  }
  let running: RunningGateway;
  try {
    running = await startGateway(configFile);
  } catch (err) {
    // The stand-in would keep the process alive (issue 10: the demo hung on an unwritable cert path).
    await standin.close();
    process.stderr.write(fatalText(err));
    return 1;
  }
  const { port } = running.address;
  process.stderr.write(banner(port, standin.url));
  await new Promise<void>((resolve) => {
    const stop = () => {
      void running
        .close()
        .then(() => standin.close())
        .then(resolve);
    };
    process.once('SIGTERM', stop);
    // The demo's files are built in; `exgate serve` reloads on SIGHUP. Here it must not end the demo.
    process.on('SIGHUP', () => process.stderr.write('exgate demo: SIGHUP ignored (the demo does not reload)\n'));
    process.once('SIGINT', stop);
  });
  return 0;
}

function banner(port: number, upstream: string): string {
  const base = `https://127.0.0.1:${port}`;
  return `
exgate demo: gateway on ${base}, Exchange stand-in on ${upstream} (not real Exchange)
  allowed (200):  curl -k -u 'alice:Alice-Demo-1' ${base}/EWS/Exchange.asmx -d '<x/>'
  not allowed:    curl -k -u 'bob:Bob-Demo-1'     ${base}/EWS/Exchange.asmx -d '<x/>'   (403)
  wrong password: curl -k -u 'alice:nope'         ${base}/EWS/Exchange.asmx -d '<x/>'   (401)
  denied to all:  curl -k ${base}/ecp/                                                   (403)
  internal name:  curl -k --resolve exchange.demo.test:${port}:127.0.0.1 https://exchange.demo.test:${port}/owa/   (421)
  Outlook on the web in a browser: ${base}/owa/  (accept the self-signed certificate)
    sign in as alice / Alice-Demo-1 → her inbox;  bob / Bob-Demo-1 → "not available from outside"
Access records follow on stdout, one JSON line per request. Ctrl-C stops.

`;
}
