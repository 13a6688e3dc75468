# SPDX-License-Identifier: GPL-2.0
#
# Rust VFIO live-migration overlay on Linux 7.3.
#
#   make demo     set up, build, boot the VM, bind the devices, show the result
#   make check    set up, build, run the tests in the VM; TAP in build/check.tap
#                 and build/check-qemu.tap
#   make bench    set up, build, run the migration benchmark in the VM; build/bench.json
#
# Everything is built in build/ (ignored by git, reused between runs).

SHELL		:= /bin/bash
BUILD		?= $(CURDIR)/build
export BUILD
OVERLAY		:= tools/overlay
IVSHMEM_SIZE	?= 64M
export IVSHMEM_SIZE

.PHONY: all setup kernel initramfs check demo bench check-harness clippy rustfmt \
	rustfmtcheck rustdoc clean distclean help

all: initramfs

help:
	@sed -n 's/^#   //p' Makefile

setup:
	@$(OVERLAY)/setup.sh

kernel: setup
	@$(OVERLAY)/build.sh

initramfs: kernel
	@$(OVERLAY)/initramfs.sh

# Two boots: the uAPI and driver tests, then QEMU 10 as the migration client
# (L2 VMs inside the guest; a 1-vCPU guest, see tools/overlay/guest/plans-qemu.sh).
check: initramfs
	@IVSHMEM_DOORBELL=1 VM_APPEND="overlay.qemu=0 $(VM_APPEND)" TAP_OUT=$(BUILD)/check.tap \
		$(OVERLAY)/vm.sh check
	@VM_SMP=1 IVSHMEM_EXTRA=16M TAP_OUT=$(BUILD)/check-qemu.tap $(OVERLAY)/vm.sh qemu

demo: initramfs
	@TAP_OUT=$(BUILD)/demo.tap $(OVERLAY)/vm.sh demo

bench: initramfs
	@$(OVERLAY)/bench.sh

# The harness must fail on a failing guest test, a hung guest and a guest
# panic, and it must cut a hung guest off in bounded time.
check-harness: initramfs
	@$(OVERLAY)/check-harness.sh

clippy: setup
	@$(OVERLAY)/build.sh CLIPPY=1

# Our Rust files are links in the base tree, which the kernel's own rustfmt
# targets skip: format them here, with the tree's configuration.
RUST_FILES	= $(shell git ls-files -co --exclude-standard '*.rs')
RUSTFMT_CMD	= /usr/bin/rustfmt --edition 2021 --config-path $(BUILD)/src/linux/.rustfmt.toml

rustfmtcheck: setup
	@$(RUSTFMT_CMD) --check $(RUST_FILES) && echo "rustfmt: $(words $(RUST_FILES)) files clean"

rustfmt: setup
	@$(RUSTFMT_CMD) $(RUST_FILES)

rustdoc: kernel
	@. $(OVERLAY)/env.sh && "$${KMAKE[@]}" rustdoc

clean:
	rm -rf $(BUILD)/obj $(BUILD)/kselftest $(BUILD)/initramfs* $(BUILD)/vm $(BUILD)/*.tap \
		$(BUILD)/bench.json

distclean:
	rm -rf $(BUILD)
