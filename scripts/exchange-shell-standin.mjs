#!/usr/bin/env node
// EXCHANGE SHELL STAND-IN — for tests only. This is NOT PowerShell and NOT Exchange.
//
// There is no Exchange server on Linux, so the tests of `exgate mailbox-flags` point the
// mailbox-flags runner (docs: /work/shared/INTERFACE.md, `mailboxFlags.runner`) at this script
// instead of `pwsh` with an Exchange session:
//
//   node scripts/exchange-shell-standin.mjs STATE.json  <  script.ps1
//
// It reads the whole script from stdin and understands only the exact line shapes below; it keeps
// the Set-CASMailbox flags of a few fake mailboxes in STATE.json. Anything else (other than blank
// lines and `#` comments) makes it refuse the whole script before running any of it — like a
// PowerShell parse error — so a test notices as soon as exgate generates something this stand-in
// cannot vouch for. Keywords, cmdlet, parameter and variable names are case-insensitive (as in
// PowerShell); tokens are separated by spaces or tabs.
//
//   $ErrorActionPreference = 'Continue' | 'Stop'
//   Get-CASMailbox -ResultSize Unlimited | Select-Object [-Property] P1,P2,… | ConvertTo-Json [-Depth N] [-Compress]
//   Set-CASMailbox -Identity '<identity>' -<Flag>:$true|$false [-<Flag>:$true|$false …]
//   if ($?) { '<text>' } [else { '<text>' }]
//   $exgateErrors = $Error.Count
//   if ($Error.Count -eq $exgateErrors) { '<text>' } else { '<text>'; $Error[0].Exception.Message }
//   Write-Output '<text>'
//
// '<…>' is a PowerShell single-quoted string: it opens and closes with any of ' ‘ ’ ‚ ‛
// (U+0027, U+2018, U+2019, U+201A, U+201B); inside it, two quote characters in a row stand for one
// literal quote (the second of the two, as PowerShell's tokenizer does), and a lone one ends the
// string. A string must end on its own line (PowerShell would allow a line break inside one; the
// stand-in does not). Nothing may follow the last token of a line (no `;`, no trailing comment).
//
// Behaviour, modelled on PowerShell 7 with an Exchange session:
// - Get-CASMailbox: one object per mailbox in STATE.json with exactly the selected properties, in
//   the order selected (Select-Object semantics: an unknown property is null; DistinguishedName
//   comes from the mailbox's key; a missing flag reads as Exchange's default). ConvertTo-Json
//   prints an array for 2+ mailboxes, a single object for exactly one (PowerShell's pipeline
//   quirk), and nothing at all for none. Indented with 2 spaces, or compact with -Compress.
// - Set-CASMailbox: the identity is looked up by DistinguishedName, UserPrincipalName or Identity
//   (case-insensitive). Flags: MAPIBlockOutlookRpcHttp, MAPIBlockOutlookExternalConnectivity,
//   ActiveSyncEnabled, EwsEnabled, OWAEnabled. An unknown or repeated flag, an identity that is not
//   found or matches several mailboxes, or one listed in STATE.json's `failIdentities`, writes an
//   error to stderr, changes nothing and leaves `$?` false. Otherwise the flags are set, the call
//   is appended to `calls` as { identity, flags } and `$?` is true; if no value actually changed,
//   Exchange's "no settings … have been modified" WARNING is printed to stdout.
// - `$?` is the success of the last statement (every other statement sets it true).
// - Errors are non-terminating (the script goes on) unless $ErrorActionPreference is 'Stop', in
//   which case the first error ends the script with exit code 1, as `pwsh -File` would.
// - STATE.json's optional `failRead: true` makes Get-CASMailbox fail (no output, `$?` false).
// - After the script STATE.json is written back atomically (temp file + rename). Not safe for
//   concurrent runs against the same state file.
//
// Exit codes: 0 script ran; 1 unsupported/unparseable script (nothing ran, state untouched) or a
// terminating error under 'Stop'; 2 usage error or unreadable STATE.json.
//
// STATE.json:
// { "mailboxes": { "<DistinguishedName>": { "Identity": "…", "UserPrincipalName": "…",
//     "MAPIBlockOutlookRpcHttp": false, "MAPIBlockOutlookExternalConnectivity": false,
//     "ActiveSyncEnabled": true, "EwsEnabled": true, "OWAEnabled": true } },
//   "failIdentities": ["<DN, UPN or Identity>"], "failRead": false, "calls": [] }

import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

/** The five flags, with the value Exchange gives a new mailbox. */
const FLAG_DEFAULTS = {
  MAPIBlockOutlookRpcHttp: false,
  MAPIBlockOutlookExternalConnectivity: false,
  ActiveSyncEnabled: true,
  EwsEnabled: true,
  OWAEnabled: true,
};
const FLAGS = Object.keys(FLAG_DEFAULTS);
const SINGLE_QUOTES = new Set(["'", '\u2018', '\u2019', '\u201a', '\u201b']);
const NAME = /[A-Za-z_][A-Za-z0-9_]*/y;

class Unsupported extends Error {}
class Terminating extends Error {}

/** A cursor over one line. Every method either consumes what it expects or throws Unsupported. */
class Line {
  constructor(text) {
    this.s = text;
    this.i = 0;
  }
  atEnd() {
    return this.i >= this.s.length;
  }
  /** Optional spaces/tabs; returns whether there were any. */
  ws() {
    const start = this.i;
    while (this.s[this.i] === ' ' || this.s[this.i] === '\t') this.i++;
    return this.i > start;
  }
  /** One or more spaces/tabs. */
  sep() {
    if (!this.ws()) throw new Unsupported('expected a space');
  }
  /** Does the text here start with `word` (case-insensitive)? Consumes it if so. */
  tryWord(word) {
    if (this.s.slice(this.i, this.i + word.length).toLowerCase() !== word.toLowerCase()) return false;
    this.i += word.length;
    return true;
  }
  word(word) {
    if (!this.tryWord(word)) throw new Unsupported(`expected ${word}`);
  }
  /** These words in order, optional spaces before each. */
  words(...words) {
    for (const w of words) {
      this.ws();
      this.word(w);
    }
  }
  /** `{ 'text' }` (optional spaces around): the quoted text; `more` words may follow the text inside. */
  block(...more) {
    this.words('{');
    this.ws();
    const text = this.quoted();
    this.words(...more, '}');
    return text;
  }
  name() {
    NAME.lastIndex = this.i;
    const m = NAME.exec(this.s);
    if (!m) throw new Unsupported('expected a name');
    this.i += m[0].length;
    return m[0];
  }
  /** A token ends here: end of line or a space/tab. */
  boundary() {
    if (!this.atEnd() && this.s[this.i] !== ' ' && this.s[this.i] !== '\t') throw new Unsupported('unexpected text');
  }
  /** A PowerShell single-quoted string (see the header). */
  quoted() {
    if (!SINGLE_QUOTES.has(this.s[this.i])) throw new Unsupported('expected a single-quoted string');
    this.i++;
    let out = '';
    for (;;) {
      if (this.atEnd()) throw new Unsupported('unterminated string');
      const c = this.s[this.i++];
      if (SINGLE_QUOTES.has(c)) {
        if (this.i < this.s.length && SINGLE_QUOTES.has(this.s[this.i])) {
          out += this.s[this.i++]; // a doubled quote: the second one is the literal
          continue;
        }
        return out;
      }
      out += c;
    }
  }
  end() {
    this.ws();
    if (!this.atEnd()) throw new Unsupported('unexpected text after the statement');
  }
}

/** Parses one line into a statement, or null for a blank/comment line. */
function parseLine(text) {
  const l = new Line(text);
  l.ws();
  if (l.atEnd() || l.s[l.i] === '#') return null;

  if (l.tryWord('$ErrorActionPreference')) {
    l.ws();
    l.word('=');
    l.ws();
    const value = l.quoted();
    l.end();
    const canonical = ['Continue', 'Stop'].find((v) => v.toLowerCase() === value.toLowerCase());
    if (!canonical) throw new Unsupported(`only 'Continue' and 'Stop' are understood`);
    return { kind: 'eap', value: canonical };
  }

  if (l.tryWord('Get-CASMailbox')) {
    l.sep();
    l.word('-ResultSize');
    l.sep();
    l.word('Unlimited');
    l.ws();
    l.word('|');
    l.ws();
    l.word('Select-Object');
    l.sep();
    if (l.tryWord('-Property')) l.sep();
    const props = [l.name()];
    for (;;) {
      const save = l.i;
      l.ws();
      if (!l.tryWord(',')) {
        l.i = save;
        break;
      }
      l.ws();
      props.push(l.name());
    }
    const seen = new Set();
    for (const p of props) {
      if (seen.has(p.toLowerCase())) throw new Unsupported(`property ${p} selected twice`);
      seen.add(p.toLowerCase());
    }
    l.ws();
    l.word('|');
    l.ws();
    l.word('ConvertTo-Json');
    l.boundary();
    let depth;
    let compress = false;
    for (;;) {
      l.ws();
      if (l.atEnd()) break;
      if (l.tryWord('-Depth')) {
        if (depth !== undefined) throw new Unsupported('-Depth given twice');
        l.sep();
        const m = /^[0-9]+/.exec(l.s.slice(l.i));
        if (!m) throw new Unsupported('expected a number after -Depth');
        l.i += m[0].length;
        l.boundary();
        depth = Number(m[0]);
      } else if (l.tryWord('-Compress')) {
        if (compress) throw new Unsupported('-Compress given twice');
        l.boundary();
        compress = true;
      } else {
        throw new Unsupported('unexpected ConvertTo-Json parameter');
      }
    }
    return { kind: 'get', props, depth: depth ?? 2, compress };
  }

  if (l.tryWord('Set-CASMailbox')) {
    l.sep();
    l.word('-Identity');
    l.sep();
    const identity = l.quoted();
    const flags = [];
    for (;;) {
      const hadSpace = l.ws();
      if (l.atEnd()) break;
      if (!hadSpace) throw new Unsupported('expected a space before the next parameter');
      l.word('-');
      const name = l.name();
      l.word(':');
      let value;
      if (l.tryWord('$true')) value = true;
      else if (l.tryWord('$false')) value = false;
      else throw new Unsupported('expected :$true or :$false');
      l.boundary();
      flags.push({ name, value });
    }
    if (flags.length === 0) throw new Unsupported('Set-CASMailbox without any flag');
    return { kind: 'set', identity, flags };
  }

  if (l.tryWord('$exgateErrors')) {
    l.ws();
    l.word('=');
    l.ws();
    l.word('$Error.Count');
    l.end();
    return { kind: 'mark' };
  }

  if (l.tryWord('if')) {
    l.words('(');
    l.ws();
    if (l.tryWord('$Error.Count')) {
      // if ($Error.Count -eq $exgateErrors) { '<ok>' } else { '<failed>'; $Error[0].Exception.Message }
      l.words('-eq', '$exgateErrors', ')');
      const then = l.block();
      l.words('else');
      const otherwise = l.block(';', '$Error[0].Exception.Message');
      l.end();
      return { kind: 'ifErrors', then, otherwise };
    }
    l.words('$?', ')');
    const then = l.block();
    l.ws();
    const otherwise = l.tryWord('else') ? l.block() : null;
    l.end();
    return { kind: 'if', then, otherwise };
  }

  if (l.tryWord('Write-Output')) {
    l.sep();
    const text = l.quoted();
    l.end();
    return { kind: 'write', text };
  }

  throw new Unsupported('unknown statement');
}

function usage(message) {
  process.stderr.write(`stand-in: ${message}\nusage: exchange-shell-standin.mjs STATE.json < script.ps1\n`);
  process.exitCode = 2;
}

function main(argv) {
  if (argv.length !== 1) return usage('expected exactly one argument, the state file');
  const statePath = resolve(argv[0]);

  let state;
  try {
    state = JSON.parse(readFileSync(statePath, 'utf8'));
  } catch (err) {
    return usage(`cannot read state file ${statePath}: ${err.message}`);
  }
  if (
    state === null ||
    typeof state !== 'object' ||
    Array.isArray(state) ||
    state.mailboxes === null ||
    typeof state.mailboxes !== 'object' ||
    Array.isArray(state.mailboxes)
  ) {
    return usage(`state file ${statePath}: expected an object with a "mailboxes" object`);
  }
  for (const [dn, mbx] of Object.entries(state.mailboxes)) {
    if (mbx === null || typeof mbx !== 'object' || Array.isArray(mbx))
      return usage(`state file: mailbox ${dn} is not an object`);
  }
  state.failIdentities ??= [];
  state.calls ??= [];
  if (!Array.isArray(state.failIdentities) || !state.failIdentities.every((x) => typeof x === 'string')) {
    return usage('state file: "failIdentities" must be an array of strings');
  }
  if (!Array.isArray(state.calls)) return usage('state file: "calls" must be an array');

  // Parse everything first: like PowerShell, a script that does not parse does not run at all.
  let source;
  try {
    source = new TextDecoder('utf-8', { fatal: true }).decode(readFileSync(0));
  } catch (err) {
    process.stderr.write(`stand-in: cannot read the script from stdin as UTF-8: ${err.message}\n`);
    process.exitCode = 1;
    return;
  }
  if (source.startsWith('\uFEFF')) source = source.slice(1);
  const lines = source.split(/\r?\n/);
  const statements = [];
  for (const [index, text] of lines.entries()) {
    try {
      const statement = parseLine(text);
      if (statement) statements.push({ line: index + 1, ...statement });
    } catch (err) {
      if (!(err instanceof Unsupported)) throw err;
      process.stderr.write(`stand-in: unsupported line ${index + 1}: ${text} (${err.message})\n`);
      process.exitCode = 1;
      return;
    }
  }

  const out = [];
  const errors = [];
  let errorActionPreference = 'Continue';
  let lastOk = true;
  let mark = 0;
  const fail = (message) => {
    errors.push(message);
    lastOk = false;
    if (errorActionPreference === 'Stop') throw new Terminating(message);
  };
  const lower = (x) => (typeof x === 'string' ? x.toLowerCase() : undefined);
  const failSet = new Set(state.failIdentities.map((x) => x.toLowerCase()));

  try {
    for (const st of statements) {
      switch (st.kind) {
        case 'eap':
          errorActionPreference = st.value;
          lastOk = true;
          break;
        case 'write':
          out.push(st.text);
          lastOk = true;
          break;
        case 'mark':
          mark = errors.length;
          lastOk = true;
          break;
        case 'ifErrors':
          if (errors.length === mark) out.push(st.then);
          else out.push(st.otherwise, errors[errors.length - 1].replace(/^[A-Za-z-]+: /, ''));
          lastOk = true;
          break;
        case 'if': {
          const text = lastOk ? st.then : st.otherwise;
          if (text !== null) out.push(text);
          lastOk = true;
          break;
        }
        case 'get': {
          if (st.depth > 100) {
            fail(
              `ConvertTo-Json: Cannot validate argument on parameter 'Depth'. The ${st.depth} argument is greater than the maximum allowed range of 100.`,
            );
            break;
          }
          if (state.failRead === true) {
            fail('Get-CASMailbox: stand-in: injected failure (failRead is set in the state file).');
            break;
          }
          const objects = Object.entries(state.mailboxes).map(([dn, mbx]) => {
            const view = { DistinguishedName: dn, ...FLAG_DEFAULTS };
            for (const [k, v] of Object.entries(mbx)) if (k !== 'DistinguishedName') view[k] = v;
            const picked = {};
            for (const p of st.props) {
              const key = Object.keys(view).find((k) => k.toLowerCase() === p.toLowerCase());
              if (key === undefined) picked[p] = null;
              else picked[key] = view[key];
            }
            return picked;
          });
          if (objects.length > 0) {
            const value = objects.length === 1 ? objects[0] : objects;
            out.push(st.compress ? JSON.stringify(value) : JSON.stringify(value, null, 2));
          }
          lastOk = true;
          break;
        }
        case 'set': {
          const flags = {};
          let bindError = null;
          for (const { name, value } of st.flags) {
            const canonical = FLAGS.find((f) => f.toLowerCase() === name.toLowerCase());
            if (!canonical) {
              bindError = `Set-CASMailbox: A parameter cannot be found that matches parameter name '${name}'.`;
              break;
            }
            if (canonical in flags) {
              bindError = `Set-CASMailbox: Cannot bind parameter because parameter '${canonical}' is specified more than once.`;
              break;
            }
            flags[canonical] = value;
          }
          if (bindError) {
            fail(bindError);
            break;
          }
          const wanted = st.identity.toLowerCase();
          const matches = Object.entries(state.mailboxes).filter(
            ([dn, mbx]) =>
              dn.toLowerCase() === wanted || lower(mbx.UserPrincipalName) === wanted || lower(mbx.Identity) === wanted,
          );
          const names = (dn, mbx) => [dn, mbx.UserPrincipalName, mbx.Identity].map(lower).filter(Boolean);
          if (failSet.has(wanted) || matches.some(([dn, mbx]) => names(dn, mbx).some((n) => failSet.has(n)))) {
            fail(`Set-CASMailbox: stand-in: injected failure for '${st.identity}' (listed in failIdentities).`);
            break;
          }
          if (matches.length === 0) {
            fail(
              `Set-CASMailbox: Couldn't find object '${st.identity}'. Please make sure that it was spelled correctly or specify a different object.`,
            );
            break;
          }
          if (matches.length > 1) {
            fail(
              `Set-CASMailbox: The operation couldn't be performed because '${st.identity}' matches multiple entries.`,
            );
            break;
          }
          const [dn, mbx] = matches[0];
          let changed = false;
          for (const [flag, value] of Object.entries(flags)) {
            if ((mbx[flag] ?? FLAG_DEFAULTS[flag]) !== value) changed = true;
            mbx[flag] = value;
          }
          state.calls.push({ identity: st.identity, flags });
          if (!changed) {
            out.push(
              `WARNING: The command completed successfully but no settings of '${mbx.Identity ?? dn}' have been modified.`,
            );
          }
          lastOk = true;
          break;
        }
        default:
          throw new Error(`internal: unknown statement ${st.kind}`);
      }
    }
  } catch (err) {
    if (!(err instanceof Terminating)) throw err;
    process.exitCode = 1;
  }

  writeStateAtomically(statePath, state);
  if (out.length) process.stdout.write(out.join('\n') + '\n');
  if (errors.length) process.stderr.write(errors.join('\n') + '\n');
}

function writeStateAtomically(path, state) {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    const fd = openSync(tmp, 'w', 0o644);
    try {
      writeSync(fd, JSON.stringify(state, null, 2) + '\n');
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

main(process.argv.slice(2));
