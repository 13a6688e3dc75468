#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# bench.sh: the migration benchmark. Boots the test VM with two ivshmem-plain
# devices of IVSHMEM_SIZE (A, B) and two more of 16M and 1G (precopy-info
# latency), runs the guest plan "bench" (tools/overlay/guest/plans-bench.sh:
# vfio_pci_migration_bench with ivshmem-vfio-pci's default, then with
# track_writes=0), writes the results to $BENCH_OUT (default
# $BUILD/bench.json) and prints the table.
#
# Environment: BENCH_OUT, BENCH_ARGS (more options for the program, e.g.
# "-p 5 -n 1000"), VM_TIMEOUT (default 1500 s), VM_QUIET (default 1: only the
# summary while it runs; 0 streams the TAP lines), and vm.sh's VM_NAME,
# IVSHMEM_SIZE, VM_MEM, VM_KVM. Needs the kernel and initramfs built.
# Exits non-zero when the VM run failed or no results came back.
set -euo pipefail
. "$(dirname "$0")/env.sh"

BENCH_OUT=${BENCH_OUT:-$BUILD/bench.json}
export IVSHMEM_EXTRA=${IVSHMEM_EXTRA:-16M 1G}
export VM_TIMEOUT=${VM_TIMEOUT:-1500}
export VM_QUIET=${VM_QUIET:-1}
export TAP_OUT=${TAP_OUT:-$BUILD/bench.tap}
append=${VM_APPEND:-}
if [ -n "${BENCH_ARGS:-}" ]; then
	# One kernel command line word: the guest turns the commas back into spaces.
	append="$append overlay.bench=$(echo "$BENCH_ARGS" | tr -s ' ' ,)"
fi
export VM_APPEND=$append

echo "bench: booting the VM (ivshmem ${IVSHMEM_SIZE:-64M} x2 + $IVSHMEM_EXTRA, up to ${VM_TIMEOUT}s)"
rc=0
"$top/tools/overlay/vm.sh" bench || rc=$?

# The guest's serial lines end in CR LF.
tap=$(tr -d '\r' <"$TAP_OUT")
json=$(sed -n 's/^# BENCH_JSON //p' <<<"$tap" | tail -n 1)
if [ -z "$json" ]; then
	echo "bench: no results in $TAP_OUT" >&2
	grep -E '^not ok ' "$TAP_OUT" >&2 || true
	exit 1
fi
# Add what only the host knows: VM time and accelerator.
vm=$(sed -n 's/^# bench: \([0-9]*\)s in the VM (accel \([a-z]*\).*/\1 \2/p' <<<"$tap" | tail -n 1)
if [ -n "$vm" ]; then
	set -- $vm
	json="${json%\}},\"vm_seconds\":$1,\"accel\":\"$2\",\"host_cpus\":$(nproc)}"
fi
mkdir -p "$(dirname "$BENCH_OUT")"
echo "$json" >"$BENCH_OUT"

# The last table the guest printed (each run prints the results known so far).
awk '/^# ---- vfio_pci_migration_bench ----$/ { t = ""; on = 1 }
	on { t = t substr($0, 3) "\n" }
	/^# ---- end ----$/ { on = 0; last = t }
	END { printf "%s", last }' <<<"$tap"
grep -E '^(not )?ok [0-9]+ ' <<<"$tap" | grep -E ' bench: |vm: ' || true
tail -n 2 <<<"$tap"
echo "bench: results in $BENCH_OUT"
exit "$rc"
