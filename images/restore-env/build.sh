#!/usr/bin/env bash
# Build netreset's restore environment: a kernel (vmlinuz) and an initramfs
# (initrd.img) that bring up the network, run netreset-restore onto the disk the boot
# script names, report and reboot. From Debian packages only: the distribution kernel
# (its drivers for lab PCs and VMs: e1000e, igb, r8169, e1000, virtio, ahci, nvme),
# busybox-static, the ntfs-3g tools, the C library, and netreset-restore.
#
# Usage: images/restore-env/build.sh [OUT_DIR]     (default: target/restore-env)
#   RESTORE_BIN=path   the netreset-restore to put in (default: target/release/...)
#   KERNEL=package     the kernel package (default: what linux-image-amd64 depends on)
# Needs: apt-get (with a package index: apt-get update), dpkg-deb, cpio, gzip, kmod
# (depmod, modprobe), file, ntfs-3g installed. Run as root or any user that may read
# the package index; nothing is installed on this machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(realpath -m "${1:-$root/target/restore-env}")
restore_bin=${RESTORE_BIN:-$root/target/release/netreset-restore}

say() { printf 'restore-env: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip depmod modprobe ldd ntfscp ntfsls; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install cpio kmod ntfs-3g)"
done
[ -x "$restore_bin" ] || die "$restore_bin is missing: cargo build --release -p images --bin netreset-restore"

work=$out/work
rm -rf "$work"
mkdir -p "$work/debs" "$work/kernel" "$work/busybox" "$work/root"
rootfs=$work/root

# --- packages -------------------------------------------------------------------------
kernel_pkg=${KERNEL:-$(apt-cache depends linux-image-amd64 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/ { print $2; exit }' || true)}
[ -n "$kernel_pkg" ] || die "no kernel package found: run apt-get update (Debian's package index)"
say "downloading $kernel_pkg and busybox-static"
(cd "$work/debs" && apt-get download -q "$kernel_pkg" busybox-static >/dev/null 2>"$work/apt.log") ||
  die "apt-get download failed: $(tail -n 3 "$work/apt.log")"
dpkg-deb -x "$work/debs/${kernel_pkg}"_*.deb "$work/kernel"
dpkg-deb -x "$work/debs/"busybox-static_*.deb "$work/busybox"
# Debian 12 ships lib/modules; later releases usr/lib/modules. depmod and modprobe
# take the directory above lib/modules.
modbase=$work/kernel
[ -d "$modbase/lib/modules" ] || modbase=$work/kernel/usr
kver=$(ls "$modbase/lib/modules")
[ -f "$work/kernel/boot/vmlinuz-$kver" ] || die "no vmlinuz in $kernel_pkg"

# --- the tree ---------------------------------------------------------------------------
mkdir -p "$rootfs"/{bin,sbin,etc,proc,sys,dev,tmp,run,usr/bin,usr/sbin,lib,lib64}
install -m 0755 "$work/busybox/bin/busybox" "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/sh"
install -m 0755 "$here/init" "$rootfs/init"
install -m 0755 "$here/udhcpc.script" "$rootfs/etc/udhcpc.script"

# copy_exec FILE: a program and the shared libraries it loads, at the same paths.
copy_exec() {
  local file=$1 lib
  install -D -m 0755 "$file" "$rootfs/usr/bin/$(basename "$file")"
  if ldd "$file" | grep -q 'not found'; then
    die "$file needs libraries this machine lacks: $(ldd "$file" | grep 'not found' | tr -s ' \t' ' ')"
  fi
  for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(realpath "$lib")" "$rootfs$lib"
  done
}
copy_exec "$restore_bin"
strip --strip-debug "$rootfs/usr/bin/netreset-restore" 2>/dev/null || true
copy_exec "$(command -v ntfscp)"
copy_exec "$(command -v ntfsls)"

# --- drivers ----------------------------------------------------------------------------
# Network: Intel (e1000e, igb, igc for I225/I226, e1000 as QEMU's default), Realtek
# (r8169; r8152 and cdc_ether for USB-C docks, behind xhci_pci), virtio.
# Disk: AHCI/SATA (and IDE mode: ata_piix, ata_generic), NVMe (and behind Intel
# VMD/RST: vmd), eMMC (sdhci_pci, mmc_block), virtio-blk and virtio-scsi. efivarfs:
# the firmware's variables, whose SecureBoot the restore reports.
modules=(e1000e igb igc e1000 r8169 xhci_pci r8152 cdc_ether virtio_net virtio_pci
  virtio_blk virtio_scsi ahci ata_piix ata_generic sd_mod vmd nvme sdhci_pci mmc_block
  efivarfs)
depmod -b "$modbase" "$kver"
: > "$rootfs/etc/modules.order"
for m in "${modules[@]}"; do
  modprobe -d "$modbase" -S "$kver" --show-depends "$m" 2>"$work/modprobe.log" |
    awk '$1 == "insmod" { print $2 }' || die "modprobe $m: $(cat "$work/modprobe.log")"
done | awk '!seen[$0]++' | while read -r ko; do
  rel=${ko#"$modbase"}
  case "$ko" in
    *.ko.xz) install -D -m 0644 "$ko" "$rootfs$rel"; xz -d "$rootfs$rel"; rel=${rel%.xz} ;;
    *.ko.zst)
      command -v zstd >/dev/null || die "$ko is zstd-compressed: apt-get install zstd"
      install -D -m 0644 "$ko" "$rootfs$rel"; zstd -q -d --rm "$rootfs$rel"; rel=${rel%.zst} ;;
    *) install -D -m 0644 "$ko" "$rootfs$rel" ;;
  esac
  echo "$rel" >> "$rootfs/etc/modules.order"
done
[ -s "$rootfs/etc/modules.order" ] || say "note: every driver is built into $kver"

# --- the output -------------------------------------------------------------------------
install -m 0644 "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
(cd "$rootfs" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 > "$out/initrd.img"
size() { stat -c %s "$1" | awk '{ printf "%.1f MiB", $1 / 1048576 }'; }
say "kernel $kver ($kernel_pkg)"
say "modules: $(wc -l < "$rootfs/etc/modules.order") ($(tr '\n' ' ' < "$rootfs/etc/modules.order" | sed 's#/lib/modules/[^ ]*/##g; s#\.ko##g'))"
printf '%s\t%s\n' "$out/vmlinuz" "$(size "$out/vmlinuz")" "$out/initrd.img" "$(size "$out/initrd.img")"
say "install: copy vmlinuz and initrd.img to restore.dir (default data_dir/restore)"
rm -rf "$work"
