#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# vm.sh PLAN: boot the test VM (q35 on TCG, intel-iommu with interrupt
# remapping, two ivshmem-plain devices each behind its own pcie-root-port),
# run the guest plan PLAN and collect its TAP stream.
#
# Writes $BUILD/vm/PLAN/{console.log,tap.raw} and, for TAP plans, $TAP_OUT.
# Prints the TAP stream while it arrives and, at the end, one line
# "N passed, M failed[, K skipped]". Exits non-zero when a test failed, none
# ran, the guest panicked or hung (cut off after $VM_TIMEOUT seconds), or it
# powered off before saying it was done; then the end of the console log is
# printed. No QEMU process outlives this script.
#
# Environment: VM_NAME (output folder name, default PLAN), IVSHMEM_SIZE (default 64M),
# IVSHMEM_EXTRA (sizes of more ivshmem-plain devices after the two, each behind
# its own pcie-root-port, e.g. "16M 1G"; default none), IVSHMEM_DOORBELL=1 (one more
# device, an ivshmem-doorbell served by tools/overlay/ivshmem-server.c, which the driver
# must decline; default 0), VM_TIMEOUT (default 1200 s),
# VM_MEM (default 1G), TAP_OUT (default $BUILD/PLAN.tap), VM_QUIET=1 prints
# only the summary, VM_SMP (vCPUs, default 2), VM_KERNEL (default $OBJ/arch/x86/boot/bzImage) and VM_INITRD
# (default $BUILD/initramfs.cpio.gz) boot another kernel or initramfs, e.g. a saved one.
set -euo pipefail
. "$(dirname "$0")/env.sh"

plan=${1:?usage: vm.sh PLAN}
IVSHMEM_SIZE=${IVSHMEM_SIZE:-64M}
IVSHMEM_EXTRA=${IVSHMEM_EXTRA:-}
VM_TIMEOUT=${VM_TIMEOUT:-1200}
VM_MEM=${VM_MEM:-1G}
TAP_OUT=${TAP_OUT:-$BUILD/$plan.tap}
dir=$BUILD/vm/${VM_NAME:-$plan}
kernel=${VM_KERNEL:-$OBJ/arch/x86/boot/bzImage}
initrd=${VM_INITRD:-$BUILD/initramfs.cpio.gz}
[ -f "$kernel" ] && [ -f "$initrd" ] || die "build the kernel and initramfs first"
mkdir -p "$dir"
console=$dir/console.log
raw=$dir/tap.raw
: >"$console"
: >"$raw"

# KVM only where it really works: here /dev/kvm is often a shim that aborts.
accel=tcg
cpu=max
if [ "${VM_KVM:-0}" = 1 ] && [ -w /dev/kvm ]; then
	accel=kvm
	cpu=host
fi

qemu=(qemu-system-x86_64 -machine q35 -accel "$accel" -cpu "$cpu" -smp "${VM_SMP:-2}" -m "$VM_MEM"
	-nodefaults -no-reboot -display none -monitor none
	-device intel-iommu,intremap=on
	-kernel "$kernel" -initrd "$initrd"
	-append "console=ttyS0 panic=-1 oops=panic loglevel=7 overlay.plan=$plan ${VM_APPEND:-}"
	-chardev "file,id=con,path=$console" -serial chardev:con
	-chardev "file,id=tap,path=$raw" -serial chardev:tap)
i=0
for size in "$IVSHMEM_SIZE" "$IVSHMEM_SIZE" $IVSHMEM_EXTRA; do
	qemu+=(-object "memory-backend-ram,id=ivmem$i,size=$size"
		-device "pcie-root-port,id=rp$i,chassis=$((i + 1)),slot=$((i + 1))"
		-device "ivshmem-plain,memdev=ivmem$i,bus=rp$i")
	i=$((i + 1))
done
devices="ivshmem $IVSHMEM_SIZE x2${IVSHMEM_EXTRA:+ + $IVSHMEM_EXTRA}"

spid=
if [ "${IVSHMEM_DOORBELL:-0}" = 1 ]; then
	server=$BUILD/ivshmem-server
	src=$(dirname "$0")/ivshmem-server.c
	if [ ! -x "$server" ] || [ "$src" -nt "$server" ]; then
		gcc -O2 -Wall -Werror -o "$server" "$src" || die "building $server failed"
	fi
	sock=$dir/ivshmem.sock
	rm -f "$sock"
	"$server" "$sock" 1048576 &
	spid=$!
	for _ in $(seq 50); do
		[ -S "$sock" ] && break
		sleep 0.1
	done
	[ -S "$sock" ] || { kill "$spid"; die "ivshmem-server did not start"; }
	sleep 0.2
	qemu+=(-chardev "socket,id=ivdb,path=$sock"
		-device "pcie-root-port,id=rp$i,chassis=$((i + 1)),slot=$((i + 1))"
		-device "ivshmem-doorbell,chardev=ivdb,vectors=1,bus=rp$i")
	devices="$devices + doorbell"
fi

start=$(date +%s)
"${qemu[@]}" </dev/null >"$dir/qemu.log" 2>&1 &
qpid=$!
cleanup() {
	kill -9 "$qpid" 2>/dev/null || true
	[ -z "$spid" ] || kill "$spid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Stream the TAP lines while the guest runs; stop at the deadline.
shown=0
timed_out=0
while kill -0 "$qpid" 2>/dev/null; do
	n=$(wc -l <"$raw")
	if [ "$n" -gt "$shown" ] && [ "${VM_QUIET:-0}" != 1 ]; then
		sed -n "$((shown + 1)),${n}p" "$raw"
	fi
	shown=$n
	if [ $(($(date +%s) - start)) -ge "$VM_TIMEOUT" ]; then
		timed_out=1
		break
	fi
	sleep 0.5
done
cleanup
wait "$qpid" 2>/dev/null || true
trap - EXIT INT TERM
n=$(wc -l <"$raw")
[ "$n" -gt "$shown" ] && [ "${VM_QUIET:-0}" != 1 ] && sed -n "$((shown + 1)),${n}p" "$raw"
secs=$(($(date +%s) - start))

# The TAP document: results renumbered in order, then the plan.
pass=$(grep -cE '^ok [0-9]+ ' "$raw" | tr -d ' ' || true)
skip=$(grep -cE '^ok [0-9]+ .* # SKIP' "$raw" || true)
fail=$(grep -cE '^not ok [0-9]+ ' "$raw" || true)
pass=$((pass - skip))
problem=
if [ $timed_out = 1 ]; then
	problem="guest did not finish within ${VM_TIMEOUT}s: cut off"
elif grep -qE 'Kernel panic|BUG:|Oops' "$console"; then
	problem="guest kernel crashed"
elif ! grep -q '^# guest done' "$raw"; then
	problem="guest stopped before reporting all results"
elif [ $((pass + fail + skip)) = 0 ]; then
	problem="no test ran"
fi
{
	echo "TAP version 13"
	grep -E '^(not )?ok [0-9]+ |^#' "$raw" || true
	[ -n "$problem" ] && echo "not ok $((pass + fail + skip + 1)) vm: $problem" &&
		fail=$((fail + 1))
	echo "1..$((pass + fail + skip))"
} >"$TAP_OUT"
if [ -n "$problem" ]; then
	echo "not ok - vm: $problem"
	echo "---- last 40 lines of the console ($console) ----"
	tail -n 40 "$console"
	echo "----"
	tail -n 5 "$dir/qemu.log"
fi
summary="$pass passed, $fail failed"
[ "$skip" -gt 0 ] && summary="$summary, $skip skipped"
echo "# $plan: ${secs}s in the VM (accel $accel, $devices)" >>"$TAP_OUT"
echo "$summary" >>"$TAP_OUT"
echo "# $plan: ${secs}s in the VM (accel $accel, $devices)"
echo "$summary"
[ "$fail" = 0 ] && [ -z "$problem" ]
