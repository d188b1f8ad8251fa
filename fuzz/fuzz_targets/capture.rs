//! What a capture's restore environment (or anyone with its token) sends the daemon:
//! the body of `capture/chunks` (frames of id, length, zstd chunk), the request and
//! progress bodies, an index. A frame list that passes holds only chunks that match
//! their ids and fit the chunk size.
#![no_main]

use images::{decode_chunk, Index};
use libfuzzer_sys::fuzz_target;
use orchestrator::service::captures;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(chunks) = captures::frames(bytes, 64 << 10) {
                for (id, compressed) in chunks {
                    decode_chunk(&id, compressed, 64 << 10).expect("a frame that passed is its id's");
                }
            }
        }
        1 => drop(serde_json::from_slice::<captures::CaptureRequest>(bytes)),
        2 => drop(serde_json::from_slice::<captures::CaptureReport>(bytes)),
        _ => drop(Index::decode(bytes)),
    }
});
