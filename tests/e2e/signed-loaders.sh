#!/usr/bin/env bash
# Debian's signed boot loaders for the Secure Boot tests, unpacked into DIR (default
# target/signed) without installing them: shim-signed's postinst would register the
# machine's own boot with the firmware, which a CI machine must not have done to it.
#   DIR/usr/lib/shim/shimx64.efi.signed                        (Microsoft UEFI CA)
#   DIR/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed   (Debian)
set -euo pipefail
dir=${1:-$(cd "$(dirname "$0")/../.." && pwd)/target/signed}
mkdir -p "$dir/debs"
cd "$dir/debs"
# As root, apt's download sandbox user cannot write here; the files are checked
# against the archive's signed lists all the same.
apt-get download -o APT::Sandbox::User=root shim-signed grub-efi-amd64-signed >/dev/null
for deb in ./*.deb; do dpkg-deb -x "$deb" "$dir"; done
for f in usr/lib/shim/shimx64.efi.signed usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed; do
  [ -s "$dir/$f" ] || { echo "signed-loaders: $f missing from the packages" >&2; exit 1; }
done
echo "signed loaders in $dir: $(ls "$dir/debs" | tr "\n" " ")"
