# exchange-session.ps1: the mailbox-flags runner for a real Exchange organisation.
#
# exgate writes a PowerShell script to this runner's stdin (Get-CASMailbox to read, one
# Set-CASMailbox line per change to apply) and reads what it prints. This script opens a remote
# Exchange Management Shell session, imports only the two cmdlets exgate needs, runs the script
# there and closes the session.
#
#   mailboxFlags:
#     runner: [pwsh, -NoProfile, -NonInteractive, -File, /opt/exgate/scripts/exchange-session.ps1]
#
# Settings (environment, e.g. in /etc/exgate/exgate.env for the systemd units):
#   EXGATE_EXCHANGE_URI   https://exchange.contoso.local/PowerShell/   (the Exchange PowerShell vdir;
#                         http:// only with Kerberos, which encrypts the session itself)
#   EXGATE_EXCHANGE_AUTH  Kerberos (default; from a Windows host or Linux with a keytab) | Basic
#   EXGATE_EXCHANGE_USER / EXGATE_EXCHANGE_PASSWORD_FILE   an account with the "Mail Recipients"
#                         role (Set-CASMailbox), for Basic or explicit Kerberos credentials
# Needs PowerShell 7 (pwsh). From Linux, WinRM needs the PSWSMan module (Install-Module PSWSMan;
# Install-WSMan), which is little maintained: running this runner on a Windows management host
# (e.g. runner: [ssh, mgmt-host, pwsh, -NoProfile, -File, C:\exgate\exchange-session.ps1]) is the
# sturdier choice.
# Not tested against real Exchange in this project's CI (there is no Exchange on Linux); the
# generated PowerShell is tested against scripts/exchange-shell-standin.mjs.
$ErrorActionPreference = 'Stop'
[Console]::InputEncoding = [System.Text.UTF8Encoding]::new($false)    # identities are UTF-8 both ways
[Console]::OutputEncoding = [System.Text.UTF8Encoding]::new($false)
$script = [Console]::In.ReadToEnd()
$uri = $env:EXGATE_EXCHANGE_URI
if (-not $uri) { throw 'EXGATE_EXCHANGE_URI is not set' }
$params = @{ ConfigurationName = 'Microsoft.Exchange'; ConnectionUri = $uri; Authentication = ($env:EXGATE_EXCHANGE_AUTH ?? 'Kerberos') }
if ($env:EXGATE_EXCHANGE_USER) {
  $secret = (Get-Content -Raw -Path $env:EXGATE_EXCHANGE_PASSWORD_FILE).Trim() | ConvertTo-SecureString -AsPlainText -Force
  $params.Credential = [pscredential]::new($env:EXGATE_EXCHANGE_USER, $secret)
}
$session = New-PSSession @params
try {
  Import-PSSession $session -CommandName Get-CASMailbox, Set-CASMailbox -DisableNameChecking -AllowClobber | Out-Null
  Invoke-Expression $script
} finally {
  Remove-PSSession $session
}
