@echo off
rem SetupComplete.cmd: netreset's first-boot step on a freshly restored station.
rem Windows runs it once, as SYSTEM, at the end of setup after a sysprep-generalized
rem image boots (Windows skips it on images with an OEM product key, Enterprise aside).
rem It points Windows and Office at the school's KMS host, asks for activation, and
rem installs the netreset agent, which reports the results and takes commands.
rem Setup ignores the exit code and shows no output: everything goes to the log, and a
rem failed step never stops the next one.
rem netreset renders the double-brace placeholders kms_host, kms_port and windows, office
rem (1 or 0); it validates them, so they are used bare. The server URL is no
rem placeholder: the agent takes it from station.json.
setlocal EnableExtensions

set "NR_DIR=%ProgramData%\netreset"
set "NR_LOG=%NR_DIR%\setup.log"
set "NR_SRC=%WINDIR%\Setup\Scripts"
set "NR_SLMGR=%WINDIR%\System32\slmgr.vbs"
set "NR_KMS={{kms_host}}"
set "NR_PORT={{kms_port}}"
set "NR_WINDOWS={{windows}}"
set "NR_OFFICE={{office}}"
set "NR_TASK=netreset-agent"
rem Read outside any ( ) block: the ")" in "Program Files (x86)" would close the block.
set "NR_PF86=%ProgramFiles(x86)%"

if not exist "%NR_DIR%" mkdir "%NR_DIR%"
rem station.json carries the station's agent token: only SYSTEM and Administrators may
rem read the folder, so a student at the PC cannot speak for the agent.
icacls "%NR_DIR%" /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F >nul 2>&1
set "NR_RC=%errorlevel%"

call :log ---- setupcomplete start: kms %NR_KMS%:%NR_PORT%, windows=%NR_WINDOWS% office=%NR_OFFICE%
call :log icacls %NR_DIR% exit %NR_RC%

call :install_agent
if "%NR_WINDOWS%"=="1" (call :activate_windows) else (call :log windows: family not enabled, skipped)
if "%NR_OFFICE%"=="1" (call :activate_office) else (call :log office: family not enabled, skipped)
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


rem slmgr and ospp can print an error and still exit 0. The agent reads the real outcome
rem from event 12289; the exit codes here are only for the log.
:activate_windows
cscript //nologo "%NR_SLMGR%" /skms %NR_KMS%:%NR_PORT% >>"%NR_LOG%" 2>&1
call :log windows: slmgr /skms %NR_KMS%:%NR_PORT% exit %errorlevel%
cscript //nologo "%NR_SLMGR%" /ato >>"%NR_LOG%" 2>&1
call :log windows: slmgr /ato exit %errorlevel%
exit /b 0


:activate_office
set "NR_OSPP="
rem Office16 is Office 2016 and later, Office15 is Office 2013; 64- or 32-bit Office.
for %%V in (Office16 Office15) do for %%D in ("%ProgramFiles%" "%NR_PF86%") do if not defined NR_OSPP if exist "%%~D\Microsoft Office\%%V\OSPP.VBS" set "NR_OSPP=%%~D\Microsoft Office\%%V\OSPP.VBS"
if not defined NR_OSPP (
    call :log office: no OSPP.VBS under Program Files, Office is not installed, skipped
    exit /b 0
)
call :log office: using %NR_OSPP%
cscript //nologo "%NR_OSPP%" /sethst:%NR_KMS% >>"%NR_LOG%" 2>&1
call :log office: ospp /sethst:%NR_KMS% exit %errorlevel%
cscript //nologo "%NR_OSPP%" /setprt:%NR_PORT% >>"%NR_LOG%" 2>&1
call :log office: ospp /setprt:%NR_PORT% exit %errorlevel%
cscript //nologo "%NR_OSPP%" /act >>"%NR_LOG%" 2>&1
call :log office: ospp /act exit %errorlevel%
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
