//! A configuration file as an admin (or a broken editor) may write it: parsed and
//! checked, an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = orchestrator::config::Config::parse(
            text,
            std::path::Path::new("/etc/netreset/netreset.toml"),
        );
    }
});
