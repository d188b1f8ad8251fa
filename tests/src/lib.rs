//! Integration tests live in `loopback/` (cargo test) and `e2e/` (root, .ci/run).
//! This library holds what the load generators (`src/bin/`) share: the packets of a
//! PXE ROM, and the check that keeps them off real networks.

/// Whether this process runs in a network namespace made with `ip netns add` (one
/// of the bind mounts under /run/netns), and not in the host's.
pub fn in_own_network_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(own) = std::fs::read_link("/proc/self/ns/net") else {
        return false;
    };
    // "net:[4026532246]" -> 4026532246
    let Some(inode) = own
        .to_str()
        .and_then(|s| s.strip_prefix("net:["))
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return false;
    };
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| entry.metadata().map(|m| m.ino() == inode).unwrap_or(false))
}

pub fn xid(i: u32) -> u32 {
    0x4e52_0000 ^ i
}

/// The MAC of simulated station `i`: locally administered, 02:4e:52 and `i`.
pub fn mac(i: u32) -> [u8; 6] {
    [0x02, 0x4e, 0x52, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// A PXE DISCOVER as a BIOS PXE ROM sends it: broadcast flag, option 53, 57, 60, 93,
/// 94, 97, 55.
pub fn discover(i: u32, arch: u16) -> Vec<u8> {
    pxe_packet(i, arch, 1, std::net::Ipv4Addr::UNSPECIFIED)
}

/// The PXE ROM's REQUEST to the boot server on port 4011, once DHCP gave it `ciaddr`.
pub fn boot_server_request(i: u32, arch: u16, ciaddr: std::net::Ipv4Addr) -> Vec<u8> {
    pxe_packet(i, arch, 3, ciaddr)
}

fn pxe_packet(i: u32, arch: u16, kind: u8, ciaddr: std::net::Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid(i).to_be_bytes());
    if ciaddr.is_unspecified() {
        p[10] = 0x80; // broadcast flag
    }
    p[12..16].copy_from_slice(&ciaddr.octets());
    let mac = mac(i);
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, kind]);
    p.extend_from_slice(&[57, 2, 0x05, 0xc0]);
    let class = format!("PXEClient:Arch:{arch:05}:UNDI:002001");
    p.push(60);
    p.push(class.len() as u8);
    p.extend_from_slice(class.as_bytes());
    p.extend_from_slice(&[93, 2, (arch >> 8) as u8, arch as u8]);
    p.extend_from_slice(&[94, 3, 1, 2, 1]);
    p.extend_from_slice(&[97, 17, 0]);
    p.extend_from_slice(&[0x4e; 10]);
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[55, 6, 1, 3, 43, 60, 66, 67]);
    p.push(255);
    p
}

/// The boot file a DHCP reply names: option 67, else the `file` field.
pub fn boot_file(reply: &[u8]) -> Option<String> {
    if reply.len() < 240 {
        return None;
    }
    let mut rest = &reply[240..];
    while let [code, tail @ ..] = rest {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let (&len, tail) = tail.split_first()?;
                let value = tail.get(..len as usize)?;
                if *code == 67 {
                    return Some(
                        String::from_utf8_lossy(value)
                            .trim_end_matches('\0')
                            .to_owned(),
                    );
                }
                rest = &tail[len as usize..];
            }
        }
    }
    let file = &reply[108..236];
    let end = file.iter().position(|&b| b == 0).unwrap_or(file.len());
    (end > 0).then(|| String::from_utf8_lossy(&file[..end]).into_owned())
}
