/**
 * The PowerShell the mailbox-flags runner receives (INTERFACE.md): one read with Get-CASMailbox,
 * and each change as one line `Set-CASMailbox -Identity '<identity>' -<Flag>:$true|$false …`,
 * followed by a line that reports whether it worked, so one mailbox's failure neither stops the
 * batch nor hides among the others.
 */
import type { CasFlag, Change } from './plan.js';

/** PowerShell treats these like `'` inside a single-quoted string (about_Quoting_Rules). */
const QUOTES = /['\u2018\u2019\u201a\u201b]/g;
const CONTROL = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/;

/** A single-quoted PowerShell string: every quote character doubled. Control characters (a line
 * break would end the command) are refused. */
export function quote(text: string): string {
  if (CONTROL.test(text)) throw new Error(`cannot quote ${JSON.stringify(text)}: control character`);
  return `'${text.replace(QUOTES, (q) => q + q)}'`;
}

/** The read: every mailbox's DistinguishedName and the mapped flags, as JSON. Any error stops it
 * (a partial read must never look like "these are all the mailboxes"). */
export function readScript(flags: readonly CasFlag[]): string {
  return (
    [
      "$ErrorActionPreference = 'Stop'",
      `Get-CASMailbox -ResultSize Unlimited | Select-Object ${['DistinguishedName', ...flags].join(',')} | ConvertTo-Json -Depth 2 -Compress`,
    ].join('\n') + '\n'
  );
}

/** One mailbox's changes, all its flags on one line. */
export interface MailboxChange {
  readonly identity: string;
  readonly flags: readonly { readonly flag: CasFlag; readonly to: boolean }[];
}

/** True when an identity can be written as a PowerShell string (no control characters). */
export function quotable(text: string): boolean {
  return !CONTROL.test(text);
}

/** Groups a plan's changes by mailbox, in plan order. */
export function byMailbox(changes: readonly Change[]): MailboxChange[] {
  const out = new Map<string, { flag: CasFlag; to: boolean }[]>();
  for (const c of changes) {
    const list = out.get(c.identity) ?? [];
    list.push({ flag: c.flag, to: c.to });
    out.set(c.identity, list);
  }
  return [...out].map(([identity, flags]) => ({ identity, flags }));
}

/** The Set-CASMailbox line of one mailbox. */
export function setLine(m: MailboxChange): string {
  return `Set-CASMailbox -Identity ${quote(m.identity)} ${m.flags.map((f) => `-${f.flag}:$${f.to}`).join(' ')}`;
}

/**
 * The script for a batch: each Set line, then `exgate-ok <nonce> N`, or `exgate-failed <nonce> N`
 * and the error's message, judged by whether `$Error` grew: `$?` is not reliable after the proxy
 * functions Import-PSSession makes for remote cmdlets. The nonce (fresh per run) keeps anything
 * a cmdlet prints from passing for a result line.
 */
export function changeScript(batch: readonly MailboxChange[], nonce: string, first = 0): string {
  const lines = ["$ErrorActionPreference = 'Continue'"];
  batch.forEach((m, i) => {
    lines.push(
      '$exgateErrors = $Error.Count',
      setLine(m),
      `if ($Error.Count -eq $exgateErrors) { 'exgate-ok ${nonce} ${first + i}' } else { 'exgate-failed ${nonce} ${first + i}'; $Error[0].Exception.Message }`,
    );
  });
  return lines.join('\n') + '\n';
}
