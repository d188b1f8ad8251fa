//! What a restore wave's peer server reads from the LAN: any request head is parsed
//! or refused with a status, never a panic; a parsed one is a chunk GET (or a
//! "what do you hold") of at most 16 ids.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match images::peer::parse_request(data) {
        Ok(r) => {
            if let images::peer::Ask::Many(ids) | images::peer::Ask::Held(ids) = &r.ask {
                assert!(ids.len() <= images::peer::MAX_BATCH);
            }
        }
        Err(images::peer::Refusal(status, _)) => assert!((400..600).contains(&status)),
    }
});
