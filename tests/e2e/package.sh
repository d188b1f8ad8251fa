#!/usr/bin/env bash
# The Debian package (root): built with cargo-deb, installed with dpkg -i, its files
# and unit in place, the installed example configuration checked, and the installed
# binary started in a network namespace whose lab interface is eth0 at 10.0.0.1 (as
# that configuration expects) until health answers. The package is purged at exit.
source "$(dirname "$0")/lib.sh"
need cargo-deb dpkg dpkg-deb ip curl
[ "$(id -u)" = 0 ] || fail "needs root (dpkg, network namespaces)"
if dpkg -s netreset >/dev/null 2>&1; then
  fail "netreset is installed on this machine: this test installs and purges its own"
fi
(cd "$E2E_ROOT" && cargo build -q --release -p orchestrator -p images --bins &&
  cargo deb -p orchestrator --no-build --output "$E2E_TMP/" >/dev/null)
deb=$(ls "$E2E_TMP"/netreset_*.deb)
log "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"
dpkg-deb -f "$deb" Depends | grep -q 'ipxe' || fail "the package does not depend on ipxe: $(dpkg-deb -f "$deb" Depends)"
dpkg-deb -f "$deb" Suggests | grep -q 'shim-signed, grub-efi-amd64-signed' ||
  fail "the package does not suggest the signed loaders: $(dpkg-deb -f "$deb" Suggests)"
dpkg -i "$deb" > "$E2E_TMP/dpkg.log" 2>&1 || fail "dpkg -i: $(cat "$E2E_TMP/dpkg.log")"
defer "dpkg --purge netreset"
for f in /usr/bin/netreset /usr/lib/netreset/netreset-restore /etc/netreset/netreset.toml \
  /lib/systemd/system/netreset.service /usr/share/doc/netreset/README.md; do
  [ -e "$f" ] || fail "$f is not installed"
done
dpkg-query -W -f='${Conffiles}\n' netreset | grep -q /etc/netreset/netreset.toml ||
  fail "/etc/netreset/netreset.toml is not a conffile (an upgrade would overwrite the admin's edits)"
grep -q '^ExecStart=/usr/bin/netreset serve --config /etc/netreset/netreset.toml' \
  /lib/systemd/system/netreset.service || fail "the unit does not start the installed binary"
/usr/bin/netreset check-config /etc/netreset/netreset.toml || fail "the installed example does not pass check-config"
if command -v systemd-analyze >/dev/null; then
  log "$(systemd-analyze security --offline=true /lib/systemd/system/netreset.service 2>/dev/null | tail -1)"
fi

# The installed binary on the installed example, with only its data directory moved
# into this test's: a lab interface eth0 at 10.0.0.1 in a namespace of its own.
id=$(printf '%04x' $((E2E_ID % 65536)))
ns=nrpkg-$id
make_ns "$ns"
ip link add "pk0-$id" type veth peer name "pk1-$id"
defer "ip link del pk0-$id"
ip link set "pk1-$id" netns "$ns"
ip netns exec "$ns" ip link set "pk1-$id" name eth0
ip netns exec "$ns" ip addr add 10.0.0.1/24 dev eth0
ip netns exec "$ns" ip link set eth0 up
ip link set "pk0-$id" up
sed "s|^data_dir = .*|data_dir = \"$E2E_TMP/data\"|" /etc/netreset/netreset.toml > "$E2E_TMP/netreset.toml"
bg_in "$ns" "$E2E_TMP/netreset.log" /usr/bin/netreset serve --config "$E2E_TMP/netreset.toml"
wait_for 20 "the installed netreset's health" ip netns exec "$ns" curl --max-time 2 -sf http://10.0.0.1:8080/api/v1/health
log "the installed netreset answers on 10.0.0.1:8080"
