#Requires -Version 5.1
<#
netreset-agent.ps1: the netreset agent on a restored lab station (agent protocol 2).

The "netreset-agent" scheduled task (created by SetupComplete.cmd) runs it as SYSTEM at
every start. The agent is thin: it collects raw facts and posts them; the netreset
daemon parses and judges them. At every start it
  1. reads station.json;
  2. posts a report: the licences (SoftwareLicensingProduct rows with a product key),
     the raw XML of this deployment's activation events (Application log, provider
     Microsoft-Windows-Security-SPP, 12288 request sent and 12289 reply processed),
     whether an interactive user is logged on, and the families it gave up activating;
  3. activates, one family at a time, the volume KMS client products of the families
     station.json lists: points each at the KMS host, calls Activate() and retries
     with backoff until a 12289 is logged or 30 minutes pass (then the family is
     reported in gave_up). A MAK or retail product is never activated (a MAK would
     spend one of its activations); it is only reported;
  4. long-polls the server for reboot and shutdown commands until the station goes
     down, and posts a new report whenever new 12288/12289 events appear (looked for
     every 10 minutes, so weekly KMS renewals reach the daemon's ledger).
It never stops on its own: failures are logged and retried.

Activation lives here, not in SetupComplete.cmd: slmgr.vbs and ospp.vbs need VBScript,
an optional feature from Windows 11 24H2 on; the WMI methods they call are always
there. It runs at every start, not only after a reset: Windows itself asks at every
start while unactivated, one request from an activated station is a renewal that costs
nothing on the host's count, and a station restored from an image that carried an
activation still tells the daemon its client machine ID.

Everything comes from station.json; this file has no placeholders. Files, all in
%ProgramData%\netreset (SYSTEM and Administrators only, see SetupComplete.cmd):
  station.json   server, station (MAC), token, image, families, and kms_host and
                 kms_port (written by netreset; without kms_host the agent sets no
                 KMS host and Windows finds one through DNS, SRV _vlmcs._tcp)
  agent.log      this agent's log, rotated to agent.log.1 past 1 MB
  last-command   id of the last command run, so a command sent twice runs once
  last-event     EventRecordID of the newest activation event posted, so a restart
                 does not post the same events again
  setup.log      SetupComplete.cmd's log
#>

$ErrorActionPreference = 'Stop'
# Windows PowerShell draws a progress bar for every web request, which slows it badly.
$ProgressPreference = 'SilentlyContinue'

$Root = Join-Path $env:ProgramData 'netreset'
$ConfigPath = Join-Path $Root 'station.json'
$LogPath = Join-Path $Root 'agent.log'
$LastCommandPath = Join-Path $Root 'last-command'
$LastEventPath = Join-Path $Root 'last-event'
$LogMaxBytes = 1MB
$ShutdownExe = Join-Path $env:SystemRoot 'System32\shutdown.exe'

$SppProvider = 'Microsoft-Windows-Security-SPP'
# The newest 200 activation events go into a report: with Windows retrying every
# 2 hours while unactivated, that is more than a week of them, well under the 1 MiB a
# report may have.
$MaxReportEvents = 200
$MaxReportBytes = 1MB
$EventCheckSeconds = 600
$ReportAttempts = 10
$ReportFirstDelaySeconds = 5
$ReportMaxDelaySeconds = 120
$ActivationLimitSeconds = 1800
$ActivationFirstDelaySeconds = 30
$ActivationMaxDelaySeconds = 300
# sppsvc has written both events when Activate() returns, but the event log service
# may show them a moment later.
$EventSettleSeconds = 5
$PollTimeoutSeconds = 70
$ErrorPauseSeconds = 30
$CommandResultTimeoutSeconds = 10

# Software Licensing application ids (SoftwareLicensingProduct.ApplicationID): every
# SKU belongs to one application, and the application says which KMS count it joins.
# Office 2013 and later on Windows 8 and later is licensed by Windows' own service
# (SoftwareLicensingProduct); older Office (OfficeSoftwareProtectionProduct) is not
# handled.
$FamilyByAppId = @{
    '55c92734-d682-4d71-983e-d6ec3f16059f' = 'windows'
    '0ff1ce15-a989-479d-af46-f275c6370663' = 'office'
}
$KnownFamilies = @('windows', 'office')


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

# kms_host and kms_port are optional: without kms_host the agent sets nothing, and
# Windows and Office find the KMS host themselves through DNS (SRV _vlmcs._tcp);
# without kms_port only the host is set (the port stays 1688 or what the image has).
function Read-StationConfig {
    $json = Get-Content -LiteralPath $ConfigPath -Raw -Encoding UTF8 | ConvertFrom-Json
    foreach ($field in 'server', 'station', 'token') {
        if (-not $json.$field) { throw "station.json has no '$field'" }
    }
    $kmsHost = ''
    if ($json.kms_host) { $kmsHost = ([string]$json.kms_host).Trim() }
    $kmsPort = 0
    if ($null -ne $json.kms_port) {
        $port = 0
        if ([int]::TryParse([string]$json.kms_port, [ref]$port) -and $port -ge 1 -and $port -le 65535) {
            $kmsPort = $port
        } else {
            # A bad port must not stop the agent: the host alone still works.
            Write-Log "station.json kms_port '$($json.kms_port)' is not a port, ignored"
        }
    }
    return [pscustomobject]@{
        Server   = ([string]$json.server).TrimEnd('/')
        Station  = [string]$json.station
        Token    = [string]$json.token
        Image    = [string]$json.image
        Families = @($json.families | Where-Object { $_ } | ForEach-Object { ([string]$_).ToLowerInvariant() } | Select-Object -Unique)
        KmsHost  = $kmsHost
        KmsPort  = $kmsPort
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


# --- facts: licences, events, session ------------------------------------------------

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

# Every product with a key installed (Windows, Office and any other), as CIM instances:
# the activation needs the instances, the report their fields. sppsvc starts on
# demand, so the first query after boot can take several seconds.
function Get-LicensedProducts {
    Get-CimInstance -ClassName SoftwareLicensingProduct -Filter 'PartialProductKey IS NOT NULL'
}

function Get-ProductFamily {
    param($Product)
    return $FamilyByAppId[([string]$Product.ApplicationID).ToLowerInvariant()]
}

function Test-KmsClient {
    param($Product)
    # A GVLK product says "..., VOLUME_KMSCLIENT channel"; MAK says VOLUME_MAK, and
    # retail and OEM keys say RETAIL or OEM_...
    return ([string]$Product.Description) -like '*VOLUME_KMSCLIENT*'
}

function ConvertTo-LicenseRow {
    param($Product)
    # ProductKeyChannel is missing on old builds: [string] of nothing is "".
    return [ordered]@{
        id             = [string]$Product.ID
        application_id = [string]$Product.ApplicationID
        name           = [string]$Product.Name
        description    = [string]$Product.Description
        channel        = [string]$Product.ProductKeyChannel
        license_status = [int]$Product.LicenseStatus
    }
}

# The activation events of this deployment, the newest $MaxReportEvents, oldest first.
# Get-WinEvent returns the newest first, and throws when nothing matches.
function Get-ActivationEvents {
    param([datetime]$Since)
    $filter = @{
        LogName      = 'Application'
        ProviderName = $SppProvider
        Id           = 12288, 12289
        StartTime    = $Since
    }
    try {
        $records = @(Get-WinEvent -FilterHashtable $filter -MaxEvents $MaxReportEvents -ErrorAction Stop)
    } catch {
        if ($_.FullyQualifiedErrorId -like 'NoMatchingEventsFound*') { return }
        throw
    }
    $records | Sort-Object -Property RecordId
}

function Test-UserLoggedIn {
    # Win32_ComputerSystem.UserName names the console user only (a locked session
    # included); an explorer.exe process also catches Remote Desktop sessions. Unlike
    # "query user", neither depends on the display language. When neither can be read
    # the answer is yes: a station is never restarted on doubt.
    try {
        if ((Get-CimInstance -ClassName Win32_ComputerSystem).UserName) { return $true }
        $explorer = @(Get-CimInstance -ClassName Win32_Process -Filter "Name='explorer.exe'")
        return ($explorer.Count -gt 0)
    } catch {
        Write-Log "cannot tell whether a user is logged on, assuming one is: $($_.Exception.Message)"
        return $true
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
        # Windows PowerShell throws for every status >= 400; the answer is inside.
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

# Posts one report body, retrying network errors and 5xx with backoff. Returns 'sent',
# 'refused' (a 4xx: the server judged the body itself, so it is never sent again) or
# 'failed' (no attempt got through).
function Send-Report {
    param($Config, [string]$Body, [string]$What)
    # ?station= lets the server check the token before it reads the body.
    $uri = '{0}/api/v1/agent/report?station={1}' -f $Config.Server, [uri]::EscapeDataString($Config.Station)
    $delay = $ReportFirstDelaySeconds
    $failure = ''
    for ($attempt = 1; $attempt -le $ReportAttempts; $attempt++) {
        try {
            $response = Invoke-Api -Config $Config -Method 'POST' -Uri $uri -Body $Body -TimeoutSec 30
            if ($response.Status -ge 200 -and $response.Status -lt 300) {
                Write-Log "reported $What"
                return 'sent'
            }
            if ($response.Status -ge 400 -and $response.Status -lt 500) {
                Write-Log "report refused, HTTP $($response.Status): $(Format-Short $response.Content); $What"
                return 'refused'
            }
            $failure = "HTTP $($response.Status): $(Format-Short $response.Content)"
        } catch {
            $failure = $_.Exception.Message
        }
        if ($attempt -lt $ReportAttempts) {
            Write-Log "report attempt $attempt failed ($failure); retrying in $delay s"
            Start-Sleep -Seconds $delay
            $delay = [Math]::Min($delay * 2, $ReportMaxDelaySeconds)
        }
    }
    Write-Log "report given up after $ReportAttempts attempts ($failure); $What"
    return 'failed'
}

# The report body (agent protocol 2). Windows PowerShell's ConvertTo-Json writes a
# one-element array as a bare value when it is piped in, and wraps an array that is
# a PSObject as {"value": [...], "Count": n}: so every array here is made by @() right
# in the table and the table is passed whole with -InputObject, never piped. An empty
# @() is written as [].
function ConvertTo-ReportJson {
    param($Config, [bool]$User, $Products, $Records, $GaveUp)
    $report = [ordered]@{
        station          = $Config.Station
        interactive_user = $User
        licenses         = @(foreach ($p in $Products) { ConvertTo-LicenseRow $p })
        events           = @(foreach ($r in $Records) { [string]$r.ToXml() })
        gave_up          = @(foreach ($f in $GaveUp) { [string]$f })
    }
    return ConvertTo-Json -InputObject $report -Depth 5 -Compress
}

# Builds the body, keeping the newest events that fit under the server's limit.
function New-ReportBody {
    param($Config, [bool]$User, $Products, $Records, $GaveUp)
    $keep = @($Records)
    while ($true) {
        $body = ConvertTo-ReportJson -Config $Config -User $User -Products $Products -Records $keep -GaveUp $GaveUp
        if ([Text.Encoding]::UTF8.GetByteCount($body) -le $MaxReportBytes -or $keep.Count -eq 0) {
            return $body
        }
        $half = [int][Math]::Floor($keep.Count / 2)
        Write-Log "report too large with $($keep.Count) events, sending the newest $half"
        $keep = @($keep | Select-Object -Last $half)
    }
}

function Read-LastEventId {
    try {
        if (Test-Path -LiteralPath $LastEventPath) {
            $id = [long]0
            $text = ([string](Get-Content -LiteralPath $LastEventPath -Raw)).Trim()
            if ([long]::TryParse($text, [ref]$id)) { return $id }
        }
    } catch {
        Write-Log "cannot read ${LastEventPath}: $($_.Exception.Message)"
    }
    return [long](-1)
}

function Save-LastEventId {
    param($Agent, [long]$Id)
    $Agent.LastEventId = $Id
    try {
        Set-Content -LiteralPath $LastEventPath -Value ([string]$Id) -Encoding ASCII
    } catch {
        Write-Log "cannot write ${LastEventPath}: $($_.Exception.Message)"
    }
}

# Posts a report when one is due (start, gave_up changed, or an earlier one failed) or
# when the log has activation events newer than the last posted. A report the server
# refused (4xx) counts as posted: its events are not sent again by themselves. After a
# report gave up (the server is away), only the 10-minute check (-Scheduled) tries
# again, so that activation attempts do not wait out ten minutes of retries each.
function Update-Report {
    param($Agent, [string]$Why, [switch]$Scheduled)
    if ($Agent.ServerAway -and -not $Scheduled) { return }
    try {
        $records = @(Get-ActivationEvents -Since $Agent.Since)
        $newest = [long](-1)
        if ($records.Count -gt 0) { $newest = [long]$records[$records.Count - 1].RecordId }
        # "Differs", not "is greater": a cleared log numbers its records from 1 again.
        $fresh = ($records.Count -gt 0 -and $newest -ne $Agent.LastEventId)
        if (-not $Agent.ReportDue -and -not $fresh) { return }

        $products = @(Get-LicensedProducts)
        $user = Test-UserLoggedIn
        $gaveUp = @($Agent.GaveUp)
        $body = New-ReportBody -Config $Agent.Config -User $user -Products $products -Records $records -GaveUp $gaveUp
        $what = "($Why): $($products.Count) licences, $($records.Count) events (newest #$newest), interactive_user=$user, gave_up [$($gaveUp -join ', ')]"
        $outcome = Send-Report -Config $Agent.Config -Body $body -What $what
        if ($outcome -eq 'failed') {
            $Agent.ServerAway = $true
            $Agent.ReportDue = $true
            return
        }
        $Agent.ServerAway = $false
        $Agent.ReportDue = $false
        if ($records.Count -gt 0) { Save-LastEventId -Agent $Agent -Id $newest }
    } catch {
        Write-Log "report ($Why) failed: $($_.Exception.Message)"
        $Agent.ReportDue = $true
    }
}


# --- activation ---------------------------------------------------------------------
#
# One job per volume KMS client product of a family station.json asks for. Jobs run
# one at a time in order (Windows before Office), so a 12289 logged during a job is
# that job's reply, or at worst Windows' own retry of the other family (the daemon
# pairs events with products; the agent only needs to know when to stop). A family has
# $ActivationLimitSeconds from its first attempt; then its unfinished jobs are dropped
# and it goes into gave_up. Limits and backoffs run on Stopwatches, immune to the
# clock being set after boot.

function New-ActivationJobs {
    param($Config, $Products)
    foreach ($unknown in @($Config.Families | Where-Object { $KnownFamilies -notcontains $_ })) {
        Write-Log "family '$unknown' in station.json is not windows or office, ignored"
    }
    foreach ($family in @($Config.Families | Where-Object { $KnownFamilies -contains $_ })) {
        $own = @($Products | Where-Object { (Get-ProductFamily $_) -eq $family })
        if ($own.Count -eq 0) {
            Write-Log "${family}: no product with a key installed, nothing to activate"
            continue
        }
        foreach ($product in $own) {
            if (-not (Test-KmsClient $product)) {
                Write-Log "${family}: '$($product.Name)' is not a KMS client ($($product.Description)), never activated by the agent"
                continue
            }
            [pscustomobject]@{
                Family    = $family
                Product   = $product
                Name      = [string]$product.Name
                Id        = [string]$product.ID
                PointedAt = $false
                Attempts  = 0
                Delay     = 0          # seconds to wait after the latest attempt
                Wait      = [Diagnostics.Stopwatch]::StartNew()
            }
        }
    }
}

# Points a product at the KMS host of station.json. Windows keeps the setting for the
# whole machine (SoftwareLicensingService, as slmgr /skms does); each Office product
# keeps its own (as ospp /sethst does on Windows 8 and later). A bracketed IPv6
# address is passed with its brackets, as slmgr passes it. Returns whether the setting
# is in place (nothing to set counts as in place: DNS discovery).
function Set-KmsHost {
    param($Config, $Job)
    if (-not $Config.KmsHost) { return $true }
    try {
        if ($Job.Family -eq 'windows') {
            $target = Get-CimInstance -ClassName SoftwareLicensingService
        } else {
            $target = $Job.Product
        }
        $machine = @{ MachineName = [string]$Config.KmsHost }
        Invoke-CimMethod -InputObject $target -MethodName SetKeyManagementServiceMachine -Arguments $machine -ErrorAction Stop | Out-Null
        $where = $Config.KmsHost
        if ($Config.KmsPort -gt 0) {
            $port = @{ PortNumber = [uint32]$Config.KmsPort }
            Invoke-CimMethod -InputObject $target -MethodName SetKeyManagementServicePort -Arguments $port -ErrorAction Stop | Out-Null
            $where = "$($Config.KmsHost):$($Config.KmsPort)"
        }
        Write-Log "$($Job.Family): '$($Job.Name)' points at the KMS host $where"
        return $true
    } catch {
        Write-Log "$($Job.Family): cannot set the KMS host for '$($Job.Name)': $(Get-ErrorCode $_) $($_.Exception.Message)"
        return $false
    }
}

# The HRESULT of a failed licensing call (0xC004F074: no KMS host could be reached).
# CIM carries it in the MSFT_WmiError of the exception, or in the error id as
# "HRESULT 0x...", depending on the path the error took; the exception's own HResult
# is the last resort.
function Get-ErrorCode {
    param($ErrorRecord)
    try {
        $data = $ErrorRecord.Exception.ErrorData
        # X8 writes a negative Int32 as its two's complement: C004F074 either way.
        if ($data -and $data.error_Code) { return '0x{0:X8}' -f $data.error_Code }
        if ([string]$ErrorRecord.FullyQualifiedErrorId -match 'HRESULT 0x([0-9a-fA-F]{1,8})') {
            return '0x' + $Matches[1].ToUpperInvariant()
        }
        return '0x{0:X8}' -f $ErrorRecord.Exception.HResult
    } catch {
        return 'error'
    }
}

# Results of Activate() that mean the KMS host answered: the count is too low, the
# clocks are apart, the host is not activated or has no key for the product. Trying
# again changes nothing now; the daemon reads the reply's event. Anything else (no
# host reachable 0xC004F074, not responding 0xC004F039, RPC and network errors) is
# worth another attempt while the network comes up.
$HostAnswered = @('0xC004F038', '0xC004F06C', '0xC004F041', '0xC004F042')

# One Activate() call. It is synchronous: it returns (or throws) once the KMS exchange
# is over or has timed out, which can take a minute when no host answers. Returns
# whether the host answered. Windows retries on its own every 2 hours and at every
# start, so a 12289 in the log may be Windows' own: only this call's result says
# whether this product got an answer.
function Invoke-ActivationAttempt {
    param($Agent, $Job)
    $Job.Attempts = $Job.Attempts + 1
    if (-not $Job.PointedAt) { $Job.PointedAt = Set-KmsHost -Config $Agent.Config -Job $Job }
    Write-Log "$($Job.Family): activating '$($Job.Name)' ($($Job.Id)), attempt $($Job.Attempts)"
    try {
        $result = Invoke-CimMethod -InputObject $Job.Product -MethodName Activate -ErrorAction Stop
        Write-Log "$($Job.Family): Activate() returned $($result.ReturnValue)"
        return $true
    } catch {
        $code = Get-ErrorCode $_
        Write-Log "$($Job.Family): Activate() failed: $code $(Format-Short $_.Exception.Message)"
        return ($HostAnswered -contains $code)
    }
}

function Complete-ActivationJob {
    param($Agent, $Job)
    Write-Log "$($Job.Family): '$($Job.Name)' got an answer from the KMS host after $($Job.Attempts) attempts"
    # By product id: PSCustomObjects do not compare reliably with -eq.
    $Agent.Jobs = @($Agent.Jobs | Where-Object { $_.Id -ne $Job.Id })
}

# The activation's time is out: every family still waiting is given up at once.
function Stop-Activation {
    param($Agent)
    foreach ($family in @($Agent.Jobs | ForEach-Object { $_.Family } | Select-Object -Unique)) {
        if ($Agent.GaveUp -notcontains $family) {
            $Agent.GaveUp = @($Agent.GaveUp) + $family
        }
        Write-Log "${family}: no reply from the KMS host in $($ActivationLimitSeconds / 60) minutes, gave up"
    }
    $Agent.Jobs = @()
    $Agent.ReportDue = $true
}

# Moves the first job one step when its wait is over: one more attempt, done when the
# host answered it, and every job given up once the activation's time (one limit for
# all families, from the first attempt, so the daemon hears within it) is out.
# Returns whether it did anything (the caller then looks for events to report).
function Step-Activation {
    param($Agent)
    if ($Agent.Jobs.Count -eq 0) { return $false }
    $job = $Agent.Jobs[0]
    if ($job.Wait.Elapsed.TotalSeconds -lt $job.Delay) { return $false }

    if ($null -eq $Agent.ActivationClock) {
        $Agent.ActivationClock = [Diagnostics.Stopwatch]::StartNew()
    }
    if ($Agent.ActivationClock.Elapsed.TotalSeconds -ge $ActivationLimitSeconds) {
        Stop-Activation -Agent $Agent
        return $true
    }

    # The next wait is set before the attempt, which can throw (the event log may not
    # answer): a failing attempt must not turn into one per poll.
    if ($job.Delay -le 0) {
        $job.Delay = $ActivationFirstDelaySeconds
    } else {
        $job.Delay = [Math]::Min($job.Delay * 2, $ActivationMaxDelaySeconds)
    }
    $job.Wait.Restart()
    $answered = Invoke-ActivationAttempt -Agent $Agent -Job $job
    # Lets the service write its 12288/12289 before the report reads the log.
    Start-Sleep -Seconds $EventSettleSeconds
    if ($answered) {
        Complete-ActivationJob -Agent $Agent -Job $job
        return $true
    }
    Write-Log "$($job.Family): no reply yet, next attempt in $($job.Delay) s or later"
    return $true
}


# --- commands -----------------------------------------------------------------------

function Read-LastCommandId {
    if (Test-Path -LiteralPath $LastCommandPath) {
        return ([string](Get-Content -LiteralPath $LastCommandPath -Raw)).Trim()
    }
    return ''
}

# Says what the agent did with a command, before doing it: a second after
# shutdown.exe the station may be gone. One try and one retry.
function Send-CommandResult {
    param($Config, [string]$Id, [string]$Outcome)
    $body = ConvertTo-Json -Compress -InputObject ([ordered]@{ station = $Config.Station; id = $Id; outcome = $Outcome })
    $uri = '{0}/api/v1/agent/command-result?station={1}' -f $Config.Server, [uri]::EscapeDataString($Config.Station)
    for ($attempt = 1; $attempt -le 2; $attempt++) {
        try {
            $response = Invoke-Api -Config $Config -Method 'POST' -Uri $uri -Body $body -TimeoutSec $CommandResultTimeoutSeconds
            if ($response.Status -ge 200 -and $response.Status -lt 300) {
                Write-Log "command $Id result '$Outcome' posted"
                return
            }
            if ($response.Status -ge 400 -and $response.Status -lt 500) {
                Write-Log "command $Id result '$Outcome' refused, HTTP $($response.Status): $(Format-Short $response.Content)"
                return
            }
            $failure = "HTTP $($response.Status)"
        } catch {
            $failure = $_.Exception.Message
        }
        Write-Log "command $Id result '$Outcome', attempt $attempt failed: $failure"
        if ($attempt -lt 2) { Start-Sleep -Seconds 2 }
    }
}

# The shutdown.exe arguments for a command: at once when nobody is logged on, else a
# minute's warning in a message box. /t above 0 implies /f once the minute is over.
function Get-ShutdownArguments {
    param([string]$Name, [bool]$Warn)
    $mode = '/r'
    $message = "netreset: this PC restarts in 60 seconds (reset by the school's administrator). Save your work."
    if ($Name -eq 'shutdown') {
        $mode = '/s'
        $message = "netreset: this PC shuts down in 60 seconds (by the school's administrator). Save your work."
    }
    if ($Warn) {
        return @($mode, '/t', '60', '/c', $message)
    }
    return @($mode, '/t', '0', '/f')
}

function Invoke-StationCommand {
    param($Agent, [string]$Content)
    $command = $Content | ConvertFrom-Json
    $name = [string]$command.command
    $id = [string]$command.id
    # Only a JSON true forces; anything else (missing, "false") does not.
    $force = ($command.force -eq $true)

    # A command the server sends again (say, after the reboot it asked for) runs once.
    if ($id -and $id -eq (Read-LastCommandId)) {
        Write-Log "command $name ($id) already run, ignored"
        return
    }
    if ($name -ne 'reboot' -and $name -ne 'shutdown') {
        Write-Log "unknown command '$name' ($id), ignored"
        return
    }

    # Looked at again right before acting: the poll may have waited a minute.
    $user = Test-UserLoggedIn
    if ($user -and -not $force) {
        Write-Log "command $name ($id) refused: a user is logged on and the command is not forced"
        Send-CommandResult -Config $Agent.Config -Id $id -Outcome 'refused'
        return
    }
    $outcome = 'run'
    if ($user) { $outcome = 'warned' }
    $arguments = Get-ShutdownArguments -Name $name -Warn $user

    # Remember the id first: a second later the station may be gone.
    if ($id) { Set-Content -LiteralPath $LastCommandPath -Value $id -Encoding ASCII }
    Send-CommandResult -Config $Agent.Config -Id $id -Outcome $outcome
    Write-Log "command $name ($id, force=$force, user=$user): shutdown.exe $($arguments -join ' ')"
    & $ShutdownExe @arguments
    Write-Log "shutdown.exe exit $LASTEXITCODE"
}

# One long poll for a command. The server holds it up to 55 s and answers 204 when
# there is nothing, or 200 with {"command", "id", "force"}; a failure waits 30 s.
function Receive-Command {
    param($Agent)
    $config = $Agent.Config
    $flag = 0
    if (Test-UserLoggedIn) { $flag = 1 }
    $uri = '{0}/api/v1/agent/commands?station={1}&interactive_user={2}' -f $config.Server, [uri]::EscapeDataString($config.Station), $flag
    try {
        $started = [Diagnostics.Stopwatch]::StartNew()
        $response = Invoke-Api -Config $config -Method 'GET' -Uri $uri -TimeoutSec $PollTimeoutSeconds
        if ($response.Status -eq 204) {
            # A server that answers at once must not turn the poll into a busy loop.
            if ($started.Elapsed.TotalSeconds -lt 1) { Start-Sleep -Seconds 5 }
            return
        }
        if ($response.Status -eq 200) {
            Invoke-StationCommand -Agent $Agent -Content $response.Content
            return
        }
        Write-Log "command poll: HTTP $($response.Status): $(Format-Short $response.Content); retrying in $ErrorPauseSeconds s"
    } catch {
        # A poll the server held past our timeout is not an error: ask again.
        $webError = $_.Exception -as [System.Net.WebException]
        if ($webError -and $webError.Status -eq [System.Net.WebExceptionStatus]::Timeout) { return }
        Write-Log "command poll or command failed: $($_.Exception.Message); polling again in $ErrorPauseSeconds s"
    }
    Start-Sleep -Seconds $ErrorPauseSeconds
}


# --- main ---------------------------------------------------------------------------

function New-AgentState {
    param($Config)
    return [pscustomobject]@{
        Config       = $Config
        Since        = Get-DeploymentTime
        LastEventId  = Read-LastEventId
        ReportDue    = $true      # the start report
        ServerAway   = $false     # the latest report gave up
        GaveUp       = @()
        Jobs         = @()
        Planned      = $false
        ActivationClock = $null
        EventClock   = [Diagnostics.Stopwatch]::StartNew()
    }
}

# Plans the activation once the licences can be read (sppsvc may be slow at boot).
function Initialize-Activation {
    param($Agent)
    try {
        $Agent.Jobs = @(New-ActivationJobs -Config $Agent.Config -Products @(Get-LicensedProducts))
        $Agent.Planned = $true
        $names = @($Agent.Jobs | ForEach-Object { "$($_.Family): $($_.Name)" })
        Write-Log "to activate: $(if ($names.Count -gt 0) { $names -join '; ' } else { 'nothing' })"
    } catch {
        Write-Log "cannot read the licences to plan the activation: $($_.Exception.Message); trying again after the next poll"
    }
}

# Commands come between the activation steps, so a reboot is never held up by a
# family that is still retrying: an activation attempt waits for the current poll
# (up to 55 s), which only stretches the backoff.
function Start-Agent {
    New-Item -ItemType Directory -Path $Root -Force | Out-Null
    # Windows PowerShell 5.1 may offer only TLS 1.0 to an https server, and waits for
    # "100 Continue" before every POST body.
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    [Net.ServicePointManager]::Expect100Continue = $false

    Write-Log "---- agent start, pid $PID"
    $config = Wait-StationConfig
    $kms = 'DNS discovery'
    if ($config.KmsHost) { $kms = $config.KmsHost }
    if ($config.KmsHost -and $config.KmsPort -gt 0) { $kms = "$($config.KmsHost):$($config.KmsPort)" }
    Write-Log "station $($config.Station), image '$($config.Image)', server $($config.Server), families $($config.Families -join ', '), KMS host $kms"
    $agent = New-AgentState -Config $config
    Write-Log "activation events since $($agent.Since), last posted #$($agent.LastEventId)"
    Update-Report -Agent $agent -Why 'agent start'

    while ($true) {
        if (-not $agent.Planned) { Initialize-Activation -Agent $agent }
        $stepped = $false
        try {
            $stepped = Step-Activation -Agent $agent
        } catch {
            Write-Log "activation step failed: $($_.Exception.Message)"
        }
        if ($stepped) {
            Update-Report -Agent $agent -Why 'activation'
        } elseif ($agent.EventClock.Elapsed.TotalSeconds -ge $EventCheckSeconds) {
            Update-Report -Agent $agent -Why 'event check' -Scheduled
            # Restarted after the report: ten minutes of its retries (server away)
            # still leave ten minutes of polls before the next check.
            $agent.EventClock.Restart()
        }
        Receive-Command -Agent $agent
    }
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
