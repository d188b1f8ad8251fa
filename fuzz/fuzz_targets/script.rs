//! An iPXE script rendered from hostile values (NUL-separated: kernel, command line,
//! initrds): either refused, or a script whose only lines beyond the fixed ones are
//! one `kernel` line and one `initrd` line per initrd. Nothing a value holds can add
//! a command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pxe::ipxe::{render, LocalBoot};
use pxe::{BootDecision, ChainTarget, MacAddr};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let kernel = fields.next().unwrap_or_default().to_owned();
    let cmdline = fields.next().unwrap_or_default().to_owned();
    let initrds: Vec<String> = fields.map(str::to_owned).collect();
    let fixed = render(MAC, &BootDecision::LocalDisk, LocalBoot::Exit)
        .expect("the local-disk script renders");
    let fixed_lines = fixed.lines().count() - 1; // less its `exit 0`
    let target = ChainTarget {
        kernel,
        initrds: initrds.clone(),
        cmdline,
    };
    if let Ok(script) = render(MAC, &BootDecision::Chain(target), LocalBoot::Exit) {
        let lines: Vec<&str> = script.lines().collect();
        // Fixed lines, `kernel`, the initrds, `boot`.
        assert_eq!(lines.len(), fixed_lines + 2 + initrds.len(), "{script}");
        let kernel_lines = lines.iter().filter(|l| l.starts_with("kernel ")).count();
        let initrd_lines = lines.iter().filter(|l| l.starts_with("initrd ")).count();
        assert_eq!((kernel_lines, initrd_lines), (1, initrds.len()), "{script}");
        assert_eq!(
            script.matches("${").count(),
            fixed.matches("${").count(),
            "{script}"
        );
    }
});
