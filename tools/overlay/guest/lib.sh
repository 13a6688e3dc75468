# SPDX-License-Identifier: GPL-2.0
#
# Guest helpers (busybox sh): find and bind devices, run tests, emit TAP on fd 3.

TAP_N=0

# tap_result "ok"|"not ok" DESCRIPTION DIRECTIVE
tap_result() {
	TAP_N=$((TAP_N + 1))
	if [ -n "$3" ]; then
		echo "$1 $TAP_N $2 # $3" >&3
	else
		echo "$1 $TAP_N $2" >&3
	fi
}

# The ivshmem-plain devices (0x1af4:0x1110 without the MSI-X BAR1 that
# ivshmem-doorbell has), by BDF.
ivshmem_plain_bdfs() {
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ] || continue
		bar1=$(sed -n 2p "$d/resource")
		case "$bar1" in
		"0x0000000000000000 0x0000000000000000 "*) echo "${d##*/}" ;;
		esac
	done
}

ivshmem_doorbell_bdfs() {
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ] || continue
		bar1=$(sed -n 2p "$d/resource")
		case "$bar1" in
		"0x0000000000000000 0x0000000000000000 "*) ;;
		*) echo "${d##*/}" ;;
		esac
	done
}

driver_of() {
	[ -L "/sys/bus/pci/devices/$1/driver" ] &&
		basename "$(readlink "/sys/bus/pci/devices/$1/driver")"
}

# dev_driver NAME: the driver of a PCI function (BDF) or an mdev (UUID).
dev_driver() {
	for bus in pci mdev; do
		if [ -L "/sys/bus/$bus/devices/$1/driver" ]; then
			basename "$(readlink "/sys/bus/$bus/devices/$1/driver")"
			return
		fi
	done
}

# bind_to BDF DRIVER: rebind through driver_override, as VFIO users do.
bind_to() {
	cur=$(driver_of "$1")
	[ "$cur" = "$2" ] && return 0
	[ -n "$cur" ] && echo "$1" >"/sys/bus/pci/drivers/$cur/unbind"
	echo "$2" >"/sys/bus/pci/devices/$1/driver_override"
	echo "$1" >/sys/bus/pci/drivers_probe 2>/dev/null
	[ "$(driver_of "$1")" = "$2" ]
}

unbind() {
	cur=$(driver_of "$1")
	[ -n "$cur" ] && echo "$1" >"/sys/bus/pci/drivers/$cur/unbind"
	echo >"/sys/bus/pci/devices/$1/driver_override"
}

bar_size() {
	sed -n "$(($2 + 1))p" "/sys/bus/pci/devices/$1/resource" |
		(read -r start end _; [ "$end" = 0x0000000000000000 ] && echo 0 ||
			echo $((end - start + 1)))
}

# emit_results FILE PREFIX SUFFIX: FILE has one "STATUS<tab>NAME[ # DIRECTIVE]"
# line per result; emit each as our TAP line "PREFIX NAME SUFFIX". Sets nres
# and nfail.
emit_results() {
	nres=0
	nfail=0
	while IFS="$(printf '\t')" read -r status rest; do
		nres=$((nres + 1))
		name=${rest%% # *}
		directive=
		[ "$name" != "$rest" ] && directive=${rest#* # }
		[ "$status" = "not ok" ] && nfail=$((nfail + 1))
		tap_result "$status" "$2$name$3" "$directive"
	done <"$1"
}

# run_kselftest BINARY DEVICES [ARGS...]: run a kselftest_harness program
# against DEVICES (a BDF or mdev UUID, or several separated by spaces, passed
# as separate arguments) and turn each of its result lines into one of ours,
# named after the program, the test and the driver of the first device.
run_kselftest() {
	prog=$1
	bdf=$2
	shift 2
	drv=$(dev_driver "${bdf%% *}")
	tag="[${drv:-no driver} $bdf]"
	out=/tmp/$prog.out
	echo "### $prog $* $bdf ($drv)"
	# shellcheck disable=SC2086 # $bdf: one argument per device
	timeout "${TEST_TIMEOUT:-600}" "/opt/tests/$prog" "$@" $bdf >"$out" 2>&1
	rc=$?
	cat "$out"
	# Top-level harness results only ("ok N name" / "not ok N name # SKIP ...").
	sed -n 's/^\(not ok\|ok\) [0-9]\+ \(.*\)$/\1\t\2/p' "$out" >/tmp/results
	emit_results /tmp/results "$prog: " " $tag"
	if [ $rc = 4 ] && [ $nres = 0 ]; then
		tap_result ok "$prog $tag" "SKIP whole program skipped"
	elif [ $rc != 0 ] && [ $nfail = 0 ]; then
		tap_result "not ok" "$prog: exit status $rc $tag" ""
	elif [ $nres = 0 ]; then
		tap_result "not ok" "$prog: no results $tag" ""
	fi
}

# check_kernel_log NAME: fail if the kernel logged a warning, oops or leak.
check_kernel_log() {
	bad=$(dmesg | grep -E 'WARNING:|BUG:|Oops|general protection|kmemleak:.*new suspected|Call Trace' | head -n 5)
	if [ -n "$bad" ]; then
		echo "$bad"
		tap_result "not ok" "$1: kernel log clean" ""
	else
		tap_result ok "$1: kernel log clean" ""
	fi
}

# Leak checking with kmemleak, where the kernel has it: forget what boot left,
# then report what the tests leaked.
start_leak_check() {
	mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	[ -w /sys/kernel/debug/kmemleak ] && echo clear >/sys/kernel/debug/kmemleak
}

check_leaks() {
	if [ ! -w /sys/kernel/debug/kmemleak ]; then
		tap_result ok "$1: no kmemleak report" "SKIP kernel without kmemleak"
		return
	fi
	# Objects younger than 5 s are never reported.
	sleep 6
	echo scan >/sys/kernel/debug/kmemleak
	echo scan >/sys/kernel/debug/kmemleak
	n=$(grep -c 'unreferenced object' /sys/kernel/debug/kmemleak)
	if [ "$n" = 0 ]; then
		tap_result ok "$1: no kmemleak report" ""
	else
		head -n 40 /sys/kernel/debug/kmemleak
		tap_result "not ok" "$1: no kmemleak report ($n suspected leaks)" ""
	fi
}

# check_kunit SUITE: turn the results of a KUnit suite that ran at boot into
# TAP lines; a suite that did not run is a failure.
check_kunit() {
	# From the suite's header to its own (unindented) result line; the
	# test results are the indented ones.
	dmesg | sed -n "/# Subtest: $1\$/,/^\[[^]]*\] \(not \)\?ok [0-9]\+ $1\$/p" |
		sed -n 's/^\[[^]]*\]  \+\(not ok\|ok\) [0-9]\+ \(.*\)$/\1\t\2/p' >/tmp/kunit
	emit_results /tmp/kunit "kunit: $1." ""
	[ $nres -gt 0 ] || tap_result "not ok" "kunit: $1 did not run" ""
}
