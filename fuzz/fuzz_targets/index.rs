//! What the restore client and the daemon read from disk or the network: an image
//! index, an index summary, a staged image (the first byte picks), and a compressed
//! chunk. What decodes encodes back to the same thing.
#![no_main]

use images::{decode_chunk, ChunkId, Index, Staged, Summary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(index) = Index::decode(bytes) {
                let again = Index::decode(&index.encode()).expect("an encoded index decodes");
                assert_eq!(again, index);
                assert_eq!(index.layout.data_count(), index.ids.len() as u64);
            }
        }
        3 => {
            if let Ok(summary) = Summary::decode(bytes, None) {
                let again = Summary::decode(&summary.encode(), Some(&summary.id()))
                    .expect("an encoded summary decodes, with its own id");
                assert_eq!(again, summary);
            }
        }
        1 => {
            if let Ok(staged) = Staged::decode(bytes, None) {
                let encoded = staged.encode();
                let again = Staged::decode(&encoded, Some(&staged.id()))
                    .expect("an encoded staged image decodes, with its own id");
                assert_eq!(again.encode(), encoded);
            }
        }
        _ => {
            let id = ChunkId::of(bytes);
            let _ = decode_chunk(&id, bytes, 1 << 20);
        }
    }
});
