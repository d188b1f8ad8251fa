//! The ProxyDHCP hot path without sockets: classify a PXE DISCOVER, pick the boot file,
//! build and encode the offer. `cargo bench -p pxe --bench dhcp`.

use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion};
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType};
use dhcproto::{Encodable, Encoder};
use pxe::dhcp::{boot_file, build, classify, BootFiles, Listener};
use pxe::Loader;

fn discover() -> Vec<u8> {
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(
        0x1234_5678,
        unspecified,
        unspecified,
        unspecified,
        unspecified,
        &mac,
    );
    msg.set_flags(Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
    let mut uuid = vec![0u8];
    uuid.extend([0x4e; 16]);
    opts.insert(DhcpOption::ClientMachineIdentifier(uuid));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        dhcproto::v4::OptionCode::SubnetMask,
        dhcproto::v4::OptionCode::Router,
        dhcproto::v4::OptionCode::VendorExtensions,
    ]));
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn hot_path(c: &mut Criterion) {
    let packet = discover();
    let server = Ipv4Addr::new(10, 0, 0, 1);
    let files = BootFiles {
        bios: "undionly.kpxe".into(),
        uefi_x64: "snponly.efi".into(),
        uefi_arm64: None,
        uefi_x64_signed: Some("netreset/signed/shimx64.efi".into()),
        http_base: "http://10.0.0.1:8080".into(),
    };
    c.bench_function("classify", |b| {
        b.iter(|| classify(&packet, Listener::Dhcp, server).unwrap())
    });
    let request = classify(&packet, Listener::Dhcp, server).unwrap();
    c.bench_function("build+encode", |b| {
        b.iter(|| {
            let file = boot_file(&request.machine, &files, Loader::Ipxe).unwrap();
            let reply = build(&request, &file, server);
            let mut out = Vec::with_capacity(400);
            reply.encode(&mut Encoder::new(&mut out)).unwrap();
            out
        })
    });
    c.bench_function("classify+build+encode", |b| {
        b.iter(|| {
            let request = classify(&packet, Listener::Dhcp, server).unwrap();
            let file = boot_file(&request.machine, &files, Loader::Ipxe).unwrap();
            let mut out = Vec::with_capacity(400);
            build(&request, &file, server)
                .encode(&mut Encoder::new(&mut out))
                .unwrap();
            out
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
