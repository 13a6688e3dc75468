# SPDX-License-Identifier: GPL-2.0
#
# Test plans the VM can run, chosen by overlay.plan= on the kernel command line.

# The upstream VFIO kselftests that every driver under test must pass.
PEER_TESTS="vfio_pci_device_test vfio_dma_mapping_test vfio_dma_mapping_mmio_test vfio_iommufd_setup_test"

load_vfio() {
	modprobe vfio_iommu_type1 && modprobe vfio_pci
}

# make check
plan_check() {
	start_leak_check
	check_kunit rust_vfio_migration
	check_kunit rust_vfio_dirty
	echo 16 >/proc/sys/vm/nr_hugepages
	set -- $(ivshmem_plain_bdfs)
	if [ $# -lt 1 ]; then
		tap_result "not ok" "guest: no ivshmem-plain device found" ""
		return
	fi
	a=$1
	if load_vfio; then
		tap_result ok "guest: vfio-pci loaded" ""
	else
		tap_result "not ok" "guest: vfio-pci loaded" ""
		return
	fi
	if modprobe ivshmem_vfio_pci; then
		tap_result ok "guest: ivshmem-vfio-pci loaded" ""
	else
		tap_result "not ok" "guest: ivshmem-vfio-pci loaded" ""
	fi
	check_override_only "$a" ivshmem-vfio-pci
	check_declines_doorbell
	for drv in vfio-pci ivshmem-vfio-pci; do
		if ! bind_to "$a" "$drv"; then
			tap_result "not ok" "guest: bind $a to $drv" ""
			continue
		fi
		for t in $PEER_TESTS; do
			run_kselftest "$t" "$a"
		done
		unbind "$a"
	done
	run_migration_tests
	bind_cycles "$a" ivshmem-vfio-pci ivshmem_vfio_pci 20
	check_leaks "check"
	check_kernel_log "check"
}

# check_override_only BDF DRIVER: a VFIO variant driver must not bind a
# device by ID alone, only through driver_override.
check_override_only() {
	unbind "$1"
	echo "$1" >/sys/bus/pci/drivers_probe 2>/dev/null
	if [ "$(driver_of "$1")" = "$2" ]; then
		tap_result "not ok" "$2: binds only through driver_override [$2 $1]" ""
	else
		tap_result ok "$2: binds only through driver_override [$2 $1]" ""
	fi
	unbind "$1"
}

# check_declines_doorbell: ivshmem-vfio-pci must refuse ivshmem-doorbell (MSI-X in
# BAR1, interrupts between peers), even through driver_override, and say why.
check_declines_doorbell() {
	set -- $(ivshmem_doorbell_bdfs)
	name="ivshmem-vfio-pci: declines ivshmem-doorbell"
	if [ $# -lt 1 ]; then
		tap_result ok "$name [ivshmem-vfio-pci]" "SKIP no ivshmem-doorbell device (IVSHMEM_DOORBELL=1)"
		return
	fi
	msg="$1: ivshmem-doorbell (MSI-X BAR1) is not supported"
	before=$(dmesg | grep -c "$msg")
	bind_to "$1" ivshmem-vfio-pci
	after=$(dmesg | grep -c "$msg")
	if [ -z "$(driver_of "$1")" ] && [ "$after" -gt "$before" ]; then
		tap_result ok "$name [ivshmem-vfio-pci $1]" ""
	else
		say "driver: '$(driver_of "$1")', messages before/after: $before/$after"
		tap_result "not ok" "$name [ivshmem-vfio-pci $1]" ""
	fi
	unbind "$1"
}

# bind_cycles BDF DRIVER MODULE N: N rounds of load, bind, open and close
# through the cdev/iommufd and the group/container paths, unbind, unload.
bind_cycles() {
	bdf=$1 drv=$2 mod=$3 n=$4
	i=0
	bad=
	unbind "$bdf"
	rmmod "$mod" 2>/dev/null
	while [ $i -lt "$n" ]; do
		i=$((i + 1))
		modprobe "$mod" || { bad="cycle $i: modprobe"; break; }
		bind_to "$bdf" "$drv" || { bad="cycle $i: bind"; break; }
		/opt/tests/vfio_pci_device_test -t config_space_read_write "$bdf" >/tmp/cycle.out 2>&1 ||
			{ bad="cycle $i: open/close through cdev/iommufd"; break; }
		/opt/tests/vfio_dma_mapping_test -v vfio_type1v2_iommu_anonymous -t dma_map_unmap "$bdf" \
			>/tmp/cycle.out 2>&1 || { bad="cycle $i: open/close through group/container"; break; }
		unbind "$bdf"
		rmmod "$mod" || { bad="cycle $i: rmmod"; break; }
	done
	if [ -n "$bad" ]; then
		cat /tmp/cycle.out
		tap_result "not ok" "$drv: $n cycles of load, bind, open, close, unbind, unload ($bad) [$drv $bdf]" ""
	else
		tap_result ok "$drv: $n cycles of load, bind, open, close, unbind, unload [$drv $bdf]" ""
	fi
}

# say TEXT: show TEXT on the console and, as a TAP comment, to the host.
say() {
	echo "$*"
	echo "# $*" >&3
}

# make demo
plan_demo() {
	say "== devices"
	for bdf in $(ivshmem_plain_bdfs); do
		say "ivshmem-plain $bdf: BAR0 $(bar_size "$bdf" 0) bytes, BAR2 $(bar_size "$bdf" 2) bytes," \
			"IOMMU group $(basename "$(readlink /sys/bus/pci/devices/$bdf/iommu_group)")," \
			"reset: $(cat /sys/bus/pci/devices/$bdf/reset_method 2>/dev/null)"
	done
	for bdf in $(ivshmem_doorbell_bdfs); do
		say "ivshmem-doorbell $bdf: not a migration target"
	done
	load_vfio && modprobe ivshmem_vfio_pci ||
		{ tap_result "not ok" "demo: load ivshmem-vfio-pci" ""; return; }
	say "== binding"
	for bdf in $(ivshmem_plain_bdfs); do
		if bind_to "$bdf" ivshmem-vfio-pci; then
			grp=$(basename "$(readlink /sys/bus/pci/devices/$bdf/iommu_group)")
			say "$bdf -> $(driver_of "$bdf"), /dev/vfio/$grp," \
				"/dev/vfio/devices/$(ls /sys/bus/pci/devices/$bdf/vfio-dev)"
			tap_result ok "demo: $bdf bound [$(driver_of "$bdf") $bdf]" ""
		else
			tap_result "not ok" "demo: $bdf bound [ivshmem-vfio-pci $bdf]" ""
		fi
	done
	dmesg | grep 'ivshmem-vfio-pci.*shared memory' | while read -r line; do say "dmesg: $line"; done
	set -- $(ivshmem_plain_bdfs)
	say "== migrating $1 -> $2"
	/opt/tests/vfio_pci_migrate -s 7 "$1" "$2" >/tmp/migrate.out 2>&1
	rc=$?
	while read -r line; do say "$line"; done </tmp/migrate.out
	if [ $rc = 0 ]; then
		tap_result ok "demo: migrate $1 -> $2, destination identical [ivshmem-vfio-pci $1 $2]" ""
	else
		tap_result "not ok" "demo: migrate $1 -> $2, destination identical [ivshmem-vfio-pci $1 $2]" ""
	fi
	check_kernel_log "demo"
}

# Harness self-checks (make check-harness): each must make the run fail.
plan_harness_fail() {
	tap_result ok "harness: a passing test" ""
	tap_result "not ok" "harness: a deliberately failing test" ""
}

plan_harness_hang() {
	tap_result ok "harness: about to hang" ""
	while :; do sleep 3600; done
}

plan_harness_panic() {
	tap_result ok "harness: about to panic" ""
	echo c >/proc/sysrq-trigger
	sleep 60
}
