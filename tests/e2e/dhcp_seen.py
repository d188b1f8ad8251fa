#!/usr/bin/env python3
"""Tell netreset's boot server that station MAC is at IP, as iPXE's DHCP would:
a DHCPREQUEST to port 4011 with ciaddr IP, sent from IP; exit 0 once answered.
A reset's boot script carries its restore token only to that address.

usage: dhcp_seen.py MAC IP SERVER PXE_PORT
"""
import os
import socket
import struct
import sys


def request(mac, ip):
    xid = os.getpid() & 0xFFFFFFFF
    chaddr = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 0, xid, 0, 0x8000,
        socket.inet_aton(ip), b"\0" * 4, b"\0" * 4, b"\0" * 4,
        chaddr.ljust(16, b"\0"), b"", b"",
    )
    vendor = b"PXEClient:Arch:00000:UNDI:002001"
    options = (
        b"\x63\x82\x53\x63"          # magic cookie
        + b"\x35\x01\x03"            # DHCPREQUEST
        + bytes([60, len(vendor)]) + vendor
        + b"\x5d\x02\x00\x00"        # client architecture: BIOS
        + b"\xff"
    )
    return xid, header + options


def main():
    mac, ip, server, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    xid, packet = request(mac, ip)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.settimeout(1.0)
    for _ in range(5):
        sock.sendto(packet, (server, port))
        try:
            reply, _ = sock.recvfrom(1500)
        except socket.timeout:
            continue
        if len(reply) >= 8 and struct.unpack("!I", reply[4:8])[0] == xid:
            return 0
    print(f"dhcp_seen: no answer from {server}:{port} for {mac}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
