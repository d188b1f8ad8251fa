#!/usr/bin/env bash
# The end-to-end suite (root): real TFTP clients, QEMU stations PXE-booting in
# network namespaces with dnsmasq as the school's DHCP server, image restores checked
# with mtools and ntfs-3g, and a whole reset of a QEMU station through the restore
# environment (build it first: images/restore-env/build.sh). Each test is a script
# that exits 0 on success; this runner counts them. Each script has a time limit
# (E2E_LIMIT seconds, default 900; SIGTERM, then SIGKILL 15 s later), so one hung
# step fails its test instead of eating the CI budget.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tests=(
  "tftp_clients.sh"
  "pxe_boot.sh bios"
  "pxe_boot.sh uefi"
  "restore.sh"
  "peers.sh"
  "vm_reset.sh bios"
  "vm_reset.sh uefi"
  "capture.sh"
  "secure_boot.sh"
  "package.sh"
  "api.sh"
  "dashboard.sh"
)
limit=${E2E_LIMIT:-900}
passed=0 failed=0 n=0
for t in "${tests[@]}"; do
  n=$((n + 1))
  echo "=== e2e: $t"
  start=$SECONDS
  # shellcheck disable=SC2086
  if E2E_ID=$(( ($$ * 8 + n) % 65536 )) timeout --kill-after=15 "$limit" bash "$here"/$t; then
    passed=$((passed + 1)); echo "=== ok: $t ($((SECONDS - start)) s)"
  else
    rc=$?
    [ "$rc" -eq 124 ] && echo "=== $t: over its limit of $limit s, stopped"
    failed=$((failed + 1)); echo "=== FAILED: $t ($((SECONDS - start)) s)"
  fi
done
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
