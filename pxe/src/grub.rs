//! GRUB configuration for the Secure Boot path: shim (signed by Microsoft) loads
//! Debian's signed `grubnetx64`, whose prefix is `/grub` on the TFTP server the DHCP
//! answer names. It reads `/grub/grub.cfg` there, which is [`BOOTSTRAP`]: the same
//! file for every station, naming the station's own file by its MAC. That one is
//! [`render`]ed per boot like the iPXE script. Pure; the golden tests pin the text.
//!
//! GRUB here has no modules to load (under Secure Boot it loads none): everything the
//! scripts use (`linux`, `initrd`, `tftp`, `configfile`, `sleep`, `reboot`) is built
//! into Debian's `grubnetx64.efi.signed`.

use std::fmt::Write;

use crate::error::refuse_if;
use crate::{BootDecision, ChainTarget, Error, MacAddr};

/// Where the station's own configuration is on the TFTP server, by its MAC as GRUB
/// writes `$net_default_mac` (lower-case, colons).
pub const STATION_DIR: &str = "netreset/grub";

/// `/grub/grub.cfg`: hands over to the station's own file. `net_default_mac` is the
/// MAC of the card GRUB booted from.
pub const BOOTSTRAP: &str = "\
# netreset: every station reads its own configuration
set timeout=0
configfile /netreset/grub/${net_default_mac}.cfg
echo \"netreset: no configuration for ${net_default_mac}, rebooting in 10 seconds\"
sleep 10
reboot
";

/// The TFTP name of `mac`'s configuration (relative, as the TFTP server checks it).
pub fn station_file(mac: MacAddr) -> String {
    format!("{STATION_DIR}/{mac}.cfg")
}

const FAILED: &str = "\
echo \"netreset: boot failed, rebooting in 10 seconds\"
sleep 10
reboot
";

/// Render `mac`'s configuration. Local disk (and `Ignore`, since GRUB has already
/// loaded) is `exit`: back to the firmware, which boots the next entry of its boot
/// order, Windows Boot Manager, as the firmware itself would, so that BitLocker's
/// measurements of the boot path are the usual ones. A chain loads the kernel and
/// initrd from our TFTP server; the kernel is checked against shim's keys by GRUB.
pub fn render(mac: MacAddr, decision: &BootDecision) -> Result<String, Error> {
    let mut s = String::new();
    match decision {
        BootDecision::Ignore | BootDecision::LocalDisk => {
            let _ = writeln!(s, "# netreset: {mac} -> local disk");
            s.push_str("exit\n");
        }
        BootDecision::Chain(target) => {
            let _ = writeln!(s, "# netreset: {mac} -> restore environment");
            render_chain(&mut s, target)?;
        }
    }
    s.push_str(FAILED);
    Ok(s)
}

fn render_chain(s: &mut String, target: &ChainTarget) -> Result<(), Error> {
    s.push_str("echo \"netreset: loading the restore environment\"\n");
    let _ = write!(s, "if linux {}", word("kernel", &target.kernel, true)?);
    // Checked whole first: a line break would only split words here, but it has no
    // business in a command line.
    word("cmdline", &target.cmdline, false)?;
    for arg in target.cmdline.split_whitespace() {
        let _ = write!(s, " {}", word("cmdline", arg, false)?);
    }
    s.push_str("; then\n");
    s.push_str("  if initrd");
    for initrd in &target.initrds {
        let _ = write!(s, " {}", word("initrd", initrd, true)?);
    }
    s.push_str("; then\n    boot\n  fi\nfi\n");
    Ok(())
}

/// One word of a GRUB command, single-quoted (inside single quotes GRUB takes every
/// character as it is, `$` and `;` too), so a value cannot end the command or
/// expand a variable. A value with a quote or a control character is refused; a
/// file is an absolute TFTP path.
fn word(field: &'static str, value: &str, path: bool) -> Result<String, Error> {
    let control = value.chars().any(char::is_control);
    refuse_if(control, field, value, "control character")?;
    refuse_if(value.contains('\''), field, value, "quote in a GRUB word")?;
    let not_path = !value.starts_with('/') || value.contains(char::is_whitespace);
    refuse_if(
        path && not_path,
        field,
        value,
        "not a single absolute TFTP path",
    )?;
    Ok(format!("'{value}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn target(cmdline: &str) -> ChainTarget {
        ChainTarget {
            kernel: "/netreset/restore/vmlinuz".into(),
            initrds: vec!["/netreset/restore/initrd.img".into()],
            cmdline: cmdline.into(),
        }
    }

    #[test]
    fn local_disk_exits_to_the_firmware_golden() {
        assert_eq!(
            render(MAC, &BootDecision::LocalDisk).unwrap(),
            "# netreset: 52:54:00:12:34:56 -> local disk\n\
             exit\n\
             echo \"netreset: boot failed, rebooting in 10 seconds\"\n\
             sleep 10\n\
             reboot\n"
        );
        assert_eq!(
            render(MAC, &BootDecision::Ignore).unwrap(),
            render(MAC, &BootDecision::LocalDisk).unwrap()
        );
    }

    #[test]
    fn chain_loads_kernel_and_initrd_over_tftp_golden() {
        let text = render(
            MAC,
            &BootDecision::Chain(target(
                "quiet netreset.server=http://10.0.0.1:8080 netreset.token=abc",
            )),
        )
        .unwrap();
        assert_eq!(
            text,
            "# netreset: 52:54:00:12:34:56 -> restore environment\n\
             echo \"netreset: loading the restore environment\"\n\
             if linux '/netreset/restore/vmlinuz' 'quiet' 'netreset.server=http://10.0.0.1:8080' 'netreset.token=abc'; then\n\
             \x20 if initrd '/netreset/restore/initrd.img'; then\n\
             \x20   boot\n\
             \x20 fi\n\
             fi\n\
             echo \"netreset: boot failed, rebooting in 10 seconds\"\n\
             sleep 10\n\
             reboot\n"
        );
    }

    #[test]
    fn values_that_would_escape_a_quoted_word_are_refused() {
        for (cmdline, why) in [
            ("a='x'", "quote in a GRUB word"),
            ("a=b\nreboot", "control character"),
        ] {
            match render(MAC, &BootDecision::Chain(target(cmdline))) {
                Err(Error::UnsafeScriptValue { why: w, .. }) => assert_eq!(w, why, "{cmdline:?}"),
                other => panic!("{cmdline:?}: {other:?}"),
            }
        }
        // `$` and `;` are taken literally inside the quotes.
        let text = render(MAC, &BootDecision::Chain(target("a=${x};reboot"))).unwrap();
        assert!(text.contains(" 'a=${x};reboot'; then"), "{text}");
        let mut t = target("quiet");
        t.kernel = "http://10.0.0.1/vmlinuz".into();
        assert!(matches!(
            render(MAC, &BootDecision::Chain(t)),
            Err(Error::UnsafeScriptValue {
                field: "kernel",
                ..
            })
        ));
    }

    #[test]
    fn the_bootstrap_names_the_file_station_file_gives() {
        let asked = BOOTSTRAP
            .lines()
            .find_map(|l| l.strip_prefix("configfile /"))
            .unwrap()
            .replace("${net_default_mac}", &MAC.to_string());
        assert_eq!(asked, station_file(MAC));
        assert_eq!(station_file(MAC), "netreset/grub/52:54:00:12:34:56.cfg");
    }
}
