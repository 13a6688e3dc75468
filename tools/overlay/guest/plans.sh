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
	for drv in vfio-pci; do
		if ! bind_to "$a" "$drv"; then
			tap_result "not ok" "guest: bind $a to $drv" ""
			continue
		fi
		for t in $PEER_TESTS; do
			run_kselftest "$t" "$a"
		done
		unbind "$a"
	done
	check_kernel_log "check"
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
	load_vfio || { tap_result "not ok" "demo: load vfio-pci" ""; return; }
	say "== binding"
	for bdf in $(ivshmem_plain_bdfs); do
		if bind_to "$bdf" vfio-pci; then
			grp=$(basename "$(readlink /sys/bus/pci/devices/$bdf/iommu_group)")
			say "$bdf -> $(driver_of "$bdf"), /dev/vfio/$grp," \
				"/dev/vfio/devices/$(ls /sys/bus/pci/devices/$bdf/vfio-dev)"
			tap_result ok "demo: $bdf bound [$(driver_of "$bdf") $bdf]" ""
		else
			tap_result "not ok" "demo: $bdf bound [vfio-pci $bdf]" ""
		fi
	done
	ls -l /dev/vfio /dev/vfio/devices
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
