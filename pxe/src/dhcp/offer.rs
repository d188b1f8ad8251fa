//! The ProxyDHCP answer: which boot file a machine gets, the reply packet, and where it
//! goes. Pure functions; the golden tests below pin the exact fields and bytes.
//!
//! In proxy mode the answer never carries an address: yiaddr stays 0.0.0.0 and no
//! lease, mask, router or DNS option is sent. The school's DHCP server owns those.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};

use super::classify::{Listener, Request, RequestKind, VendorClass};
use crate::{Arch, Firmware, Loader, Machine};

/// The boot files and URLs a server hands out, from configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFiles {
    /// TFTP file for BIOS PXE ROMs (Debian: `undionly.kpxe`).
    pub bios: String,
    /// TFTP file for x86-64 UEFI (Debian: `snponly.efi` or `ipxe.efi`).
    pub uefi_x64: String,
    /// TFTP file for ARM64 UEFI, when the admin has one.
    pub uefi_arm64: Option<String>,
    /// TFTP file of the Secure Boot path for x86-64 UEFI (shim, which loads
    /// `grubx64.efi` from its own directory), when the server has one.
    pub uefi_x64_signed: Option<String>,
    /// Base URL of our HTTP server as stations reach it, without a trailing slash.
    pub http_base: String,
}

/// What a machine is told to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootFile {
    /// A file name on our TFTP server.
    Tftp(String),
    /// An http URL: the iPXE script, or an EFI binary for UEFI HTTP boot.
    Http(String),
}

impl BootFile {
    /// The text that goes into the `file` field or option 67.
    pub fn as_str(&self) -> &str {
        match self {
            BootFile::Tftp(s) | BootFile::Http(s) => s,
        }
    }
}

/// Pick the boot file for `machine`: the script URL for iPXE (which breaks the
/// chainload loop), else the loader that runs on its firmware: iPXE, or shim for an
/// x86-64 UEFI station on the Secure Boot path. `None` when we have nothing it can
/// run: that includes UEFI HTTP boot on the signed path, since Debian's signed GRUB
/// reads its configuration from the PXE DHCP answer, which HTTP boot does not make.
pub fn boot_file(machine: &Machine, files: &BootFiles, loader: Loader) -> Option<BootFile> {
    if machine.ipxe {
        return Some(BootFile::Http(format!(
            "{}/boot/{}.ipxe",
            files.http_base, machine.mac
        )));
    }
    let signed = loader == Loader::Signed && machine.arch == Arch::X64;
    let tftp_name = match (machine.firmware, machine.arch) {
        (Firmware::Uefi, Arch::X64) if signed => files.uefi_x64_signed.as_ref(),
        (Firmware::UefiHttp, _) if signed => None,
        (Firmware::Bios, _) => Some(&files.bios),
        (Firmware::Uefi | Firmware::UefiHttp, Arch::X64) => Some(&files.uefi_x64),
        (Firmware::Uefi | Firmware::UefiHttp, Arch::Arm64) => files.uefi_arm64.as_ref(),
        _ => None,
    }?;
    match machine.firmware {
        // UEFI HTTP boot fetches an EFI image by URL; the same binaries are served over
        // HTTP under /ipxe/.
        Firmware::UefiHttp => Some(BootFile::Http(format!(
            "{}/ipxe/{}",
            files.http_base, tftp_name
        ))),
        _ => Some(BootFile::Tftp(tftp_name.clone())),
    }
}

/// Build the ProxyDHCP OFFER (to a DISCOVER) or ACK (to a REQUEST).
pub fn build(request: &Request, file: &BootFile, server_ip: Ipv4Addr) -> Message {
    let req = &request.message;
    let mut reply = Message::new_with_id(
        req.xid(),
        req.ciaddr(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.chaddr(),
    );
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_flags(req.flags());

    let kind = match request.kind {
        RequestKind::Discover => MessageType::Offer,
        RequestKind::Request => MessageType::Ack,
    };
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server_ip));
    let class: &[u8] = match request.vendor {
        VendorClass::PxeClient => b"PXEClient",
        // UEFI HTTP boot only accepts offers that say HTTPClient (UEFI 2.5 §24.7.2).
        VendorClass::HttpClient => b"HTTPClient",
    };
    opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
    if let Some(uuid) = &request.machine.uuid {
        opts.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    if request.vendor == VendorClass::PxeClient {
        // PXE_DISCOVERY_CONTROL (vendor sub-option 6) = 8: skip boot server discovery
        // and load the file named in this offer (PXE 2.1 §2.4.5.2). Intel and Broadcom
        // ROMs otherwise wait for a boot menu that a ProxyDHCP without one never sends.
        opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }

    // siaddr and sname name us in every answer: some UEFI firmware ignores option 43
    // and takes the TFTP server from siaddr only, BIOS ROMs read sname, and iPXE
    // ignores a ProxyDHCP answer as "without PXE options" unless siaddr is set next to
    // the boot file name (dhcp_has_pxeopts), even when the file is an http URL.
    reply.set_siaddr(server_ip);
    reply.set_sname_str(server_ip.to_string());
    let name = file.as_str();
    if name.len() < 128 {
        reply.set_fname_str(name);
    } else {
        // Too long for the fixed 128-octet field: option 67 only (iPXE and UEFI read it).
        reply
            .opts_mut()
            .insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
    }
    reply
}

/// Where the answer goes (RFC 2131 §4.1, as far as a server that assigns no address
/// can follow it):
/// - relayed (giaddr set): to the relay agent, port 67;
/// - the client already has an address (port 4011, or a renewing client): back to the
///   address and port it sent from;
/// - otherwise it has no address yet: broadcast to `broadcast` (normally
///   255.255.255.255:68, on the configured interface).
pub fn reply_addr(
    request: &Request,
    listener: Listener,
    from: SocketAddr,
    broadcast: SocketAddrV4,
) -> SocketAddr {
    let giaddr = request.message.giaddr();
    if !giaddr.is_unspecified() && listener == Listener::Dhcp {
        return SocketAddr::V4(SocketAddrV4::new(giaddr, 67));
    }
    match from {
        SocketAddr::V4(v4) if !v4.ip().is_unspecified() && !v4.ip().is_broadcast() => from,
        _ => SocketAddr::V4(broadcast),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::classify::classify;
    use crate::MacAddr;
    use dhcproto::v4::{Architecture, Flags, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    const US: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn files() -> BootFiles {
        BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "snponly.efi".into(),
            uefi_arm64: None,
            uefi_x64_signed: Some("netreset/signed/shimx64.efi".into()),
            http_base: "http://10.0.0.1:8080".into(),
        }
    }

    fn request(kind: MessageType, class: &str, arch: u16, extra: &[DhcpOption]) -> Request {
        let mut msg = Message::new_with_id(
            0xdead_beef,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        msg.set_flags(Flags::default().set_broadcast());
        let mut uuid = vec![0u8];
        uuid.extend(0x10..0x20u8);
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        msg.opts_mut()
            .insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        msg.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
                arch,
            )));
        msg.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(uuid));
        for opt in extra {
            msg.opts_mut().insert(opt.clone());
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        classify(&buf, Listener::Dhcp, US).unwrap()
    }

    fn answer(req: &Request) -> (Message, Vec<u8>) {
        let file = boot_file(&req.machine, &files(), Loader::Ipxe).unwrap();
        let reply = build(req, &file, US);
        let mut bytes = Vec::new();
        reply.encode(&mut Encoder::new(&mut bytes)).unwrap();
        (reply, bytes)
    }

    /// Field-by-field text of a reply, compared against golden text below.
    fn describe(bytes: &[u8]) -> String {
        let m = Message::decode(&mut Decoder::new(bytes)).unwrap();
        let mut out = format!(
            "op={:?} xid={:08x} flags.broadcast={} ciaddr={} yiaddr={} siaddr={} giaddr={} chaddr={} sname={:?} file={:?}\n",
            m.opcode(),
            m.xid(),
            m.flags().broadcast(),
            m.ciaddr(),
            m.yiaddr(),
            m.siaddr(),
            m.giaddr(),
            MacAddr(m.chaddr().try_into().unwrap()),
            m.sname_str().map(|s| s.unwrap().trim_end_matches('\0').to_owned()).unwrap_or_default(),
            m.fname_str().map(|s| s.unwrap().trim_end_matches('\0').to_owned()).unwrap_or_default(),
        );
        for (code, opt) in m.opts().iter() {
            out.push_str(&format!("opt {}: {:?}\n", u8::from(*code), opt));
        }
        out
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn bios_offer_golden() {
        let req = request(
            MessageType::Discover,
            "PXEClient:Arch:00000:UNDI:002001",
            0,
            &[],
        );
        let (_, bytes) = answer(&req);
        assert_eq!(
            describe(&bytes),
            "op=BootReply xid=deadbeef flags.broadcast=true ciaddr=0.0.0.0 yiaddr=0.0.0.0 siaddr=10.0.0.1 giaddr=0.0.0.0 chaddr=52:54:00:12:34:56 sname=\"10.0.0.1\" file=\"undionly.kpxe\"\n\
             opt 43: VendorExtensions([6, 1, 8, 255])\n\
             opt 53: MessageType(Offer)\n\
             opt 54: ServerIdentifier(10.0.0.1)\n\
             opt 60: ClassIdentifier([80, 88, 69, 67, 108, 105, 101, 110, 116])\n\
             opt 97: ClientMachineIdentifier([0, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31])\n"
        );
        // The options area, byte for byte: 43, 53, 54, 60, 97, end.
        assert_eq!(
            hex(&bytes[240..]),
            "2b04060108ff\
             350102\
             36040a000001\
             3c0950584543 6c69656e74\
             61110010111213141516171819 1a1b1c1d1e1f\
             ff"
            .replace(' ', "")
        );
        assert_eq!(hex(&bytes[..4]), "02010600", "op, htype, hlen, hops");
        assert_eq!(&bytes[16..20], &[0, 0, 0, 0], "yiaddr must be 0.0.0.0");
        assert_eq!(&bytes[20..24], &[10, 0, 0, 1], "siaddr");
        assert_eq!(&bytes[236..240], &[99, 130, 83, 99], "magic cookie");
    }

    #[test]
    fn uefi_x64_offer_golden() {
        let req = request(
            MessageType::Discover,
            "PXEClient:Arch:00007:UNDI:003016",
            7,
            &[],
        );
        let (_, bytes) = answer(&req);
        assert_eq!(
            describe(&bytes).lines().next().unwrap(),
            "op=BootReply xid=deadbeef flags.broadcast=true ciaddr=0.0.0.0 yiaddr=0.0.0.0 siaddr=10.0.0.1 giaddr=0.0.0.0 chaddr=52:54:00:12:34:56 sname=\"10.0.0.1\" file=\"snponly.efi\""
        );
        assert_eq!(&bytes[108..119], b"snponly.efi");
        assert_eq!(bytes[119], 0, "file field is NUL-padded");
    }

    #[test]
    fn ipxe_offer_golden_points_at_the_script_with_siaddr_set() {
        let req = request(
            MessageType::Discover,
            "PXEClient:Arch:00000:UNDI:002001",
            0,
            &[DhcpOption::UserClass(b"iPXE".to_vec())],
        );
        let (reply, bytes) = answer(&req);
        assert_eq!(
            describe(&bytes).lines().next().unwrap(),
            "op=BootReply xid=deadbeef flags.broadcast=true ciaddr=0.0.0.0 yiaddr=0.0.0.0 siaddr=10.0.0.1 giaddr=0.0.0.0 chaddr=52:54:00:12:34:56 sname=\"10.0.0.1\" file=\"http://10.0.0.1:8080/boot/52:54:00:12:34:56.ipxe\""
        );
        assert_eq!(reply.opts().msg_type(), Some(MessageType::Offer));
    }

    #[test]
    fn http_client_offer_golden_names_http_client_and_an_efi_url() {
        let req = request(
            MessageType::Discover,
            "HTTPClient:Arch:00016:UNDI:003001",
            16,
            &[],
        );
        let (reply, bytes) = answer(&req);
        assert_eq!(
            describe(&bytes),
            "op=BootReply xid=deadbeef flags.broadcast=true ciaddr=0.0.0.0 yiaddr=0.0.0.0 siaddr=10.0.0.1 giaddr=0.0.0.0 chaddr=52:54:00:12:34:56 sname=\"10.0.0.1\" file=\"http://10.0.0.1:8080/ipxe/snponly.efi\"\n\
             opt 53: MessageType(Offer)\n\
             opt 54: ServerIdentifier(10.0.0.1)\n\
             opt 60: ClassIdentifier([72, 84, 84, 80, 67, 108, 105, 101, 110, 116])\n\
             opt 97: ClientMachineIdentifier([0, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31])\n"
        );
        assert!(reply.opts().get(OptionCode::VendorExtensions).is_none());
    }

    #[test]
    fn proxy_replies_never_carry_lease_options() {
        let forbidden = [
            OptionCode::AddressLeaseTime,
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ];
        for (class, arch) in [("PXEClient", 0), ("PXEClient", 7), ("HTTPClient", 16)] {
            for kind in [MessageType::Discover, MessageType::Request] {
                let (reply, _) = answer(&request(kind, class, arch, &[]));
                assert!(reply.yiaddr().is_unspecified());
                for code in forbidden {
                    assert!(
                        reply.opts().get(code).is_none(),
                        "{class} {arch} {kind:?} carries {code:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn request_is_answered_with_ack() {
        let (reply, _) = answer(&request(MessageType::Request, "PXEClient", 7, &[]));
        assert_eq!(reply.opts().msg_type(), Some(MessageType::Ack));
    }

    #[test]
    fn long_script_url_moves_to_option_67() {
        let mut files = files();
        files.http_base = format!("http://{}.example:8080", "a".repeat(120));
        let req = request(
            MessageType::Discover,
            "PXEClient",
            0,
            &[DhcpOption::UserClass(b"iPXE".to_vec())],
        );
        let file = boot_file(&req.machine, &files, Loader::Ipxe).unwrap();
        let reply = build(&req, &file, US);
        assert!(reply.fname().is_none());
        assert_eq!(
            reply.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(file.as_str().as_bytes().to_vec()))
        );
    }

    #[test]
    fn no_boot_file_for_firmware_we_cannot_serve() {
        let req = request(MessageType::Discover, "PXEClient", 11, &[]);
        assert_eq!(boot_file(&req.machine, &files(), Loader::Ipxe), None);
        let mut with_arm = files();
        with_arm.uefi_arm64 = Some("arm64/snponly.efi".into());
        assert_eq!(
            boot_file(&req.machine, &with_arm, Loader::Ipxe),
            Some(BootFile::Tftp("arm64/snponly.efi".into()))
        );
        assert_eq!(
            boot_file(
                &request(MessageType::Discover, "PXEClient", 31, &[]).machine,
                &files(),
                Loader::Ipxe
            ),
            None
        );
    }

    #[test]
    fn the_signed_loader_goes_to_x64_uefi_pxe_only() {
        let uefi = request(MessageType::Discover, "PXEClient", 7, &[]);
        assert_eq!(
            boot_file(&uefi.machine, &files(), Loader::Signed),
            Some(BootFile::Tftp("netreset/signed/shimx64.efi".into()))
        );
        assert_eq!(
            boot_file(&uefi.machine, &files(), Loader::Ipxe),
            Some(BootFile::Tftp("snponly.efi".into()))
        );
        // BIOS has no Secure Boot: iPXE as before.
        let bios = request(MessageType::Discover, "PXEClient", 0, &[]);
        assert_eq!(
            boot_file(&bios.machine, &files(), Loader::Signed),
            Some(BootFile::Tftp("undionly.kpxe".into()))
        );
        // UEFI HTTP boot: GRUB could not find its configuration, so no answer rather
        // than an iPXE the firmware would refuse.
        let http = request(MessageType::Discover, "HTTPClient", 16, &[]);
        assert_eq!(http.machine.firmware, Firmware::UefiHttp);
        assert_eq!(boot_file(&http.machine, &files(), Loader::Signed), None);
        // iPXE itself (say a station whose setting changed mid-boot) gets its script.
        let ipxe = request(
            MessageType::Discover,
            "PXEClient",
            7,
            &[DhcpOption::UserClass(b"iPXE".to_vec())],
        );
        assert!(matches!(
            boot_file(&ipxe.machine, &files(), Loader::Signed),
            Some(BootFile::Http(_))
        ));
        // A server without the signed loaders does not answer such a station.
        let mut without = files();
        without.uefi_x64_signed = None;
        assert_eq!(boot_file(&uefi.machine, &without, Loader::Signed), None);
    }

    #[test]
    fn replies_go_to_relay_sender_or_broadcast() {
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        let req = request(MessageType::Discover, "PXEClient", 0, &[]);
        let anon: SocketAddr = "0.0.0.0:68".parse().unwrap();
        assert_eq!(
            reply_addr(&req, Listener::Dhcp, anon, bcast),
            SocketAddr::V4(bcast)
        );
        let sender: SocketAddr = "127.0.0.5:40000".parse().unwrap();
        assert_eq!(reply_addr(&req, Listener::Dhcp, sender, bcast), sender);

        let mut relayed = req.clone();
        relayed.message.set_giaddr(Ipv4Addr::new(10, 1, 0, 1));
        let relay_from: SocketAddr = "10.1.0.1:67".parse().unwrap();
        assert_eq!(
            reply_addr(&relayed, Listener::Dhcp, relay_from, bcast),
            "10.1.0.1:67".parse::<SocketAddr>().unwrap()
        );
        let (reply, _) = answer(&relayed);
        assert_eq!(
            reply.giaddr(),
            Ipv4Addr::new(10, 1, 0, 1),
            "giaddr is echoed"
        );
    }
}
