/**
 * The HTML, CSS, script and logo of the stand-in's forms sign-in (./owa-forms.ts): plain pages shaped
 * like Exchange 2016/2019's logon.aspx, OWA inbox, EAC and sign-out page. Everything is served from
 * /owa/auth/ on the same host; no page loads anything from elsewhere. Every inserted value is escaped.
 */

/** Where Exchange keeps the sign-in page's resources: /owa/auth/<build>/… (15.2 = Exchange 2019). */
const BASE = '/owa/auth/15.2.1544';
const CSS = `${BASE}/themes/resources/logon.css`;
const SCRIPT = `${BASE}/scripts/premium/flogon.js`;
const LOGO = `${BASE}/themes/resources/owa-logo.svg`;

const STYLE = `body{margin:0;font-family:"Segoe UI",Tahoma,Arial,sans-serif;background:#fff;color:#333}
header{background:#0072c6;color:#fff;padding:12px 24px;display:flex;align-items:center;gap:12px}
header h1{font-size:20px;font-weight:normal;margin:0}
main{padding:32px 24px;max-width:640px}
.signin{margin:64px auto;max-width:360px;padding:0 24px}
.signin h1{font-weight:lighter;font-size:32px;color:#0072c6}
label{display:block;margin:14px 0 4px;font-size:14px}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:6px;font-size:14px;border:1px solid #ccc}
button{margin-top:20px;padding:8px 24px;font-size:15px;background:#0072c6;color:#fff;border:0;cursor:pointer}
.error{color:#c00000;margin-top:16px;font-size:14px}
ul.messages{list-style:none;padding:0}ul.messages li{border-bottom:1px solid #e1e1e1;padding:10px 0}
.from{font-weight:600}.when{color:#767676;font-size:13px;float:right}
a{color:#0072c6}
`;

// Exchange's logon.aspx without replaceCurrent=1 is only a script that loads itself again with it
// (research owa-pool-ha.md A1). The form's submit sets PBack=0 as flogon.js does.
const CLIENT = `(function () {
  var bounce = document.getElementById('bounce');
  if (bounce) { window.location.replace(bounce.getAttribute('href')); return; }
  var form = document.getElementById('logonForm');
  if (!form) return;
  form.addEventListener('submit', function () { document.cookie = 'PBack=0; path=/'; });
  document.getElementById('username').focus();
})();
`;

const LOGO_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">
<rect width="32" height="32" rx="4" fill="#0072c6"/><rect x="5" y="9" width="22" height="15" fill="#fff"/>
<path d="M5 9l11 8 11-8" fill="none" stroke="#0072c6" stroke-width="2"/></svg>
`;

/** A static resource: its content type and bytes. */
export interface Resource {
  readonly type: string;
  readonly body: Buffer;
}

/** The sign-in page's static resources by lower-cased path, as IIS serves them (content types of IIS 10). */
export const RESOURCES: ReadonlyMap<string, Resource> = new Map([
  [CSS, { type: 'text/css', body: Buffer.from(STYLE) }],
  [SCRIPT, { type: 'application/javascript', body: Buffer.from(CLIENT) }],
  [LOGO, { type: 'image/svg+xml', body: Buffer.from(LOGO_SVG) }],
]);

/** The three fake messages every inbox shows. */
const MESSAGES = [
  { from: 'Helpdesk', subject: 'Your mailbox is almost full', when: 'Mon 09:12' },
  { from: 'Carol Cole', subject: "Minutes of Tuesday's meeting", when: 'Tue 16:40' },
  { from: 'Facilities', subject: 'Fire drill on Thursday at 10:00', when: 'Wed 08:05' },
];

/** The logon page's texts for a `reason` (Exchange's LogonReason; only 2 has a message here). */
const REASON_TEXT: Readonly<Record<string, string>> = {
  '2': "The user name or password you entered isn't correct. Try entering it again.",
  '3': 'Your session timed out. Please sign in again.',
};

export function escapeHtml(text: string): string {
  return text.replace(/[<>&"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function page(title: string, body: string): string {
  return (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">' +
    `<title>${escapeHtml(title)}</title><link rel="stylesheet" href="${CSS}">` +
    `<link rel="icon" href="${LOGO}"><script src="${SCRIPT}" defer></script></head>\n<body>${body}</body></html>\n`
  );
}

/** bouncePage is logon.aspx without replaceCurrent=1: a script that goes to `target` (a link without scripts). */
export function bouncePage(target: string): string {
  return page('Outlook', `<main><a id="bounce" href="${escapeHtml(target)}">Continue to sign in</a></main>`);
}

/** logonPage is the sign-in form posting to /owa/auth.owa, titled for OWA or for the EAC. */
export function logonPage(opts: { destination: string; reason: string; ecp: boolean }): string {
  const title = opts.ecp ? 'Exchange admin center' : 'Outlook';
  const message = REASON_TEXT[opts.reason];
  const error = message === undefined ? '' : `<div class="error" id="signInErrorDiv" role="alert">${message}</div>`;
  return page(
    title,
    `<div class="signin"><img src="${LOGO}" alt="" width="48" height="48">
<h1>${title}</h1>
<form id="logonForm" method="POST" action="/owa/auth.owa" autocomplete="off">
<input type="hidden" name="destination" value="${escapeHtml(opts.destination)}">
<input type="hidden" name="flags" value="4"><input type="hidden" name="forcedownlevel" value="0">
<label for="username">Domain\\user name:</label><input id="username" name="username" type="text">
<label for="password">Password:</label><input id="password" name="password" type="password">
<input type="hidden" name="passwordText" value=""><input type="hidden" name="isUtf8" value="1">
<button type="submit" id="signIn">sign in</button>
</form>${error}</div>`,
  );
}

/** inboxPage is OWA's landing page for `user`: three fake messages and a sign-out link. */
export function inboxPage(user: string): string {
  const items = MESSAGES.map(
    (m) =>
      `<li><span class="when">${m.when}</span>` +
      `<div class="from">${escapeHtml(m.from)}</div><div>${escapeHtml(m.subject)}</div></li>`,
  ).join('\n');
  return page(
    'Mail - Outlook',
    `<header><img src="${LOGO}" alt="" width="32" height="32"><h1>Outlook</h1></header>
<main><h2 id="title">Inbox — ${escapeHtml(user)}</h2><ul class="messages">\n${items}\n</ul>
<p><a id="signOut" href="/owa/logoff.owa">Sign out</a></p></main>`,
  );
}

/** ecpPage is the Exchange admin center's landing page for `user`. */
export function ecpPage(user: string): string {
  const areas = ['recipients', 'permissions', 'compliance management', 'mail flow', 'servers']
    .map((a) => `<li>${a}</li>`)
    .join('');
  return page(
    'Exchange admin center',
    `<header><img src="${LOGO}" alt="" width="32" height="32">
<h1>Exchange admin center</h1></header><main><h2 id="title">Exchange admin center — ${escapeHtml(user)}</h2>
<ul class="messages">${areas}</ul><p><a id="signOut" href="/ecp/logoff.aspx">Sign out</a></p></main>`,
  );
}

/** logoffPage is /owa/auth/logoff.aspx: signed out, with a way back to the sign-in. */
export function logoffPage(): string {
  return page(
    'Outlook',
    `<div class="signin"><img src="${LOGO}" alt="" width="48" height="48">
<h1 id="title">You have signed out of Outlook</h1>
<p>For better security, close all browser windows.</p><p><a href="/owa/">Sign in again</a></p></div>`,
  );
}

/** The body of Exchange's 440 answer (research owa-pool-ha.md A4). */
export const LOGIN_TIMEOUT_BODY = '<HTML><BODY>440 Login Timeout</BODY></HTML>';
