#!/usr/bin/env bash
# What importing a qcow2 golden image costs next to importing the same disk raw:
# `netreset image import` of a 1 GiB disk (half noise, half zeros, in 64 MiB stripes)
# as raw, as qcow2 and as compressed qcow2, timed with hyperfine. The qcow2 imports go
# through `qemu-img convert` to a sparse raw scratch file.
# Usage: tests/bench/qcow2_import.sh [RUNS]   (default 3)
source "$(dirname "$0")/../e2e/lib.sh"
runs=${1:-3}
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
need hyperfine qemu-img python3
(cd "$E2E_ROOT" && cargo build -q --release -p orchestrator --bin netreset)
NETRESET=$E2E_ROOT/target/release/netreset
W=$E2E_ROOT/target/bench-qcow2
rm -rf "$W" && mkdir -p "$W/tftp"
defer "rm -rf $W"
striped_image "$W/disk.raw" 1
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/disk.qcow2"
qemu-img convert -c -f raw -O qcow2 "$W/disk.raw" "$W/disk-c.qcow2"
printf 'data_dir = "%s/data"\n[dhcp]\nmode = "off"\n[tftp]\nroot = "%s/tftp"\n' "$W" "$W" > "$W/netreset.toml"
cmds=()
for f in disk.raw disk.qcow2 disk-c.qcow2; do
  cmds+=("$NETRESET image --config $W/netreset.toml import $W/$f --name x")
done
hyperfine --runs "$runs" --prepare "rm -rf $W/data" --export-markdown "$W/results.md" "${cmds[@]}" >&2
sed "s|$W/||g; s|$NETRESET|netreset|g" "$W/results.md"
ls -l "$W"/disk* | awk '{print $5, $9}' | sed "s|$W/||"
