//! Classification of a received DHCP packet: is it a PXE client we should answer, and
//! what machine is it (MAC, processor, firmware, already iPXE or not)?
//!
//! Pure: bytes in, [`Request`] or [`Skip`] out.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};

use crate::{Arch, Firmware, MacAddr, Machine};

/// Which of our two sockets received the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Port 67: broadcast DISCOVER/REQUEST, answered with a ProxyDHCP offer.
    Dhcp,
    /// Port 4011: unicast REQUEST to the PXE boot server.
    Pxe,
}

/// The DHCP message type we are answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// DHCPDISCOVER: answered with DHCPOFFER.
    Discover,
    /// DHCPREQUEST: answered with DHCPACK.
    Request,
}

/// The vendor class the client announced (option 60).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VendorClass {
    /// `PXEClient:Arch:xxxxx:UNDI:yyyzzz` (PXE 2.1) or a bare `PXEClient`.
    PxeClient,
    /// `HTTPClient:...` (UEFI 2.5 HTTP boot).
    HttpClient,
}

/// A packet we answer, with everything the answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub machine: Machine,
    pub kind: RequestKind,
    pub vendor: VendorClass,
    /// The decoded message, echoed into the reply (xid, flags, giaddr, chaddr).
    pub message: Message,
}

/// Why a packet gets no answer. Each is logged at debug level, never fatal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("not a DHCP packet: {0}")]
    Malformed(String),
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("hardware type is not Ethernet with a 6-octet address")]
    NotEthernet,
    #[error("no message type (plain BOOTP)")]
    NoMessageType,
    #[error("message type {0:?} is not answered on this port")]
    MessageType(MessageType),
    #[error("not a PXE or HTTP boot client (option 60 missing or other)")]
    NotPxe,
    #[error("REQUEST is addressed to DHCP server {0}, not to us")]
    OtherServer(Ipv4Addr),
    #[error("no DHCP magic cookie (99.130.83.99) after the BOOTP header")]
    NoMagicCookie,
}

impl Skip {
    /// The name of this reason in the counts ([`crate::stats::DROPS`]).
    pub fn name(&self) -> &'static str {
        match self {
            Skip::Malformed(_) => "malformed",
            Skip::NotRequest => "not-request",
            Skip::NotEthernet => "not-ethernet",
            Skip::NoMessageType => "no-message-type",
            Skip::MessageType(_) => "message-type",
            Skip::NotPxe => "not-pxe",
            Skip::OtherServer(_) => "other-server",
            Skip::NoMagicCookie => "no-magic-cookie",
        }
    }
}

/// Decode and classify one packet received on `listener`. `server_ip` is our own
/// address, used to tell REQUESTs meant for us from the client's REQUEST to the
/// school's DHCP server.
pub fn classify(bytes: &[u8], listener: Listener, server_ip: Ipv4Addr) -> Result<Request, Skip> {
    // RFC 2131 §3: the options field starts with the magic cookie. A packet without
    // it is plain BOOTP or garbage, whatever a lenient decoder makes of it.
    if bytes.len() >= 240 && bytes[236..240] != [99, 130, 83, 99] {
        return Err(Skip::NoMagicCookie);
    }
    check_option_lengths(bytes).map_err(Skip::Malformed)?;
    let message =
        Message::decode(&mut Decoder::new(bytes)).map_err(|e| Skip::Malformed(e.to_string()))?;
    if message.opcode() != Opcode::BootRequest {
        return Err(Skip::NotRequest);
    }
    if message.htype() != HType::Eth || message.hlen() != 6 || message.chaddr().len() < 6 {
        return Err(Skip::NotEthernet);
    }
    let mut octets = [0u8; 6];
    octets.copy_from_slice(&message.chaddr()[..6]);
    let mac = MacAddr(octets);

    let opts = message.opts();
    let kind = match (opts.msg_type(), listener) {
        (None, _) => return Err(Skip::NoMessageType),
        (Some(MessageType::Discover), Listener::Dhcp) => RequestKind::Discover,
        (Some(MessageType::Request), _) => RequestKind::Request,
        (Some(other), _) => return Err(Skip::MessageType(other)),
    };

    let vendor = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(id)) if id.starts_with(b"PXEClient") => {
            VendorClass::PxeClient
        }
        Some(DhcpOption::ClassIdentifier(id)) if id.starts_with(b"HTTPClient") => {
            VendorClass::HttpClient
        }
        _ => return Err(Skip::NotPxe),
    };

    // On port 67 a PXE client's REQUEST normally goes to the school's DHCP server to
    // take its lease; answering it too would hand the client a second ACK with no
    // address in it. Answer only REQUESTs that name us (or no server at all).
    if listener == Listener::Dhcp && kind == RequestKind::Request {
        if let Some(DhcpOption::ServerIdentifier(id)) = opts.get(OptionCode::ServerIdentifier) {
            if *id != server_ip {
                return Err(Skip::OtherServer(*id));
            }
        }
    }

    let code = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => u16::from(*arch),
        // PXE ROMs older than RFC 4578 send no option 93; they are all x86 BIOS.
        _ => 0,
    };
    let (arch, mut firmware) = arch_of(code);
    if vendor == VendorClass::HttpClient {
        firmware = match firmware {
            Firmware::Bios | Firmware::BiosHttp => Firmware::BiosHttp,
            Firmware::Uefi | Firmware::UefiHttp => Firmware::UefiHttp,
            Firmware::Other => Firmware::Other,
        };
    }

    let ipxe = is_ipxe(&message);
    // Option 97 is a type octet (0) and a 16-octet UUID (RFC 4578 §2.3). Only a
    // well-formed one is echoed: PXE 2.1 requires the echo, a garbled one helps nobody.
    let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(id)) if id.len() == 17 && id[0] == 0 => {
            Some(id.clone())
        }
        _ => None,
    };
    let ip = if !message.ciaddr().is_unspecified() {
        Some(message.ciaddr())
    } else {
        match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) if !ip.is_unspecified() => Some(*ip),
            _ => None,
        }
    };

    Ok(Request {
        machine: Machine {
            mac,
            arch,
            firmware,
            ipxe,
            uuid,
            ip,
        },
        kind,
        vendor,
        message,
    })
}

/// The length an option must have for dhcproto 0.15 to read it as sent: its decoder
/// reads fixed-size options (and the fixed head of a few others) from the packet's
/// stream whatever their length byte says, so a wrong length misreads every option
/// after it, and for some it panics (`debug_assert!`, or `len - 1` of a zero length).
/// From its `decode_inner`; options it reads with their length are not here.
fn required_length(code: u8) -> Option<(usize, bool)> {
    // (length, whether more is allowed)
    let exact = |n| Some((n, false));
    match code {
        19 | 20 | 23 | 27 | 29 | 30 | 31 | 34 | 36 | 37 | 39 | 46 | 52 | 53 | 116 | 156 | 157 => {
            exact(1)
        }
        13 | 22 | 26 | 57 | 93 => exact(2),
        2 | 24 | 35 | 38 | 51 | 58 | 59 | 91 | 106 | 152..=155 => exact(4),
        80 => exact(0),         // rapid commit
        94 => exact(3),         // client network interface identifier
        81 => Some((3, true)),  // client FQDN: flags, two rcodes, then the name
        151 => Some((1, true)), // bulk leasequery status: a code, then a message
        _ => None,
    }
}

/// Reject options whose length the decoder would not honour (see
/// [`required_length`]): a hostile packet would abort a debug build and be misread
/// by a release one; we drop it instead. dhcproto joins consecutive instances of one
/// option (RFC 3396) into one, but a pad between them ends it, so the lengths are
/// judged as it reads them. Found by fuzzing (fuzz/, target `dhcp`), twice.
fn check_option_lengths(bytes: &[u8]) -> Result<(), String> {
    const OPTIONS_START: usize = 240;
    let check = |(code, len): (u8, usize)| {
        let ok = match required_length(code) {
            Some((want, false)) => len == want,
            Some((least, true)) => len >= least,
            None => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("option {code} has length {len}"))
        }
    };
    let mut rest = bytes.get(OPTIONS_START..).unwrap_or_default();
    // The option being read: its code and the length of its instances so far.
    let mut current: Option<(u8, usize)> = None;
    loop {
        match rest.first() {
            None | Some(255) => return current.map_or(Ok(()), check),
            Some(0) => {
                current.take().map_or(Ok(()), check)?;
                rest = &rest[1..];
            }
            Some(&code) => {
                let len = *rest.get(1).ok_or("option without a length")? as usize;
                if rest.len() < 2 + len {
                    return Err(format!("option {code} runs past the packet"));
                }
                rest = &rest[2 + len..];
                current = match current {
                    Some((c, total)) if c == code => Some((c, total + len)),
                    other => {
                        other.map_or(Ok(()), check)?;
                        Some((code, len))
                    }
                };
            }
        }
    }
}

/// iPXE announces itself with user class `iPXE` (option 77, sent raw rather than in
/// RFC 3004 form) and with its encapsulated options (option 175). Either one means the
/// iPXE binary is already running, so the loop must be broken: it gets the script URL.
fn is_ipxe(message: &Message) -> bool {
    let opts = message.opts();
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(uc)) => uc.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    user_class || opts.get(OptionCode::Unknown(175)).is_some()
}

/// Option 93 value -> (processor, firmware), over IANA's registry.
pub fn arch_of(code: u16) -> (Arch, Firmware) {
    use Arch::*;
    use Firmware::*;
    match code {
        0 => (X86, Bios),
        2 => (Ia64, Uefi),
        // 6 is IA32 UEFI in the registry and 9 is EFI byte code, but RFC 4578 as first
        // published put x86-64 at 9, much x64 firmware still sends 9, and U-Boot's EFI
        // loader on x86-64 sends 6. 32-bit UEFI PCs are all but gone from school labs,
        // so all three get the x64 binary.
        6 | 7 | 9 => (X64, Uefi),
        10 => (Arm32, Uefi),
        11 => (Arm64, Uefi),
        15..=17 => (X64, UefiHttp),
        18 => (Arm32, UefiHttp),
        19 => (Arm64, UefiHttp),
        20 => (X86, BiosHttp),
        21 | 23 => (Arm32, Firmware::Other),
        22 | 24 => (Arm64, Firmware::Other),
        25 => (RiscV32, Uefi),
        26 => (RiscV32, UefiHttp),
        27 => (RiscV64, Uefi),
        28 => (RiscV64, UefiHttp),
        29 => (RiscV128, Uefi),
        30 => (RiscV128, UefiHttp),
        37 => (LoongArch32, Uefi),
        38 => (LoongArch32, UefiHttp),
        39 => (LoongArch64, Uefi),
        40 => (LoongArch64, UefiHttp),
        // 1, 3, 4, 5, 8: deprecated; 12-14 PowerPC; 31-32 s390; 33-36 MIPS and Sunway
        // UEFI; 41 Raspberry Pi boot; anything newer.
        other => (Arch::Other(other), Firmware::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, Flags};
    use dhcproto::{Encodable, Encoder};

    const US: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn discover(opts: &[DhcpOption]) -> Vec<u8> {
        packet(MessageType::Discover, opts)
    }

    fn packet(kind: MessageType, opts: &[DhcpOption]) -> Vec<u8> {
        let mut msg = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        msg.set_xid(0x1234_5678)
            .set_flags(Flags::default().set_broadcast());
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        for opt in opts {
            msg.opts_mut().insert(opt.clone());
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    fn pxe(arch: u16) -> Vec<DhcpOption> {
        vec![
            DhcpOption::ClassIdentifier(
                format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes(),
            ),
            DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        ]
    }

    #[test]
    fn option_93_table_maps_every_firmware_family() {
        let table: &[(u16, Arch, Firmware)] = &[
            (0, Arch::X86, Firmware::Bios),
            (2, Arch::Ia64, Firmware::Uefi),
            (6, Arch::X64, Firmware::Uefi),
            (7, Arch::X64, Firmware::Uefi),
            (9, Arch::X64, Firmware::Uefi),
            (10, Arch::Arm32, Firmware::Uefi),
            (11, Arch::Arm64, Firmware::Uefi),
            (15, Arch::X64, Firmware::UefiHttp),
            (16, Arch::X64, Firmware::UefiHttp),
            (17, Arch::X64, Firmware::UefiHttp),
            (18, Arch::Arm32, Firmware::UefiHttp),
            (19, Arch::Arm64, Firmware::UefiHttp),
            (20, Arch::X86, Firmware::BiosHttp),
            (22, Arch::Arm64, Firmware::Other),
            (25, Arch::RiscV32, Firmware::Uefi),
            (27, Arch::RiscV64, Firmware::Uefi),
            (28, Arch::RiscV64, Firmware::UefiHttp),
            (39, Arch::LoongArch64, Firmware::Uefi),
            (40, Arch::LoongArch64, Firmware::UefiHttp),
            (1, Arch::Other(1), Firmware::Other),
            (12, Arch::Other(12), Firmware::Other),
            (31, Arch::Other(31), Firmware::Other),
            (41, Arch::Other(41), Firmware::Other),
            (0xffff, Arch::Other(0xffff), Firmware::Other),
        ];
        for &(code, arch, firmware) in table {
            assert_eq!(arch_of(code), (arch, firmware), "option 93 value {code}");
            let req = classify(&discover(&pxe(code)), Listener::Dhcp, US).unwrap();
            assert_eq!(
                (req.machine.arch, req.machine.firmware),
                (arch, firmware),
                "packet with option 93 = {code}"
            );
        }
    }

    #[test]
    fn missing_option_93_is_taken_as_bios() {
        let req = classify(
            &discover(&[DhcpOption::ClassIdentifier(b"PXEClient".to_vec())]),
            Listener::Dhcp,
            US,
        )
        .unwrap();
        assert_eq!(
            (req.machine.arch, req.machine.firmware),
            (Arch::X86, Firmware::Bios)
        );
        assert_eq!(req.machine.mac, MacAddr(MAC));
        assert_eq!(req.kind, RequestKind::Discover);
    }

    #[test]
    fn ipxe_is_recognised_by_user_class_or_option_175() {
        let mut opts = pxe(0);
        opts.push(DhcpOption::UserClass(b"iPXE".to_vec()));
        assert!(
            classify(&discover(&opts), Listener::Dhcp, US)
                .unwrap()
                .machine
                .ipxe
        );

        let mut opts = pxe(7);
        opts.push(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
            OptionCode::Unknown(175),
            vec![0xb1, 1, 1],
        )));
        assert!(
            classify(&discover(&opts), Listener::Dhcp, US)
                .unwrap()
                .machine
                .ipxe
        );

        assert!(
            !classify(&discover(&pxe(7)), Listener::Dhcp, US)
                .unwrap()
                .machine
                .ipxe
        );
    }

    #[test]
    fn http_client_vendor_class_means_http_boot_firmware() {
        let opts = vec![
            DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture::from(16)),
        ];
        let req = classify(&discover(&opts), Listener::Dhcp, US).unwrap();
        assert_eq!(req.vendor, VendorClass::HttpClient);
        assert_eq!(req.machine.firmware, Firmware::UefiHttp);
    }

    #[test]
    fn non_pxe_discover_is_skipped() {
        assert_eq!(
            classify(&discover(&[]), Listener::Dhcp, US),
            Err(Skip::NotPxe)
        );
        let msft = [DhcpOption::ClassIdentifier(b"MSFT 5.0".to_vec())];
        assert_eq!(
            classify(&discover(&msft), Listener::Dhcp, US),
            Err(Skip::NotPxe)
        );
    }

    #[test]
    fn request_to_the_schools_server_is_skipped_and_ours_is_answered() {
        let mut opts = pxe(0);
        opts.push(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
        opts.push(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50)));
        let bytes = packet(MessageType::Request, &opts);
        assert_eq!(
            classify(&bytes, Listener::Dhcp, US),
            Err(Skip::OtherServer(Ipv4Addr::new(10, 0, 0, 2)))
        );

        let mut opts = pxe(0);
        opts.push(DhcpOption::ServerIdentifier(US));
        opts.push(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50)));
        let req = classify(&packet(MessageType::Request, &opts), Listener::Dhcp, US).unwrap();
        assert_eq!(req.kind, RequestKind::Request);
        assert_eq!(req.machine.ip, Some(Ipv4Addr::new(10, 0, 0, 50)));
    }

    #[test]
    fn port_4011_answers_request_only() {
        assert_eq!(
            classify(&discover(&pxe(7)), Listener::Pxe, US),
            Err(Skip::MessageType(MessageType::Discover))
        );
        let req = classify(&packet(MessageType::Request, &pxe(7)), Listener::Pxe, US).unwrap();
        assert_eq!(req.kind, RequestKind::Request);
        let inform = packet(MessageType::Inform, &pxe(7));
        assert_eq!(
            classify(&inform, Listener::Dhcp, US),
            Err(Skip::MessageType(MessageType::Inform))
        );
    }

    #[test]
    fn option_97_is_kept_only_when_well_formed() {
        let mut uuid = vec![0u8];
        uuid.extend(1..=16u8);
        let mut opts = pxe(0);
        opts.push(DhcpOption::ClientMachineIdentifier(uuid.clone()));
        assert_eq!(
            classify(&discover(&opts), Listener::Dhcp, US)
                .unwrap()
                .machine
                .uuid,
            Some(uuid)
        );

        let mut opts = pxe(0);
        opts.push(DhcpOption::ClientMachineIdentifier(vec![0, 1, 2]));
        assert_eq!(
            classify(&discover(&opts), Listener::Dhcp, US)
                .unwrap()
                .machine
                .uuid,
            None
        );
    }

    #[test]
    fn replies_and_non_ethernet_packets_are_skipped() {
        let mut bytes = discover(&pxe(0));
        bytes[0] = 2; // BOOTREPLY
        assert_eq!(classify(&bytes, Listener::Dhcp, US), Err(Skip::NotRequest));
        let mut bytes = discover(&pxe(0));
        bytes[1] = 6; // IEEE 802
        assert_eq!(classify(&bytes, Listener::Dhcp, US), Err(Skip::NotEthernet));
    }

    #[test]
    fn truncated_and_garbage_packets_are_dropped_without_panic() {
        let good = discover(&pxe(7));
        for len in 0..good.len() {
            let _ = classify(&good[..len], Listener::Dhcp, US);
        }
        // Every option length octet set to every value: nothing may panic.
        let options_start = 240;
        for pos in options_start..good.len() {
            for value in [0u8, 1, 2, 3, 17, 0x7f, 0xff] {
                let mut bytes = good.clone();
                bytes[pos] = value;
                let _ = classify(&bytes, Listener::Dhcp, US);
            }
        }
        // Deterministic pseudo-random garbage behind a valid header.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut bytes = good[..240].to_vec();
            let len = (state % 300) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            let _ = classify(&bytes, Listener::Dhcp, US);
        }
        assert!(matches!(
            classify(&[0u8; 10], Listener::Dhcp, US),
            Err(Skip::Malformed(_))
        ));
        let mut hlen = good.clone();
        hlen[2] = 200;
        assert!(
            classify(&hlen, Listener::Dhcp, US).is_err(),
            "hlen beyond chaddr"
        );
        let mut rapid = good[..good.len() - 1].to_vec();
        rapid.extend([80, 1, 0, 255]);
        assert!(
            matches!(
                classify(&rapid, Listener::Dhcp, US),
                Err(Skip::Malformed(_))
            ),
            "rapid commit with a body"
        );
    }

    #[test]
    fn fixed_size_options_of_another_length_are_dropped_not_misread() {
        // Found by `cargo fuzz run dhcp` in its first 10 s: option 155 (a bulk
        // leasequery time) with length 0 tripped dhcproto's `debug_assert!`.
        // The second, in its first 10 minutes: option 94 of length 0, a pad, then
        // 94 of length 3 (the pad ends the first; it was added to the second). The
        // third: two 94s of length 3 back to back, which dhcproto joins into one
        // of 6.
        for found in [
            &include_bytes!("fuzz-crash-option-155.bin")[..],
            &include_bytes!("fuzz-crash-option-94-twice.bin")[..],
            &include_bytes!("fuzz-crash-option-94-joined.bin")[..],
        ] {
            assert!(matches!(
                classify(found, Listener::Dhcp, US),
                Err(Skip::Malformed(_))
            ));
        }
        let good = discover(&pxe(7));
        assert!(classify(&good, Listener::Dhcp, US).is_ok());
        // Instances back to back are one option (RFC 3396); a pad ends one.
        let with = |extra: &[u8]| {
            let mut bytes = good[..240].to_vec();
            bytes.extend(extra);
            bytes.extend(&good[240..]);
            classify(&bytes, Listener::Dhcp, US)
        };
        assert!(
            with(&[94, 1, 1, 94, 2, 2, 1, 250, 0]).is_ok(),
            "1 + 2 joined are 3"
        );
        assert!(matches!(
            with(&[94, 1, 1, 0, 94, 2, 2, 1, 250, 0]),
            Err(Skip::Malformed(_))
        ));
        assert!(matches!(
            with(&[94, 3, 1, 2, 1, 94, 3, 1, 2, 1, 250, 0]),
            Err(Skip::Malformed(_))
        ));
        for code in 1..=254u8 {
            let Some((want, more)) = required_length(code) else {
                continue;
            };
            for len in [0usize, 1, 2, 3, 4, 5, 8] {
                if len == want || (more && len > want) {
                    continue;
                }
                // The first option: a misread one would shift all the others.
                let mut bytes = good[..240].to_vec();
                bytes.extend([code, len as u8]);
                bytes.extend(std::iter::repeat_n(0x41, len));
                bytes.extend([250, 0]); // another option, so that no two join
                bytes.extend(&good[240..]);
                assert!(
                    matches!(
                        classify(&bytes, Listener::Dhcp, US),
                        Err(Skip::Malformed(_))
                    ),
                    "option {code} of length {len}"
                );
            }
        }
    }
}
