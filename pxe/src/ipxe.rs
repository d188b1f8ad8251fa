//! iPXE script rendering: a [`BootDecision`] in, the script text out. Pure; the golden
//! tests pin the exact text.
//!
//! Every script first makes sure the network is up, retrying `dhcp` a few times,
//! because a script can be reached by `chain` from a menu or another script on a NIC
//! that was never configured, and because lab switches with spanning tree on hold a
//! port for seconds after link-up.

use std::fmt::Write;

use crate::error::refuse_if;
use crate::{BootDecision, ChainTarget, Error, MacAddr};

/// How a station boots its local disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalBoot {
    /// `exit`: hand control back to the firmware, which tries the next boot device.
    /// Works on UEFI and on most BIOSes.
    Exit,
    /// `sanboot --no-describe --drive 0x80`: boot the first BIOS disk directly, for
    /// BIOSes that stop instead of trying the next device after `exit`.
    Sanboot,
}

/// How many times the script retries `dhcp` before giving up and rebooting.
const DHCP_ATTEMPTS: u32 = 5;

/// Render the script for `mac`. `Ignore` renders a script that exits, since iPXE has
/// already loaded and the station should go on to its disk.
pub fn render(mac: MacAddr, decision: &BootDecision, local: LocalBoot) -> Result<String, Error> {
    let mut s = String::from("#!ipxe\n");
    let what = match decision {
        BootDecision::Ignore | BootDecision::LocalDisk => "local disk",
        BootDecision::Chain(_) => "restore environment",
    };
    let _ = writeln!(s, "# netreset: {mac} -> {what}");
    let _ = write!(s, "{NETWORK_UP_HEAD}iseq ${{netreset_try}} {DHCP_ATTEMPTS} && goto netreset_failed ||\n{NETWORK_UP_TAIL}");
    match decision {
        BootDecision::Ignore | BootDecision::LocalDisk => match local {
            LocalBoot::Exit => s.push_str("exit 0\n"),
            LocalBoot::Sanboot => s.push_str("sanboot --no-describe --drive 0x80 || exit 0\n"),
        },
        BootDecision::Chain(target) => render_chain(&mut s, target)?,
    }
    s.push_str(FAILED);
    Ok(s)
}

const NETWORK_UP_HEAD: &str = "\
set netreset_try:int32 0
:netreset_net
isset ${net0/ip} && goto netreset_boot ||
dhcp && goto netreset_boot ||
inc netreset_try
";

const NETWORK_UP_TAIL: &str = "\
sleep 2
goto netreset_net
:netreset_boot
";

const FAILED: &str = "\
:netreset_failed
echo netreset: boot failed, rebooting in 10 seconds
sleep 10
reboot
";

fn render_chain(s: &mut String, target: &ChainTarget) -> Result<(), Error> {
    check("kernel", &target.kernel, true)?;
    check("cmdline", &target.cmdline, false)?;
    // A UEFI kernel's stub finds each initrd iPXE loaded by its name.
    let mut names = String::new();
    for initrd in &target.initrds {
        let name = initrd.rsplit('/').next().unwrap_or("initrd");
        let _ = write!(names, "initrd={name} ");
    }
    let _ = writeln!(
        s,
        "kernel {} {names}{} || goto netreset_failed",
        target.kernel, target.cmdline
    );
    for initrd in &target.initrds {
        check("initrd", initrd, true)?;
        let _ = writeln!(s, "initrd {initrd} || goto netreset_failed");
    }
    s.push_str("boot || goto netreset_failed\n");
    Ok(())
}

/// Refuse values that would change the script's meaning: a line break starts a new
/// command, `${` expands an iPXE setting, `||`, `&&` and `#` are iPXE's command
/// operators and comment. URLs must be single http(s) words.
fn check(field: &'static str, value: &str, url: bool) -> Result<(), Error> {
    let control = value.chars().any(char::is_control);
    refuse_if(control, field, value, "control character")?;
    refuse_if(value.contains("${"), field, value, "iPXE setting expansion")?;
    let operator = value.contains("||")
        || value.contains("&&")
        || value.contains(" #")
        || value.starts_with('#');
    refuse_if(operator, field, value, "iPXE command operator")?;
    let http = value.starts_with("http://") || value.starts_with("https://");
    let not_url = value.contains(' ') || !http;
    refuse_if(url && not_url, field, value, "not a single http(s) URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn local_disk_exit_golden() {
        let script = render(MAC, &BootDecision::LocalDisk, LocalBoot::Exit).unwrap();
        assert_eq!(
            script,
            "#!ipxe\n\
             # netreset: 52:54:00:12:34:56 -> local disk\n\
             set netreset_try:int32 0\n\
             :netreset_net\n\
             isset ${net0/ip} && goto netreset_boot ||\n\
             dhcp && goto netreset_boot ||\n\
             inc netreset_try\n\
             iseq ${netreset_try} 5 && goto netreset_failed ||\n\
             sleep 2\n\
             goto netreset_net\n\
             :netreset_boot\n\
             exit 0\n\
             :netreset_failed\n\
             echo netreset: boot failed, rebooting in 10 seconds\n\
             sleep 10\n\
             reboot\n"
        );
    }

    #[test]
    fn local_disk_sanboot_boots_drive_0x80() {
        let script = render(MAC, &BootDecision::LocalDisk, LocalBoot::Sanboot).unwrap();
        assert!(
            script.contains("\n:netreset_boot\nsanboot --no-describe --drive 0x80 || exit 0\n"),
            "{script}"
        );
    }

    #[test]
    fn chain_golden() {
        let target = ChainTarget {
            kernel: "http://10.0.0.1:8080/env/vmlinuz".into(),
            initrds: vec!["http://10.0.0.1:8080/env/initrd".into()],
            cmdline: "console=ttyS0 netreset.station=52:54:00:12:34:56".into(),
        };
        let script = render(MAC, &BootDecision::Chain(target), LocalBoot::Exit).unwrap();
        let body = script.split(":netreset_boot\n").nth(1).unwrap();
        assert_eq!(
            body,
            "kernel http://10.0.0.1:8080/env/vmlinuz initrd=initrd console=ttyS0 netreset.station=52:54:00:12:34:56 || goto netreset_failed\n\
             initrd http://10.0.0.1:8080/env/initrd || goto netreset_failed\n\
             boot || goto netreset_failed\n\
             :netreset_failed\n\
             echo netreset: boot failed, rebooting in 10 seconds\n\
             sleep 10\n\
             reboot\n"
        );
        assert!(
            script.starts_with("#!ipxe\n# netreset: 52:54:00:12:34:56 -> restore environment\n")
        );
    }

    #[test]
    fn values_that_would_inject_commands_are_refused() {
        let ok = ChainTarget {
            kernel: "http://h/k".into(),
            initrds: vec![],
            cmdline: "quiet".into(),
        };
        for cmdline in [
            "quiet\nshell",
            "a || shell",
            "a && shell",
            "x=${net0/mac}",
            "a # b",
            "a\r",
        ] {
            let t = ChainTarget {
                cmdline: cmdline.into(),
                ..ok.clone()
            };
            assert!(
                render(MAC, &BootDecision::Chain(t), LocalBoot::Exit).is_err(),
                "{cmdline:?}"
            );
        }
        for kernel in ["tftp://h/k", "http://h/k extra", "http://h/k\nshell", ""] {
            let t = ChainTarget {
                kernel: kernel.into(),
                ..ok.clone()
            };
            assert!(
                render(MAC, &BootDecision::Chain(t), LocalBoot::Exit).is_err(),
                "{kernel:?}"
            );
        }
        let t = ChainTarget {
            initrds: vec!["http://h/i\nshell".into()],
            ..ok.clone()
        };
        assert!(render(MAC, &BootDecision::Chain(t), LocalBoot::Exit).is_err());
        assert!(render(MAC, &BootDecision::Chain(ok), LocalBoot::Exit).is_ok());
    }
}
