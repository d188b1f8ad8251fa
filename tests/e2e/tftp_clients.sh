#!/usr/bin/env bash
# Real TFTP clients (atftp, tftp-hpa, curl) download Debian's iPXE binaries from
# netreset byte-identically. Loopback only: netreset binds 127.0.0.1, no DHCP.
source "$(dirname "$0")/lib.sh"
need atftp tftp curl cmp
[ -x "$NETRESET" ] || fail "$NETRESET missing: cargo build first"
[ -f /usr/lib/ipxe/undionly.kpxe ] || fail "Debian's ipxe package is not installed"

# The served root: Debian's binaries through symlinks (ipxe.efi is itself a symlink
# into /boot, so that is two hops), and a text file for netascii.
root=$E2E_TMP/root
mkdir -p "$root"
for f in undionly.kpxe snponly.efi ipxe.efi; do ln -s "/usr/lib/ipxe/$f" "$root/$f"; done
printf 'line one\nline two\n\ttabbed\n' > "$root/menu.txt"

port=$((20000 + RANDOM % 20000))
http=$((port + 1))
cat > "$E2E_TMP/netreset.toml" <<TOML
data_dir = "$E2E_TMP/data"
[http]
listen = "127.0.0.1:$http"
[dhcp]
mode = "off"
server_ip = "127.0.0.1"
[api]
token = "$E2E_ADMIN_TOKEN"
[tftp]
listen = "127.0.0.1:$port"
root = "$root"
mtu = 1500
TOML
"$NETRESET" check-config "$E2E_TMP/netreset.toml" >/dev/null
"$NETRESET" serve --config "$E2E_TMP/netreset.toml" > "$E2E_TMP/netreset.log" 2>&1 &
defer "kill $!"
wait_for 20 "netreset http" curl --max-time 30 -sf "http://127.0.0.1:$http/api/v1/health"

files=(undionly.kpxe snponly.efi ipxe.efi)   # ipxe.efi is a symlink into /boot
cd "$E2E_TMP"
for f in "${files[@]}"; do
  src=$(readlink -f "/usr/lib/ipxe/$f")
  rm -f out; atftp -g -r "$f" -l out 127.0.0.1 "$port" 2>atftp.log; cmp_files "$src" out "atftp $f"
  rm -f out; atftp --option "blksize 1468" -g -r "$f" -l out 127.0.0.1 "$port" 2>>atftp.log; cmp_files "$src" out "atftp blksize $f"
  rm -f out; atftp --option "blksize 1468" --option "windowsize 16" -g -r "$f" -l out 127.0.0.1 "$port" 2>>atftp.log
  cmp_files "$src" out "atftp blksize+windowsize $f"
  rm -f out; atftp --option "tsize 0" --option "blksize 65464" -g -r "$f" -l out 127.0.0.1 "$port" 2>>atftp.log
  cmp_files "$src" out "atftp tsize, oversized blksize $f"
  rm -f out; tftp -m binary 127.0.0.1 "$port" -c get "$f" out 2>tftp-hpa.log; cmp_files "$src" out "tftp-hpa $f"
  rm -f out; curl --max-time 30 -sS -o out "tftp://127.0.0.1:$port/$f" 2>curl.log; cmp_files "$src" out "curl $f"
  rm -f out; curl --max-time 30 -sS --tftp-blksize 1468 -o out "tftp://127.0.0.1:$port/$f" 2>>curl.log; cmp_files "$src" out "curl blksize $f"
  log "ok: $f ($(stat -c %s "$src") bytes) by atftp (plain, blksize, windowsize, tsize), tftp-hpa, curl"
done

# netascii: tftp-hpa's default mode. The server sends CR LF, the client turns it back.
rm -f out; tftp -m netascii 127.0.0.1 "$port" -c get menu.txt out 2>tftp-hpa.log
cmp_files "$root/menu.txt" out "tftp-hpa netascii menu.txt"
log "ok: menu.txt by tftp-hpa in netascii mode"

# Refused: a name outside the root, through a real client.
rm -f out
if curl --max-time 30 -sS -o out "tftp://127.0.0.1:$port/..%2f..%2fetc%2fpasswd" 2>/dev/null && [ -s out ]; then
  fail "a traversal name was served"
fi
if atftp -g -r "../../../etc/passwd" -l out 127.0.0.1 "$port" 2>/dev/null && [ -s out ]; then
  fail "atftp got ../../../etc/passwd"
fi
grep -q "tftp request refused" "$E2E_TMP/netreset.log" || fail "refusal was not logged"
log "PASS tftp_clients"
