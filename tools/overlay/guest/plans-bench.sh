# SPDX-License-Identifier: GPL-2.0
#
# The migration benchmark (tools/overlay/bench.sh, plan "bench"): runs
# vfio_pci_migration_bench on the ivshmem-plain devices bound to
# ivshmem-vfio-pci, first with the module's default (write tracking on, when
# the driver has the track_writes parameter), then, for contrast, with
# track_writes=0. The output and the table go to the host as TAP comments,
# the merged JSON as one comment line "# BENCH_JSON {...}" that bench.sh
# extracts.
#
# Devices: the first two ivshmem-plain devices (same size) are A and B; of the
# others (IVSHMEM_EXTRA="16M 1G"), the smallest and the largest serve the
# precopy-info latency rows. More options for the program can be given on the
# kernel command line as overlay.bench=-p,5,-n,1000 (commas become spaces).

BENCH_JSON=/tmp/bench.json
BENCH_PARAM=/sys/module/ivshmem_vfio_pci/parameters/track_writes

# bench_has_param: whether ivshmem-vfio-pci has the track_writes parameter.
# Rust module parameters of 7.3 are not in sysfs (perm 0), so look at the
# module's modinfo too.
bench_has_param() {
	[ -e "$BENCH_PARAM" ] && return 0
	modinfo -F parm ivshmem_vfio_pci 2>/dev/null | grep -q '^track_writes:' && return 0
	f=$(find /lib/modules -name 'ivshmem[-_]vfio[-_]pci.ko*' | head -n 1)
	[ -n "$f" ] && grep -q 'parmtype=track_writes:' "$f"
}

# bench_bind BDF...: bind each device to ivshmem-vfio-pci.
bench_bind() {
	for bdf; do
		bind_to "$bdf" ivshmem-vfio-pci || return 1
	done
}

# bench_run ARGS...: run the benchmark; its output goes to the console and,
# as TAP comments, to the host. Succeeds if the program got to its end (it
# exits 1 as well when a resumed device differs: that is a result).
bench_run() {
	echo "### vfio_pci_migration_bench $*"
	timeout "${BENCH_TIMEOUT:-900}" /opt/tests/vfio_pci_migration_bench "$@" >/tmp/bench.out 2>&1
	echo "exit status $?" >>/tmp/bench.out
	while IFS= read -r line; do say "$line"; done </tmp/bench.out
	grep -qE '^vfio_pci_migration_bench: (done|FAILED) in ' /tmp/bench.out
}

plan_bench() {
	opts=
	for arg in $(cat /proc/cmdline); do
		case "$arg" in
		overlay.bench=*) opts=$(echo "${arg#overlay.bench=}" | tr , ' ') ;;
		esac
	done
	set -- $(ivshmem_plain_bdfs)
	if [ $# -lt 4 ]; then
		tap_result "not ok" "bench: 4 ivshmem-plain devices (found $#; IVSHMEM_EXTRA=\"16M 1G\")" ""
		return
	fi
	a=$1 b=$2
	shift 2
	small= large= ssize= lsize=
	for bdf; do
		s=$(bar_size "$bdf" 2)
		if [ -z "$small" ] || [ "$s" -lt "$ssize" ]; then small=$bdf ssize=$s; fi
		if [ -z "$large" ] || [ "$s" -gt "$lsize" ]; then large=$bdf lsize=$s; fi
	done
	tag="[ivshmem-vfio-pci $a $b]"
	if [ "$(bar_size "$a" 2)" != "$(bar_size "$b" 2)" ] || [ "$small" = "$large" ]; then
		tap_result "not ok" "bench: A, B of one size and two more of different sizes $tag" ""
		return
	fi
	say "bench: A $a, B $b ($(($(bar_size "$a" 2) >> 20)) MiB), small $small ($((ssize >> 20)) MiB)," \
		"large $large ($((lsize >> 20)) MiB)"
	all="$a $b $small $large"
	if ! load_vfio || ! modprobe ivshmem_vfio_pci || ! bench_bind $all; then
		tap_result "not ok" "bench: load and bind ivshmem-vfio-pci $tag" ""
		return
	fi

	# The module's default first (tracking on); without the parameter (a
	# driver that does not track), that is the only run.
	if bench_has_param; then
		mode=on
		say "bench: ivshmem-vfio-pci has track_writes (sysfs: $(cat "$BENCH_PARAM" 2>/dev/null ||
			echo "not shown")), loaded with its default (on)"
	else
		mode=absent
		say "bench: ivshmem-vfio-pci has no track_writes parameter: no tracking, tracking-on rows n/a"
	fi
	rm -f "$BENCH_JSON"
	# shellcheck disable=SC2086 # $opts: separate arguments
	bench_run $opts -m $mode -o "$BENCH_JSON" $all
	ran=$?

	if [ $mode = on ]; then
		for bdf in $all; do unbind "$bdf"; done
		if rmmod ivshmem_vfio_pci && modprobe ivshmem_vfio_pci track_writes=0 &&
			bench_bind $all && { [ ! -e "$BENCH_PARAM" ] || [ "$(cat "$BENCH_PARAM")" = N ]; }; then
			say "bench: reloaded ivshmem-vfio-pci with track_writes=0"
			# shellcheck disable=SC2086
			bench_run $opts -m off -s cde -a "$BENCH_JSON" -o "$BENCH_JSON" $all || ran=1
		else
			tap_result "not ok" "bench: reload ivshmem-vfio-pci with track_writes=0 $tag" ""
		fi
	fi

	if [ $ran = 0 ] && [ -s "$BENCH_JSON" ]; then
		tap_result ok "bench: vfio_pci_migration_bench ran $tag" ""
	else
		tap_result "not ok" "bench: vfio_pci_migration_bench ran $tag" ""
	fi
	for m in on off; do
		key=identical
		[ $m = off ] && key=identical_off
		desc="bench: B identical to A after the convergence run, tracking $m $tag"
		if [ $m = on ] && [ $mode = absent ]; then
			tap_result ok "$desc" "SKIP ivshmem-vfio-pci has no track_writes parameter"
		elif grep -q "\"$key\":true" "$BENCH_JSON" 2>/dev/null; then
			tap_result ok "$desc" ""
		else
			tap_result "not ok" "$desc" ""
		fi
	done
	# Section c saw pages resent or dirty_bytes exactly when tracking was on.
	desc="bench: pre-copy resends written pages only with tracking on $tag"
	want='"tracking_observed_off":false'
	[ $mode = on ] && want='"tracking_observed":true.*"tracking_observed_off":false'
	if grep -q "$want" "$BENCH_JSON" 2>/dev/null; then
		tap_result ok "$desc" ""
	else
		tap_result "not ok" "$desc" ""
	fi
	[ -s "$BENCH_JSON" ] && say "BENCH_JSON $(cat "$BENCH_JSON")"
	for bdf in $all; do unbind "$bdf"; done
	check_kernel_log "bench"
}
