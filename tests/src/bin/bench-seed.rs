//! Fill a netreset store for the API benchmark: `bench-seed DATA_DIR STATIONS EVENTS`
//! registers STATIONS confirmed stations in 20 rooms, each with EVENTS boot events
//! (DHCP offer, TFTP, script, restore, ... as a real boot path records them), then
//! flushes. Run it before the daemon starts on DATA_DIR (it takes the store alone).

use std::path::PathBuf;

use orchestrator::store::{Settings, Store};

const PATH: [(&str, &str); 5] = [
    ("dhcp", "offered undionly.kpxe (bios, x86)"),
    ("proxy", "4011 ack: undionly.kpxe"),
    ("tftp", "undionly.kpxe, 70144 bytes"),
    ("script", "exit: boot the local disk"),
    (
        "restore-done",
        "staged 3f2a: 5120 chunks in place, 37 fetched (2411520 bytes)",
    ),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, stations, events] = &args[..] else {
        anyhow::bail!("usage: bench-seed DATA_DIR STATIONS EVENTS");
    };
    let (stations, events): (u32, usize) = (stations.parse()?, events.parse()?);
    let store = Store::open(&PathBuf::from(data).join("store"), events)?;
    for i in 0..stations {
        let mac = pxe::MacAddr([0x52, 0x54, 0x00, 0xbe, (i >> 8) as u8, i as u8]);
        let room = format!("R{:02}", i % 20 + 1);
        store.configure(
            mac,
            &Settings {
                name: Some(format!("{}-{:03}", room.to_lowercase(), i / 20 + 1)),
                room: Some(room),
                image: Some("win11-edu".into()),
                kms_activation: Some(i % 5 == 0),
                disk: None,
                secure_boot: None,
            },
        )?;
        for e in 0..events {
            let (kind, detail) = PATH[e % PATH.len()];
            store.record(mac, kind, detail)?;
        }
    }
    store.flush()?;
    println!("{stations} stations, {events} events each, in {data}/store");
    Ok(())
}
