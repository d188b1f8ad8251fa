#!/usr/bin/env bash
# The end-to-end suite (root): real TFTP clients, QEMU stations PXE-booting in
# network namespaces with dnsmasq as the school's DHCP server, image restores checked
# with mtools and ntfs-3g, and a whole reset of a QEMU station through the restore
# environment (build it first: images/restore-env/build.sh). Each test is a script
# that exits 0 on success; this runner counts them.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tests=(
  "tftp_clients.sh"
  "pxe_boot.sh bios"
  "pxe_boot.sh uefi"
  "restore.sh"
  "vm_reset.sh bios"
  "vm_reset.sh uefi"
)
passed=0 failed=0 n=0
for t in "${tests[@]}"; do
  n=$((n + 1))
  echo "=== e2e: $t"
  start=$SECONDS
  # shellcheck disable=SC2086
  if E2E_ID=$(( ($$ * 8 + n) % 65536 )) bash "$here"/$t; then
    passed=$((passed + 1)); echo "=== ok: $t ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1)); echo "=== FAILED: $t ($((SECONDS - start)) s)"
  fi
done
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
