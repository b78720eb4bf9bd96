/**
 * The command line: argv → one command function (INTERFACE.md, "Command line").
 *
 *   exgate serve --config FILE        run the gateway
 *   exgate check --config FILE        config, policy, AD, Exchange, log, file access; every problem, then `ok`
 *   exgate demo                       the self-contained demo (`npm start`)
 *   exgate hash-password              scrypt hash for the `file` directory (password on stdin)
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { checkCommand } from './commands/check.js';
import { demo } from './commands/demo.js';
import { explain } from './commands/explain.js';
import { report } from './commands/report.js';
import { mailboxFlags } from './commands/mailbox-flags.js';
import { serve } from './commands/serve.js';
import { hashPassword } from './directory/file.js';

const USAGE = `usage: exgate <command> [options]

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
`;

/** Runs one command; resolves to the process exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve': return serve(configArg(rest));
    case 'check': return checkCommand(rest);
    case 'explain': return explain(rest);
    case 'report': return report(rest);
    case 'mailbox-flags': return mailboxFlags(rest);
    case 'demo': return demo();
    case 'hash-password': return hashPasswordCommand();
    case 'version':
    case '--version': return print(version());
    case undefined:
    case 'help':
    case '--help':
    case '-h': return print(USAGE);
    default:
      process.stderr.write(`exgate: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
}

function configArg(args: readonly string[]): string {
  const { values } = parseArgs({ args: [...args], options: { config: { type: 'string', short: 'c' } }, strict: true });
  if (!values.config) throw new Error('--config FILE is required');
  return values.config;
}

async function hashPasswordCommand(): Promise<number> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const password = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
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
  const pkg = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}
