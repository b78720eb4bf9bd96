// Table tests for the pure credential parsers (src/auth/credentials.ts): the Basic header (RFC 7617) and
// the logon name inside it, as judged for the domain LAB / lab.test.
import { escapeFilter } from 'ldapts';
import { describe, expect, it } from 'vitest';
import { decodeCp1252, parseBasic, parseLogon, type Logon, type LogonDomain } from '../../src/auth/credentials.js';

const domain: LogonDomain = { netbios: 'LAB', upnSuffixes: ['lab.test'] };
const b64 = (data: string | Uint8Array) => Buffer.from(data).toString('base64');
const basic = (data: string | Uint8Array) => `Basic ${b64(data)}`;

describe('parseBasic', () => {
  const rows: [what: string, header: string | undefined, expected: ReturnType<typeof parseBasic>][] = [
    ['simple', basic('alice:secret'), { user: 'alice', password: 'secret' }],
    ['DOMAIN\\user', basic('LAB\\alice:secret'), { user: 'LAB\\alice', password: 'secret' }],
    [
      'split at the first colon; the password keeps later colons',
      basic('alice:se:cr:et:'),
      { user: 'alice', password: 'se:cr:et:' },
    ],
    ['empty password is parsed as ""', basic('alice:'), { user: 'alice', password: '' }],
    ['empty user', basic(':secret'), { user: '', password: 'secret' }],
    ['UTF-8 password', basic('alice:Pässwörd€😀'), { user: 'alice', password: 'Pässwörd€😀' }],
    ['UTF-8 user', basic('jürgen@lab.test:x'), { user: 'jürgen@lab.test', password: 'x' }],
    ['nothing trimmed', basic(' alice : secret '), { user: ' alice ', password: ' secret ' }],
    ['scheme lower case', `basic ${b64('alice:secret')}`, { user: 'alice', password: 'secret' }],
    ['scheme upper case', `BASIC ${b64('alice:secret')}`, { user: 'alice', password: 'secret' }],
    ['scheme mixed case, extra spaces', `bAsIc   ${b64('alice:secret')}  `, { user: 'alice', password: 'secret' }],
    ['missing header', undefined, null],
    ['empty header', '', null],
    ['Bearer', 'Bearer eyJhbGciOi.x.y', null],
    ['Negotiate', 'Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag', null],
    ['NTLM', 'NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==', null],
    ['a scheme that only starts with Basic', `Basically ${b64('alice:secret')}`, null],
    ['bad base64 characters', 'Basic !!!!', 'malformed'],
    ['base64url alphabet', 'Basic YWxpY2U6c2VjcmV0-_', 'malformed'],
    ['base64 without padding', 'Basic YWxpY2U6cw', 'malformed'],
    ['padding in the middle', 'Basic YQ==YQ==', 'malformed'],
    ['empty token', 'Basic ', 'malformed'],
    ['no colon', basic('alice'), 'malformed'],
    ['two tokens', `Basic ${b64('alice:secret')} ${b64('bob:x')}`, 'malformed'],
  ];
  it.each(rows)('%s', (_what, header, expected) => {
    expect(parseBasic(header)).toEqual(expected);
  });

  it('falls back to windows-1252 when the bytes are not UTF-8, 0x80 being €', () => {
    // "p€ss" and "Müller" as an old client sends them in windows-1252.
    const bytes = Buffer.concat([
      Buffer.from('M'),
      Buffer.from([0xfc]),
      Buffer.from('ller:p'),
      Buffer.from([0x80]),
      Buffer.from('ss'),
    ]);
    expect(parseBasic(basic(bytes))).toEqual({ user: 'Müller', password: 'p€ss' });
  });

  it('decodes every one of the windows-1252 0x80–0x9F specials in a password', () => {
    const specials = Uint8Array.from([0x80, 0x82, 0x85, 0x8a, 0x8c, 0x91, 0x92, 0x93, 0x94, 0x96, 0x97, 0x99, 0x9f]);
    const bytes = Buffer.concat([Buffer.from('alice:'), specials]);
    expect(parseBasic(basic(bytes))).toEqual({ user: 'alice', password: '€‚…ŠŒ‘’“”–—™Ÿ' });
  });
});

describe('decodeCp1252', () => {
  it.each<[number[], string]>([
    [[0x41, 0x42], 'AB'],
    [[0x80], '\u20ac'], // €
    [[0x81], '\u0081'], // undefined in windows-1252: passed through as in WHATWG
    [[0x83, 0x8e, 0x9e], '\u0192\u017d\u017e'],
    [[0x98, 0x9c], '\u02dc\u0153'],
    [[0xa0, 0xe9, 0xff], '\u00a0\u00e9\u00ff'],
    [[], ''],
  ])('%j → %j', (bytes, expected) => {
    expect(decodeCp1252(Uint8Array.from(bytes))).toBe(expected);
  });

  it('agrees with the WHATWG windows-1252 table for all 256 bytes', () => {
    // The WHATWG index for 0x80–0x9F; everything else is latin1.
    const whatwg = [
      0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d,
      0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d,
      0x17e, 0x178,
    ];
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const expected = String.fromCharCode(
      ...[...all].map((b) => (b >= 0x80 && b <= 0x9f ? (whatwg[b - 0x80] as number) : b)),
    );
    expect(decodeCp1252(all)).toBe(expected);
  });
});

describe('parseLogon (domain LAB, UPN suffix lab.test)', () => {
  const accepted: [name: string, expected: Logon][] = [
    ['LAB\\alice', { kind: 'sam', sam: 'alice', display: 'LAB\\alice' }],
    ['lab\\Alice', { kind: 'sam', sam: 'Alice', display: 'LAB\\alice' }],
    ['Lab\\ALICE', { kind: 'sam', sam: 'ALICE', display: 'LAB\\alice' }],
    ['alice', { kind: 'sam', sam: 'alice', display: 'LAB\\alice' }],
    ['alice.anders', { kind: 'sam', sam: 'alice.anders', display: 'LAB\\alice.anders' }],
    ['svc-exgate$', { kind: 'sam', sam: 'svc-exgate$', display: 'LAB\\svc-exgate$' }],
    ['alice@lab.test', { kind: 'upn', upn: 'alice@lab.test', display: 'alice@lab.test' }],
    ['ALICE@LAB.TEST', { kind: 'upn', upn: 'ALICE@LAB.TEST', display: 'ALICE@LAB.TEST' }],
    ['alice.anders@Lab.Test', { kind: 'upn', upn: 'alice.anders@Lab.Test', display: 'alice.anders@Lab.Test' }],
  ];
  it.each(accepted)('accepts %j', (name, expected) => {
    expect(parseLogon(name, domain)).toEqual(expected);
  });

  const refused: [what: string, name: string][] = [
    ['another domain', 'OTHER\\alice'],
    ['a UPN suffix not ours', 'alice@evil.test'],
    ['a sub-domain of our suffix', 'alice@sub.lab.test'],
    ['the DNS domain as NetBIOS name', 'lab.test\\alice'],
    ['an empty domain part', '\\alice'],
    ['empty', ''],
    ['domain and nothing else', 'LAB\\'],
    ['UPN without a local part', '@lab.test'],
    ['overlong', 'a'.repeat(257)],
    ['overlong UPN', `${'a'.repeat(250)}@lab.test`],
    ['LDAP wildcard', '*'],
    ['LDAP wildcard with domain', 'LAB\\*'],
    ['LDAP wildcard in a UPN', '*@lab.test'],
    ['filter injection', 'alice)(objectClass=*'],
    ['filter injection with domain', 'LAB\\alice)(objectClass=*'],
    ['filter injection, OR', '*)(|(sAMAccountName=*'],
    ['filter injection in a UPN', 'alice)(x=*@lab.test'],
    ['parentheses in a UPN', 'a(b)@lab.test'],
    ['NUL', 'alice\u0000'],
    ['NUL with domain', 'LAB\\alice\u0000admin'],
    ['NUL in a UPN', 'alice\u0000@lab.test'],
    ['LDAP hex escape', '\\2a'],
    ['LDAP hex escape with domain', 'LAB\\\\2a'],
    ['a second backslash', 'LAB\\alice\\x'],
    ['control character', 'LAB\\ali\u0007ce'],
    ['forbidden sAMAccountName characters', 'LAB\\a[b]'],
    ['an @ after the domain', 'LAB\\alice@lab.test'],
    ['whitespace in a UPN', 'alice anders@lab.test'],
  ];
  it.each(refused)('refuses %s', (_what, name) => {
    expect(parseLogon(name, domain).kind).toBe('refused');
  });

  it('never yields a sam or upn containing * \\0 \\ or ( ) from the injection names', () => {
    const hostile = [
      '*',
      'alice)(objectClass=*',
      '*)(|(sAMAccountName=*',
      'alice\u0000',
      '\\2a',
      'LAB\\*',
      'LAB\\\\2a',
      '*@lab.test',
    ];
    for (const name of hostile) {
      const logon = parseLogon(name, domain);
      const value = logon.kind === 'sam' ? logon.sam : logon.kind === 'upn' ? logon.upn : '';
      expect(value, name).not.toMatch(/[*()\\\u0000]/);
    }
  });

  // AD permits parentheses in sAMAccountName (only " / \ [ ] : ; | = , + * ? < > are reserved),
  // so a name like `alice)(x` is a lookup-able sam. It is harmless because ldap.ts builds every
  // filter with ldapts' escapeFilter, shown here on the very value parseLogon returns.
  it('keeps parentheses in a sam (legal in AD); the LDAP filter escapes them', () => {
    const logon = parseLogon('alice)(x', domain);
    expect(logon).toMatchObject({ kind: 'sam', sam: 'alice)(x' });
    const sam = logon.kind === 'sam' ? logon.sam : '';
    expect(escapeFilter`(sAMAccountName=${sam})`).toBe('(sAMAccountName=alice\\29\\28x)');
  });

  it('truncates an overlong name for display', () => {
    const logon = parseLogon('b'.repeat(300), domain);
    expect(logon).toMatchObject({ kind: 'refused', display: `${'b'.repeat(256)}…` });
  });

  it('accepts the longest allowed name (256 characters)', () => {
    expect(parseLogon('c'.repeat(256), domain).kind).toBe('sam');
  });

  it('honours the configured NetBIOS name and suffixes, case-insensitively', () => {
    const other: LogonDomain = { netbios: 'contoso', upnSuffixes: ['contoso.com', 'Mail.Contoso.Com'] };
    expect(parseLogon('CONTOSO\\bob', other)).toEqual({ kind: 'sam', sam: 'bob', display: 'CONTOSO\\bob' });
    expect(parseLogon('bob@mail.contoso.com', other)).toMatchObject({ kind: 'upn' });
    expect(parseLogon('LAB\\bob', other).kind).toBe('refused');
    expect(parseLogon('bob@lab.test', other).kind).toBe('refused');
    expect(parseLogon('bob@lab.test', { netbios: 'LAB', upnSuffixes: [] }).kind).toBe('refused');
  });
});
