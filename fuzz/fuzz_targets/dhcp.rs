//! A packet from the LAN on port 67 or 4011: classified, and when it is a PXE client
//! we answer, the offer built, encoded and read back, and its destination chosen.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use dhcproto::{v4::Message, Decodable, Encodable};
use libfuzzer_sys::fuzz_target;
use pxe::dhcp::{boot_file, build, classify, reply_addr, BootFiles, Listener};
use pxe::Loader;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fuzz_target!(|data: &[u8]| {
    let files = BootFiles {
        bios: "undionly.kpxe".into(),
        uefi_x64: "snponly.efi".into(),
        uefi_arm64: Some("arm64/snponly.efi".into()),
        uefi_x64_signed: Some("netreset/signed/shimx64.efi".into()),
        http_base: "http://10.0.0.1:8080".into(),
    };
    // Both loaders, chosen by the input's length so each input stays one case.
    let loader = if data.len() % 2 == 0 {
        Loader::Ipxe
    } else {
        Loader::Signed
    };
    for listener in [Listener::Dhcp, Listener::Pxe] {
        let Ok(request) = classify(data, listener, SERVER) else {
            continue;
        };
        let Some(file) = boot_file(&request.machine, &files, loader) else {
            continue;
        };
        let offer = build(&request, &file, SERVER);
        let bytes = offer.to_vec().expect("an offer we built encodes");
        let back = Message::from_bytes(&bytes).expect("an offer we encoded decodes");
        assert_eq!(
            back.xid(),
            request.message.xid(),
            "the offer answers the request"
        );
        assert_eq!(back.chaddr(), request.message.chaddr());
        let from = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 68));
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        let _ = reply_addr(&request, listener, from, broadcast);
    }
});
