#!/usr/bin/env bash
# Makes SOFTWARE beside this script: a registry hive as Windows 11 Education 23H2
# has it under Microsoft\Windows NT\CurrentVersion, written by hivex (Debian's
# libhivex-bin), the reader's peer in images/src/hive.rs's tests. hivex cannot make a
# hive from nothing, so this starts from the smallest valid one (a base block and
# one bin holding the root key), which Python writes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v hivexsh >/dev/null || { echo "make-hive.sh: needs hivexsh (apt-get install libhivex-bin)" >&2; exit 1; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
python3 - "$t/minimal" <<'PY'
import struct, sys
bins = bytearray(4096)
bins[0:32] = b"hbin" + struct.pack("<III", 0, 4096, 0) + bytes(16)
name = b"ROOT"
nk = bytearray(0x4c) + name
nk[0:2] = b"nk"
struct.pack_into("<H", nk, 2, 0x2C)              # root key (0x04, 0x08), 8-bit name (0x20)
struct.pack_into("<I", nk, 0x10, 0xFFFFFFFF)      # no parent
struct.pack_into("<I", nk, 0x1C, 0xFFFFFFFF)      # no subkey list
struct.pack_into("<I", nk, 0x20, 0xFFFFFFFF)
struct.pack_into("<I", nk, 0x28, 0xFFFFFFFF)      # no value list
# the security cell: set below, after the key cell (hivex copies it to new keys)
struct.pack_into("<I", nk, 0x30, 0xFFFFFFFF)      # no class name
struct.pack_into("<H", nk, 0x48, len(name))
def put(at, data):
    size = len(data) + 4
    size += (-size) % 8
    bins[at:at + 4] = struct.pack("<i", -size)
    bins[at + 4:at + 4 + len(data)] = data
    return at + size
sk_at = 32 + ((len(nk) + 4 + 7) // 8) * 8
struct.pack_into("<I", nk, 0x2C, sk_at)
end = put(32, nk)
# One security key, its own neighbour both ways, for the root: an empty
# self-relative security descriptor (revision 1, SE_SELF_RELATIVE).
descriptor = struct.pack("<BBHIIII", 1, 0, 0x8000, 0, 0, 0, 0)
sk = b"sk" + struct.pack("<HIIII", 0, sk_at, sk_at, 1, len(descriptor)) + descriptor
end = put(end, sk)
bins[end:end + 4] = struct.pack("<i", 4096 - end)
base = bytearray(4096)
base[0:4] = b"regf"
struct.pack_into("<IIQIIIII", base, 4, 1, 1, 0, 1, 3, 0, 1, 32)   # seq, seq, time, v1.3, file, format, root
struct.pack_into("<II", base, 0x28, 4096, 1)                       # bins' size, clustering
checksum = 0
for i in range(0, 0x1FC, 4):
    checksum ^= struct.unpack_from("<I", base, i)[0]
struct.pack_into("<I", base, 0x1FC, checksum)
open(sys.argv[1], "wb").write(bytes(base + bins))
PY
hivexsh -w "$t/minimal" <<'SH'
add Microsoft
cd Microsoft
add Windows NT
cd Windows NT
add CurrentVersion
cd CurrentVersion
setval 6
ProductName
string:Windows 10 Education
EditionID
string:Education
DisplayVersion
string:23H2
CurrentBuild
string:22631
UBR
dword:0x00000b2d
InstallationType
string:Client
commit
SH
cp "$t/minimal" "$here/SOFTWARE"
hivexget "$here/SOFTWARE" 'Microsoft\Windows NT\CurrentVersion' EditionID
