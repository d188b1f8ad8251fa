//! Writes the seeds that need netreset's own encoders into fuzz/seeds/: an image
//! index, staged images, and an agent report with real Software Protection events.
//! Run: cargo run --manifest-path fuzz/Cargo.toml --example seeds

use images::{Chunk, ChunkId, Index, KmsSettings, Profile, Staged, WindowsFs};
use orchestrator::sim::school;

fn write(dir: &str, name: &str, bytes: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let index = Index::build(
        64 << 10,
        6 * (64 << 10) - 100,
        [
            Chunk::Data(ChunkId::of(b"a")),
            Chunk::Zero,
            Chunk::Data(ChunkId::of(b"b")),
            Chunk::Free,
            Chunk::Data(ChunkId::of(b"a")),
            Chunk::Zero,
        ],
    );
    write("index", "index", &[&[0u8][..], &index.encode()].concat());
    write(
        "index",
        "summary",
        &[&[3u8][..], &index.summary().encode()].concat(),
    );
    let kms = KmsSettings {
        host: "kms.school.example".into(),
        port: 1688,
        windows: true,
        office: true,
    };
    for (i, (profile, fs)) in [
        (Profile::Plain, WindowsFs::None),
        (Profile::Kms, WindowsFs::Ntfs),
        (Profile::Kms, WindowsFs::Fat),
    ]
    .into_iter()
    .enumerate()
    {
        let staged =
            Staged::new("lab", index.id(), profile, Some(&kms), "NETRESET", fs).unwrap();
        write(
            "index",
            &format!("staged{i}"),
            &[&[1u8][..], &staged.encode()].concat(),
        );
    }
    let mut events = school::kms_events(
        100,
        1_796_076_600_000,
        "windows",
        "5a1b2c3d-0000-4000-8000-00000000aaaa",
        3,
        false,
    );
    events.extend(school::kms_events(
        102,
        1_796_076_660_000,
        "office",
        "5a1b2c3d-0000-4000-8000-00000000bbbb",
        5,
        true,
    ));
    write(
        "bodies",
        "event",
        &[&[7u8][..], events[1].as_bytes()].concat(),
    );
    let report = serde_json::json!({
        "station": "02:00:00:00:00:41",
        "interactive_user": false,
        "licenses": school::licenses(&["windows", "office"], "VOLUME_KMSCLIENT"),
        "events": events,
        "gave_up": ["office"],
    });
    write(
        "bodies",
        "report",
        &[&[0u8][..], report.to_string().as_bytes()].concat(),
    );
    // A capture's upload: two chunks framed as the restore client frames them
    // (compressed by a store, which is how the fuzz crate gets zstd bytes).
    let dir = std::env::temp_dir().join(format!("netreset-seeds-{}", std::process::id()));
    let store = images::ChunkStore::open(&dir).unwrap();
    let mut frames = vec![0u8];
    for data in [vec![7u8; 5000], (0..3000u32).map(|i| (i * 31 % 251) as u8).collect()] {
        let (id, _) = store.put(&data).unwrap();
        let z = store.get_compressed(&id).unwrap();
        frames.extend_from_slice(&id.0);
        frames.extend_from_slice(&(z.len() as u32).to_le_bytes());
        frames.extend_from_slice(&z);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    write("capture", "frames", &frames);
    write(
        "capture",
        "request",
        &[&[1u8][..], br#"{"name": "win11-v3", "chunk_size": 65536}"#].concat(),
    );
    write(
        "capture",
        "report",
        &[
            &[2u8][..],
            br#"{"state": "running", "done_bytes": 1, "total_bytes": 2, "chunks_uploaded": 1}"#,
        ]
        .concat(),
    );
    write("capture", "index", &[&[3u8][..], &index.encode()].concat());
}
