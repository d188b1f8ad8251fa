#Requires -Version 5.1
<#
netreset-agent.ps1: the netreset agent on a restored lab station.

The "netreset-agent" scheduled task (created by SetupComplete.cmd) runs it as SYSTEM at
every start. It reads station.json, reports each KMS family's latest activation result
to the netreset server, then long-polls the server for reboot and shutdown commands
until the station goes down. It never stops on its own: failures are logged and retried.

Everything comes from station.json; this file has no placeholders. Files, all in
%ProgramData%\netreset:
  station.json   server, station (MAC), token, image, families (written by netreset)
  agent.log      this agent's log, rotated to agent.log.1 past 1 MB
  last-command   id of the last command run, so a command sent twice runs once
#>

$ErrorActionPreference = 'Stop'
# Windows PowerShell draws a progress bar for every web request, which slows it badly.
$ProgressPreference = 'SilentlyContinue'

$Root = Join-Path $env:ProgramData 'netreset'
$ConfigPath = Join-Path $Root 'station.json'
$LogPath = Join-Path $Root 'agent.log'
$LastCommandPath = Join-Path $Root 'last-command'
$LogMaxBytes = 1MB

# Activation may still be running when the agent starts: look again every 30 s for
# up to 10 minutes before reporting "none".
$EventWaitSeconds = 600
$EventRetrySeconds = 30
$ReportAttempts = 10
$PollTimeoutSeconds = 70
$ErrorPauseSeconds = 30

# Software Licensing application ids (SoftwareLicensingProduct.ApplicationID): every
# SKU belongs to one application, and the application says which KMS count it joins.
$FamilyByAppId = @{
    '55c92734-d682-4d71-983e-d6ec3f16059f' = 'windows'
    '0ff1ce15-a989-479d-af46-f275c6370663' = 'office'   # Office 2013 and later
}
$KnownFamilies = @('windows', 'office')

$GuidPattern = '^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$'
$SkuFamilyCache = @{}
$WarnedRecords = @{}


function Write-Log {
    param([string]$Message)
    try {
        $log = Get-Item -LiteralPath $LogPath -ErrorAction SilentlyContinue
        if ($log -and $log.Length -gt $LogMaxBytes) {
            Move-Item -LiteralPath $LogPath -Destination "$LogPath.1" -Force
        }
        $line = '{0} {1}' -f (Get-Date).ToString('yyyy-MM-ddTHH:mm:ss.fffzzz'), $Message
        Add-Content -LiteralPath $LogPath -Value $line -Encoding UTF8
    } catch {
        # Logging must never stop the agent; a locked or full disk costs a line.
    }
}

function Format-Short {
    param([string]$Text)
    $Text = ($Text -replace '\s+', ' ').Trim()
    if ($Text.Length -gt 200) { $Text = $Text.Substring(0, 200) + '...' }
    return $Text
}


# --- station.json -----------------------------------------------------------------

function Read-StationConfig {
    $json = Get-Content -LiteralPath $ConfigPath -Raw -Encoding UTF8 | ConvertFrom-Json
    foreach ($field in 'server', 'station', 'token') {
        if (-not $json.$field) { throw "station.json has no '$field'" }
    }
    return [pscustomobject]@{
        Server   = ([string]$json.server).TrimEnd('/')
        Station  = [string]$json.station
        Token    = [string]$json.token
        Image    = [string]$json.image
        Families = @($json.families | Where-Object { $_ } | ForEach-Object { ([string]$_).ToLowerInvariant() })
    }
}

function Wait-StationConfig {
    while ($true) {
        try {
            return Read-StationConfig
        } catch {
            Write-Log "cannot read ${ConfigPath}: $($_.Exception.Message); retrying in 60 s"
            Start-Sleep -Seconds 60
        }
    }
}


# --- activation events --------------------------------------------------------------
#
# Application log, provider Microsoft-Windows-Security-SPP. Each event has a single
# insertion string (%1) holding a comma-separated list; the positions below are from
# Microsoft's Volume Activation Technical Reference, "Windows Event Log", table 11:
#
#   12288, request sent:     [0] HRESULT  [1] status flags  [2] KMS host:port  [3] CMID
#                            [4] client time  [5] VM info  [6] license status
#                            [7] minutes to expiration  [8] activation (SKU) id
#                            [9] count the client needs
#   12289, reply processed:  [0] HRESULT  [1] status flags  [2] activated flag 1/0
#                            [3] unused  [4] KMS current count  [5] activation interval
#                            [6] renewal interval  [7] client time
#
# 12289 names neither the CMID nor the product, so each reply is paired with the 12288
# logged just before it, and that request's SKU id tells Windows from Office. A 12288
# with no 12289 after it means the host did not answer. Read the activated flag, not
# only the HRESULT: a count too low can come back as 0x0 with the flag at 0.

function Get-EventFields {
    param($Record)
    # Joined first in case a Windows build splits the list into several properties.
    $text = @($Record.Properties | ForEach-Object { [string]$_.Value }) -join ','
    return , @($text.Split(',') | ForEach-Object { $_.Trim() })
}

function Write-RecordWarning {
    param($Record, [string]$Why)
    # The event scan repeats every 30 s; say it once per event.
    if ($WarnedRecords.ContainsKey($Record.RecordId)) { return }
    $WarnedRecords[$Record.RecordId] = $true
    $text = @($Record.Properties | ForEach-Object { [string]$_.Value }) -join ','
    Write-Log "event $($Record.Id) #$($Record.RecordId) ignored, ${Why}: '$(Format-Short $text)'"
}

function ConvertFrom-KmsRequest {
    param($Record)
    $f = Get-EventFields $Record
    if ($f.Count -lt 9 -or $f[3] -notmatch $GuidPattern -or $f[8] -notmatch $GuidPattern) {
        Write-RecordWarning $Record 'unexpected data'
        return $null
    }
    return [pscustomobject]@{ Cmid = $f[3].ToLowerInvariant(); SkuId = $f[8].ToLowerInvariant() }
}

function ConvertFrom-KmsReply {
    param($Record)
    $f = Get-EventFields $Record
    if ($f.Count -lt 5 -or $f[0] -notmatch '^0x[0-9a-fA-F]{1,8}$' -or $f[2] -notmatch '^[01]$' -or $f[4] -notmatch '^\d+$') {
        Write-RecordWarning $Record 'unexpected data'
        return $null
    }
    return [pscustomobject]@{
        Result    = '0x{0:X8}' -f [Convert]::ToUInt32($f[0].Substring(2), 16)
        Activated = ($f[2] -eq '1')
        Count     = [int]$f[4]
    }
}

function Get-SkuFamily {
    param([string]$SkuId)
    if (-not $SkuFamilyCache.ContainsKey($SkuId)) {
        # SkuId has matched $GuidPattern, so it is safe inside the WQL filter.
        $product = Get-CimInstance -ClassName SoftwareLicensingProduct -Filter "ID='$SkuId'" -Property ApplicationID |
            Select-Object -First 1
        $family = $null
        if ($product) { $family = $FamilyByAppId[([string]$product.ApplicationID).ToLowerInvariant()] }
        $SkuFamilyCache[$SkuId] = $family
    }
    return $SkuFamilyCache[$SkuId]
}

function Get-DeploymentTime {
    # Events older than this deployment (left in the image) say nothing about this
    # station. Setup sets InstallDate when the generalized image is specialized; the
    # hour of slack absorbs a clock corrected soon after.
    try {
        return (Get-CimInstance -ClassName Win32_OperatingSystem).InstallDate.AddHours(-1)
    } catch {
        Write-Log "cannot read the install date, reading all events: $($_.Exception.Message)"
        return [datetime]'2000-01-01'
    }
}

function Get-KmsHistory {
    param([datetime]$Since)
    $filter = @{
        LogName      = 'Application'
        ProviderName = 'Microsoft-Windows-Security-SPP'
        Id           = 12288, 12289
        StartTime    = $Since
    }
    try {
        $records = Get-WinEvent -FilterHashtable $filter -ErrorAction Stop
    } catch {
        if ($_.FullyQualifiedErrorId -like 'NoMatchingEventsFound*') { return @() }
        throw
    }
    return @($records | Sort-Object RecordId)
}

# Latest state per family: family -> { Cmid, Reply }. Reply is $null while the latest
# request of that family has no answer.
function Get-KmsStates {
    param([datetime]$Since)
    $states = @{}
    $openFamily = $null   # family of the latest request still waiting for its reply
    foreach ($record in (Get-KmsHistory -Since $Since)) {
        if ($record.Id -eq 12288) {
            $openFamily = $null
            $request = ConvertFrom-KmsRequest $record
            if (-not $request) { continue }
            $family = Get-SkuFamily $request.SkuId
            if (-not $family) {
                Write-RecordWarning $record "SKU $($request.SkuId) is neither Windows nor Office"
                continue
            }
            $states[$family] = [pscustomobject]@{ Cmid = $request.Cmid; Reply = $null }
            $openFamily = $family
        } elseif ($openFamily) {
            $reply = ConvertFrom-KmsReply $record
            if ($reply) { $states[$openFamily].Reply = $reply }
            $openFamily = $null
        } else {
            Write-RecordWarning $record 'no Windows or Office request before it'
        }
    }
    return $states
}

function Get-WindowsCmid {
    # Used only when no request event names the CMID yet.
    try {
        return [string](Get-CimInstance -ClassName SoftwareLicensingService).ClientMachineID
    } catch {
        return ''
    }
}

function Test-UserLoggedIn {
    # Win32_ComputerSystem.UserName names the console user only; an explorer.exe process
    # also catches Remote Desktop sessions. Unlike "query user", neither depends on the
    # display language.
    try {
        if ((Get-CimInstance -ClassName Win32_ComputerSystem).UserName) { return $true }
        return [bool](Get-CimInstance -ClassName Win32_Process -Filter "Name='explorer.exe'")
    } catch {
        Write-Log "cannot tell whether a user is logged in: $($_.Exception.Message)"
        return $false
    }
}


# --- server API ---------------------------------------------------------------------

# One request to the netreset server. Returns @{ Status; Content } for every HTTP
# answer, 4xx and 5xx included; throws only when no answer came (network, timeout).
function Invoke-Api {
    param($Config, [string]$Method, [string]$Uri, [string]$Body, [int]$TimeoutSec)
    $request = @{
        Uri             = $Uri
        Method          = $Method
        TimeoutSec      = $TimeoutSec
        UseBasicParsing = $true   # the IE engine is not set up for SYSTEM
        Headers         = @{ Authorization = "Bearer $($Config.Token)" }
    }
    if ($Body) {
        $request.ContentType = 'application/json'
        $request.Body = [Text.Encoding]::UTF8.GetBytes($Body)
    }
    try {
        $response = Invoke-WebRequest @request
        return @{ Status = [int]$response.StatusCode; Content = [string]$response.Content }
    } catch [System.Net.WebException] {
        $http = $_.Exception.Response
        if ($null -eq $http) { throw }
        $content = ''
        try {
            $reader = New-Object System.IO.StreamReader($http.GetResponseStream())
            $content = $reader.ReadToEnd()
            $reader.Close()
        } catch {
            # The status alone is enough to decide.
        }
        return @{ Status = [int]$http.StatusCode; Content = $content }
    }
}

function Send-Report {
    param($Config, $Report)
    $body = $Report | ConvertTo-Json -Compress
    $uri = "$($Config.Server)/api/v1/agent/report"
    $what = "$($Report.family): result $($Report.result) activated=$($Report.activated) count=$($Report.count) cmid=$($Report.cmid)"
    $delay = 5
    for ($attempt = 1; $attempt -le $ReportAttempts; $attempt++) {
        try {
            $response = Invoke-Api -Config $Config -Method 'POST' -Uri $uri -Body $body -TimeoutSec 30
            if ($response.Status -ge 200 -and $response.Status -lt 300) {
                Write-Log "reported $what"
                return
            }
            if ($response.Status -ge 400 -and $response.Status -lt 500) {
                # The server judged the report itself; sending it again changes nothing.
                Write-Log "report refused, HTTP $($response.Status): $(Format-Short $response.Content); $what"
                return
            }
            $failure = "HTTP $($response.Status): $(Format-Short $response.Content)"
        } catch {
            $failure = $_.Exception.Message
        }
        if ($attempt -lt $ReportAttempts) {
            Write-Log "report attempt $attempt failed ($failure); retrying in $delay s"
            Start-Sleep -Seconds $delay
            $delay = [Math]::Min($delay * 2, 120)
        }
    }
    Write-Log "report given up after $ReportAttempts attempts ($failure); $what"
}

function New-Report {
    param($Config, [string]$Family, $State, [bool]$UserLoggedIn)
    $report = [ordered]@{
        station        = $Config.Station
        family         = $Family
        cmid           = ''
        result         = 'none'
        activated      = $false
        count          = 0
        logged_in_user = $UserLoggedIn
    }
    if ($State) {
        $report.cmid = $State.Cmid
        if ($State.Reply) {
            $report.result = $State.Reply.Result
            $report.activated = $State.Reply.Activated
            $report.count = $State.Reply.Count
        }
    } elseif ($Family -eq 'windows') {
        $report.cmid = Get-WindowsCmid
    }
    return $report
}

# Reports each configured family once: as soon as its latest request has a reply, or
# with result "none" when the wait runs out.
function Send-ActivationReports {
    param($Config)
    $pending = @($Config.Families | Where-Object { $KnownFamilies -contains $_ })
    foreach ($unknown in @($Config.Families | Where-Object { $KnownFamilies -notcontains $_ })) {
        Write-Log "family '$unknown' in station.json is not windows or office, ignored"
    }
    if ($pending.Count -eq 0) {
        Write-Log 'no families to report'
        return
    }

    $since = Get-DeploymentTime
    $deadline = (Get-Date).AddSeconds($EventWaitSeconds)
    Write-Log "looking for activation events since $since for $($pending -join ', ')"
    while ($pending.Count -gt 0) {
        $states = @{}
        try {
            $states = Get-KmsStates -Since $since
        } catch {
            Write-Log "reading activation events failed: $($_.Exception.Message)"
        }
        $timedOut = (Get-Date) -ge $deadline
        foreach ($family in @($pending)) {
            $state = $states[$family]
            $answered = $state -and $state.Reply
            if (-not $answered -and -not $timedOut) { continue }
            if (-not $answered) {
                if ($state) {
                    Write-Log "${family}: request sent (cmid $($state.Cmid)) but no reply from the KMS host"
                } else {
                    Write-Log "${family}: no activation request in the event log"
                }
            }
            Send-Report $Config (New-Report $Config $family $state (Test-UserLoggedIn))
            $pending = @($pending | Where-Object { $_ -ne $family })
        }
        if ($pending.Count -gt 0) { Start-Sleep -Seconds $EventRetrySeconds }
    }
}


# --- commands -----------------------------------------------------------------------

function Invoke-StationCommand {
    param([string]$Content)
    $command = $Content | ConvertFrom-Json
    $name = [string]$command.command
    $id = [string]$command.id

    # A command the server sends again (say, after the reboot it asked for) runs once.
    $lastId = ''
    if (Test-Path -LiteralPath $LastCommandPath) {
        $lastId = ([string](Get-Content -LiteralPath $LastCommandPath -Raw)).Trim()
    }
    if ($id -and $id -eq $lastId) {
        Write-Log "command $name ($id) already run, ignored"
        return
    }

    switch ($name) {
        'reboot'   { $arguments = @('/r', '/t', '0', '/f') }
        'shutdown' { $arguments = @('/s', '/t', '0', '/f') }
        default {
            Write-Log "unknown command '$name' ($id), ignored"
            return
        }
    }
    # Remember the id first: a second later the station may be gone.
    if ($id) { Set-Content -LiteralPath $LastCommandPath -Value $id -Encoding ASCII }
    Write-Log "command $name ($id): shutdown.exe $($arguments -join ' ')"
    & shutdown.exe @arguments
    Write-Log "shutdown.exe exit $LASTEXITCODE"
}

# Long-polls for commands forever. The server answers 204 when there is nothing, or
# 200 with {"command": ..., "id": ...}; every failure waits 30 s and polls again.
function Watch-Commands {
    param($Config)
    $uri = "$($Config.Server)/api/v1/agent/commands?station=$([uri]::EscapeDataString($Config.Station))"
    Write-Log "polling $($Config.Server) for commands"
    while ($true) {
        try {
            $started = Get-Date
            $response = Invoke-Api -Config $Config -Method 'GET' -Uri $uri -TimeoutSec $PollTimeoutSeconds
            if ($response.Status -eq 204) {
                # A server that answers at once must not turn the poll into a busy loop.
                if (((Get-Date) - $started).TotalSeconds -lt 1) { Start-Sleep -Seconds 5 }
                continue
            }
            if ($response.Status -eq 200) {
                Invoke-StationCommand $response.Content
                continue
            }
            Write-Log "command poll: HTTP $($response.Status): $(Format-Short $response.Content); retrying in $ErrorPauseSeconds s"
        } catch {
            # A poll the server held past our timeout is not an error: ask again.
            $webError = $_.Exception -as [System.Net.WebException]
            if ($webError -and $webError.Status -eq [System.Net.WebExceptionStatus]::Timeout) { continue }
            Write-Log "command poll failed: $($_.Exception.Message); retrying in $ErrorPauseSeconds s"
        }
        Start-Sleep -Seconds $ErrorPauseSeconds
    }
}


# --- main ---------------------------------------------------------------------------

function Start-Agent {
    New-Item -ItemType Directory -Path $Root -Force | Out-Null
    # Windows PowerShell 5.1 may offer only TLS 1.0 to an https server, and waits for
    # "100 Continue" before every POST body.
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    [Net.ServicePointManager]::Expect100Continue = $false

    Write-Log "---- agent start, pid $PID"
    $config = Wait-StationConfig
    Write-Log "station $($config.Station), image '$($config.Image)', server $($config.Server), families $($config.Families -join ', ')"
    try {
        Send-ActivationReports $config
    } catch {
        Write-Log "activation reports failed: $($_.Exception.Message)"
    }
    Watch-Commands $config
}

# Nothing ends the agent: an unexpected error starts it over after a pause.
while ($true) {
    try {
        Start-Agent
    } catch {
        Write-Log "agent error: $($_.Exception.Message); starting over in 60 s"
    }
    Start-Sleep -Seconds 60
}
