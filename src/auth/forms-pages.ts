/**
 * The gateway's own pages for a browser: the 403 of a sign-in the policy refuses, and the 440 of a
 * request without a session (Exchange's own body, research/owa-pool-ha.md §A4). Plain, accessible
 * HTML with no external resources and no script; served with a CSP that allows nothing else.
 */

/** The Content-Security-Policy of the gateway's pages: inline style only, nothing fetched, no framing. */
export const PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'";

const NAMES = { owa: 'Outlook on the web', ecp: 'The Exchange admin center' } as const;

/** The 403 page: the account signed in correctly, but the policy does not let it in from outside. */
export function forbiddenPage(service: 'owa' | 'ecp'): string {
  const name = NAMES[service];
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${name} is not available from outside</title>
<style>
body{font-family:system-ui,"Segoe UI",sans-serif;margin:0;padding:2rem;color:#1b1b1b;background:#fff;line-height:1.5}
main{max-width:36rem;margin:4rem auto}
h1{font-size:1.5rem;font-weight:600}
a{color:#005a9e}
</style>
</head>
<body>
<main>
<h1>${name} is not available to this account from outside the company network</h1>
<p>Your user name and password are correct, but this account is not allowed to use ${name} from the
internet. Inside the company network it works as usual.</p>
<p>If you need access from outside, ask your IT department to add your account to the group that allows it.</p>
<p><a href="/owa/auth/logon.aspx?replaceCurrent=1&amp;reason=0">Sign in with a different account</a></p>
</main>
</body>
</html>
`;
}

/** Exchange's body for 440 Login Timeout (§A4), which OWA's scripts recognize. */
export const LOGIN_TIMEOUT_PAGE = '<HTML><BODY>440 Login Timeout</BODY></HTML>';
