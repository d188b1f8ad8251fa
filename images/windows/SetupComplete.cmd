@echo off
rem SetupComplete.cmd: netreset's first-boot step on a freshly restored station.
rem Windows runs it once, as SYSTEM, at the end of setup after a sysprep-generalized
rem image boots (Windows skips it on images with an OEM product key, Enterprise aside).
rem It installs the netreset agent and starts it. The agent points Windows and Office
rem at the school's KMS host, asks for activation (through the licensing WMI methods:
rem slmgr.vbs and ospp.vbs need VBScript, an optional feature from Windows 11 24H2 on),
rem reports the results and takes commands.
rem Setup ignores the exit code and shows no output: everything goes to the log, and a
rem failed step never stops the next one.
rem netreset renders the double-brace placeholders kms_host, kms_port and windows, office
rem (1 or 0); it validates them, so they are used bare. Only the log uses them now: the
rem agent takes the server, the families and the KMS host from station.json (netreset's
rem checks read the NR_KMS and NR_PORT lines, so they stay).
setlocal EnableExtensions

set "NR_DIR=%ProgramData%\netreset"
set "NR_LOG=%NR_DIR%\setup.log"
set "NR_SRC=%WINDIR%\Setup\Scripts"
set "NR_KMS={{kms_host}}"
set "NR_PORT={{kms_port}}"
set "NR_WINDOWS={{windows}}"
set "NR_OFFICE={{office}}"
set "NR_TASK=netreset-agent"

if not exist "%NR_DIR%" mkdir "%NR_DIR%"
rem station.json carries the station's agent token: only SYSTEM and Administrators may
rem read the folder, so a student at the PC cannot speak for the agent.
icacls "%NR_DIR%" /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F >nul 2>&1
set "NR_RC=%errorlevel%"

call :log ---- setupcomplete start: kms %NR_KMS%:%NR_PORT%, windows=%NR_WINDOWS% office=%NR_OFFICE%
call :log icacls %NR_DIR% exit %NR_RC%

call :install_agent
call :log activation is the agent's: it activates the families in station.json
call :register_agent

call :log ---- setupcomplete done
endlocal
exit /b 0


:install_agent
copy /Y "%NR_SRC%\netreset-agent.ps1" "%NR_DIR%\" >>"%NR_LOG%" 2>&1
call :log copy netreset-agent.ps1 exit %errorlevel%
copy /Y "%NR_SRC%\station.json" "%NR_DIR%\" >>"%NR_LOG%" 2>&1
call :log copy station.json exit %errorlevel%
rem Every user can read Setup\Scripts; once copied, the token lives only in NR_DIR.
if exist "%NR_DIR%\station.json" del /F /Q "%NR_SRC%\station.json" >>"%NR_LOG%" 2>&1
exit /b 0


rem The agent starts at every boot as SYSTEM; /F replaces a task left over in the image.
:register_agent
schtasks /Create /F /TN "%NR_TASK%" /SC ONSTART /RU SYSTEM /RL HIGHEST /TR "powershell.exe -NoProfile -ExecutionPolicy Bypass -File \"%NR_DIR%\netreset-agent.ps1\"" >>"%NR_LOG%" 2>&1
call :log schtasks /create %NR_TASK% exit %errorlevel%
rem schtasks gives a new task a 72-hour run limit and stops it on battery power; the
rem agent runs as long as the station is up, so lift both.
powershell.exe -NoProfile -ExecutionPolicy Bypass -Command "Set-ScheduledTask -TaskName '%NR_TASK%' -Settings (New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries) | Out-Null" >>"%NR_LOG%" 2>&1
call :log task settings %NR_TASK% exit %errorlevel%
schtasks /Run /TN "%NR_TASK%" >>"%NR_LOG%" 2>&1
call :log schtasks /run %NR_TASK% exit %errorlevel%
exit /b 0


rem call :log MESSAGE...  appends one timestamped line to the log.
:log
>>"%NR_LOG%" echo [%date% %time%] %*
exit /b 0
