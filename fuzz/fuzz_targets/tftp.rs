//! A TFTP request from the LAN: parsed, its file name mapped under the root (never
//! out of it), its options negotiated and acknowledged (each once, within limits).
#![no_main]

use std::path::{Component, Path};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pxe::tftp::packet::{negotiate, oack, parse_reply, parse_request, Limits};

fuzz_target!(|data: &[u8]| {
    let _ = parse_reply(data);
    let Ok(request) = parse_request(data) else {
        return;
    };
    let name = String::from_utf8_lossy(&request.file);
    if let Ok(relative) = pxe::tftp::check_name(&name) {
        assert!(
            relative
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "{name:?} -> {relative:?} stays under the root"
        );
        let root = Path::new("/srv/tftp");
        assert!(root.join(&relative).starts_with(root));
    }
    let limits = Limits {
        max_block_size: 1468,
        max_window: 16,
        default_timeout: Duration::from_secs(1),
    };
    let negotiated = negotiate(&request.options, 70_000, limits);
    assert!((8..=1468).contains(&negotiated.block_size) || negotiated.block_size == 512);
    assert!((1..=16).contains(&negotiated.window));
    assert!(negotiated.timeout <= Duration::from_secs(pxe::tftp::packet::MAX_TIMEOUT_S));
    let mut names: Vec<&str> = negotiated
        .acknowledged
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "each option acknowledged once");
    let _ = oack(&negotiated.acknowledged);
});
