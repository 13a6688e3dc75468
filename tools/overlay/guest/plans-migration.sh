# SPDX-License-Identifier: GPL-2.0
#
# The VFIO migration uAPI test (vfio_pci_migration_test): against two mdevs of
# the mtty sample driver, the upstream C reference, and, when it is built,
# against the two ivshmem-plain devices bound to ivshmem-vfio-pci.

MTTY_TYPE=/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2

# mtty_create: print the UUID of a new two-port mtty mdev.
mtty_create() {
	uuid=$(cat /proc/sys/kernel/random/uuid)
	echo "$uuid" >"$MTTY_TYPE/create" && echo "$uuid"
}

mdev_remove() {
	[ -e "/sys/bus/mdev/devices/$1/remove" ] &&
		echo 1 >"/sys/bus/mdev/devices/$1/remove"
}

# Called by the check plan; emits TAP on fd 3 like run_kselftest.
run_migration_tests() {
	modprobe vfio_iommu_type1 2>/dev/null
	if ! modprobe mtty || [ ! -d "$MTTY_TYPE" ]; then
		tap_result "not ok" "guest: mtty loaded ($MTTY_TYPE)" ""
	else
		u1=$(mtty_create)
		u2=$(mtty_create)
		if [ -n "$u1" ] && [ -n "$u2" ]; then
			run_kselftest vfio_pci_migration_test "$u1 $u2"
		else
			tap_result "not ok" "guest: create two mtty mdevs [mtty]" ""
		fi
		for u in $u1 $u2; do
			mdev_remove "$u" ||
				tap_result "not ok" "guest: remove mdev $u [mtty $u]" ""
		done
		rmmod mtty 2>/dev/null
	fi

	set -- $(ivshmem_plain_bdfs)
	if [ $# -lt 2 ] || ! modprobe ivshmem-vfio-pci 2>/dev/null; then
		tap_result ok "vfio_pci_migration_test [ivshmem-vfio-pci]" \
			"SKIP ivshmem-vfio-pci not built or fewer than two ivshmem-plain devices"
		return
	fi
	if bind_to "$1" ivshmem-vfio-pci && bind_to "$2" ivshmem-vfio-pci; then
		TEST_TIMEOUT=${TEST_TIMEOUT:-1100} run_kselftest vfio_pci_migration_test "$1 $2"
	else
		tap_result "not ok" "guest: bind $1 $2 to ivshmem-vfio-pci" ""
	fi
	unbind "$1"
	unbind "$2"
}

# tools/overlay/vm.sh migration_dev
plan_migration_dev() {
	run_migration_tests
	check_kernel_log "migration_dev"
}
