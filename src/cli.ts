/**
 * The command line: argv → one command function (INTERFACE.md, "Command line").
 *
 *   exgate serve --config FILE        run the gateway
 *   exgate check --config FILE        config, policy, AD, Exchange, log, file access; every problem, then `ok`
 *   exgate demo                       the self-contained demo (`npm start`)
 *   exgate hash-password              scrypt hash for the `file` directory (password on stdin)
 *   exgate <command> --help           that command's usage, exit 0 (USAGE below lists every command)
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { check } from './commands/check.js';
import { demo } from './commands/demo.js';
import { explain, EXPLAIN_USAGE } from './commands/explain.js';
import { report, REPORT_USAGE } from './commands/report.js';
import { mailboxFlags, MAILBOX_FLAGS_USAGE } from './commands/mailbox-flags.js';
import { serve } from './commands/serve.js';
import { hashPassword } from './directory/file.js';

const USAGE = `usage: exgate <command> [options]        exgate <command> --help: that command's usage

commands:
  serve --config FILE      run the gateway
  check --config FILE [--as-user USER] [--offline]
                           check config, certificate, AD, policy groups, Exchange, log and the service user's
                           file access; print every problem and one line per area, then ok
  explain --config FILE --user NAME --service SVC [--name HOST] [--ip ADDR] [--json]
                           what the gateway would decide for this user and service, and why (no password)
  report FILE… [--since T] [--until T] [--json]
                           summarise access logs (plain or gzip): who reached which service, denials, top sources
  mailbox-flags plan --config FILE [--json] | apply --config FILE [--force]
                           keep Exchange's per-mailbox flags (Set-CASMailbox) in step with the policy groups
  demo                     run the self-contained demo (npm start): gateway on https://127.0.0.1:8443
  hash-password            read a password on stdin, print its scrypt hash for a file directory
  version                  print the version
  help [COMMAND]           this text, or a command's usage
`;

/** Each command's usage: `exgate <command> --help` prints it and exits 0. */
const HELP: Readonly<Record<string, string>> = {
  serve: `usage: exgate serve --config FILE

Run the gateway with this config and the policy it names. SIGHUP (systemctl reload) reloads both,
and the certificate; SIGTERM stops after the requests in flight (http.shutdownGraceMs).
  -c, --config FILE   the gateway config (YAML)
`,
  check: `usage: exgate check --config FILE [--as-user USER] [--offline]

Validate the config and the policy exactly as serve does; against AD: the service account's bind,
baseDn, netbiosDomain, upnSuffixes and every group and user the policy names; the certificate (names,
chain); Exchange with the configured trust and servername; the log; and whether the service user can
read every file. Prints every problem as file:line: key: message, one line per area checked or
skipped, then ok (exit 0) or the number of problems (exit 1).
  -c, --config FILE   the gateway config (YAML)
  --as-user USER      check file access as USER (root only; default: User= of exgate.service)
  --offline           skip the directory and Exchange
`,
  explain: `${EXPLAIN_USAGE}

What the gateway would decide for this user and service, and why, without a password: the account,
its transitive groups, every rule for the service. Exit 0 when answered (allow or deny), 1 when
the config, the policy or the directory fails, 2 on bad arguments.
  --service SVC   mapi, rpc, ews, mrsproxy, activesync, owa, ecp, oab, autodiscover, powershell, api
  --name HOST     the name the client asked for (default: the first external name)
  --ip ADDR       the client's address (IPv4 or IPv6)
  --json          {decision, reason, rule, user, groups, …} on one line
`,
  report: REPORT_USAGE,
  'mailbox-flags': `${MAILBOX_FLAGS_USAGE}

Keep Exchange's per-mailbox flags (Set-CASMailbox) in step with the policy groups. plan prints every
change and the PowerShell apply would run; apply runs it. Exit 0 when done or nothing to do, 1 when
refused or any mailbox failed, 2 on bad arguments.
  --json    plan only: {changes: [{identity, flag, from, to, reason}], …}
  --force   apply only: override mailboxFlags.maxBlockShare (never an empty group or a failed read)
`,
  demo: `usage: exgate demo

Run the self-contained demo (npm start): the gateway on https://127.0.0.1:8443 with a generated
self-signed certificate, a file directory with demo users, and a built-in Exchange stand-in
(not Exchange). Ctrl-C stops it.
`,
  'hash-password': `usage: exgate hash-password < FILE

Read a password on stdin (one line; the trailing newline is ignored) and print its scrypt hash,
for the users file of a directory of type file.
`,
  version: 'usage: exgate version\n\nPrint the version.\n',
  help: "usage: exgate help [COMMAND]\n\nThe list of commands, or one command's usage.\n",
};

/** Runs one command; resolves to the process exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== undefined && Object.hasOwn(HELP, command) && wantsHelp(rest)) return print(HELP[command]!);
  switch (command) {
    case 'serve':
      return withConfig(command, rest, serve);
    case 'check':
      return withConfig(command, rest, (file, v) =>
        check(file, process.stdout, { asUser: v.asUser, offline: v.offline }),
      );
    case 'explain':
      return explain(rest);
    case 'report':
      return report(rest);
    case 'mailbox-flags':
      return mailboxFlags(rest);
    case 'demo':
      return noArguments(command, rest) ?? demo();
    case 'hash-password':
      return noArguments(command, rest) ?? hashPasswordCommand();
    case 'version':
    case '--version':
      return noArguments('version', rest) ?? print(version());
    case 'help':
      return help(rest);
    case undefined:
    case '--help':
    case '-h':
      return print(USAGE);
    default:
      process.stderr.write(`exgate: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
}

/** --help or -h among the options (not after `--`, where it would be an argument). */
function wantsHelp(args: readonly string[]): boolean {
  const end = args.indexOf('--');
  return (end === -1 ? args : args.slice(0, end)).some((a) => a === '--help' || a === '-h');
}

function help(args: readonly string[]): number {
  const [topic, ...extra] = args;
  if (topic === undefined) return print(USAGE);
  if (extra.length > 0 || !Object.hasOwn(HELP, topic)) {
    return usageError('help', `no command ${JSON.stringify(topic)}`, USAGE);
  }
  return print(HELP[topic]!);
}

/** serve and check: `--config FILE` (check also `--as-user USER`, `--offline`); exit 2 with the usage otherwise. */
async function withConfig(
  command: 'serve' | 'check',
  args: readonly string[],
  run: (file: string, extra: { asUser?: string | undefined; offline?: boolean | undefined }) => Promise<number>,
): Promise<number> {
  let values: { config?: string | undefined; 'as-user'?: string | undefined; offline?: boolean | undefined };
  try {
    const options = command === 'check' ? CHECK_OPTIONS : SERVE_OPTIONS;
    values = parseArgs({ args: [...args], options, strict: true }).values;
  } catch (err) {
    return usageError(command, (err as Error).message, HELP[command]!);
  }
  if (!values.config) return usageError(command, '--config FILE is required', HELP[command]!);
  return run(values.config, { asUser: values['as-user'], offline: values.offline });
}
const SERVE_OPTIONS = { config: { type: 'string', short: 'c' } } as const;
const CHECK_OPTIONS = { ...SERVE_OPTIONS, 'as-user': { type: 'string' }, offline: { type: 'boolean' } } as const;

/** Commands that take no arguments refuse any (exit 2), rather than run with one ignored. */
function noArguments(command: string, args: readonly string[]): number | undefined {
  if (args.length === 0) return undefined;
  return usageError(command, `unexpected argument ${JSON.stringify(args[0])}`, HELP[command]!);
}

function usageError(command: string, why: string, usage: string): number {
  process.stderr.write(`exgate ${command}: ${why}\n\n${usage}`);
  return 2;
}

async function hashPasswordCommand(): Promise<number> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const password = Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
  if (!password) {
    process.stderr.write('exgate: no password on stdin\n');
    return 1;
  }
  return print(await hashPassword(password));
}

function print(text: string): number {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
  return 0;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'package.json'), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}
