#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the VFIO selftests (static, so the guest needs no libc) and pack the
# guest initramfs: busybox, /init, the modules of $BUILD/obj and the tests.
set -euo pipefail
. "$(dirname "$0")/env.sh"

[ -f "$OBJ/arch/x86/boot/bzImage" ] || die "no kernel built: run tools/overlay/build.sh"
exec 9>"$BUILD/.buildlock"
flock 9
kst=$BUILD/kselftest
stage=$BUILD/initramfs
out=$BUILD/initramfs.cpio.gz

# Upstream VFIO kselftests (and our own, which live beside them).
"${KMAKE[@]}" -s headers
mkdir -p "$kst/vfio"
make -s -C "$SRC/tools/testing/selftests/vfio" O="$kst/vfio" OUTPUT="$kst/vfio" \
	KHDR_INCLUDES="-isystem $OBJ/usr/include" EXTRA_CFLAGS="-static" \
	-j"$JOBS" all >"$kst/vfio.log" 2>&1 ||
	{ tail -n 30 "$kst/vfio.log" >&2; die "building the VFIO kselftests failed"; }

# The migration demo and the migration benchmark, built beside them.
gcc -static -O2 -Wall -Werror -isystem "$OBJ/usr/include" -I"$SRC/tools/include" \
	-I"$SRC/tools/testing/selftests/vfio/lib/include" \
	-o "$kst/vfio/vfio_pci_migrate" "$SRC/tools/testing/selftests/vfio/vfio_pci_migrate.c" ||
	die "building vfio_pci_migrate failed"
gcc -static -O2 -Wall -Werror -pthread -isystem "$OBJ/usr/include" -I"$SRC/tools/include" \
	-I"$SRC/tools/testing/selftests/vfio/lib/include" -o "$kst/vfio/vfio_pci_migration_bench" \
	"$SRC/tools/testing/selftests/vfio/vfio_pci_migration_bench.c" ||
	die "building vfio_pci_migration_bench failed"

rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,opt/tests,lib/overlay}
cp /bin/busybox "$stage/bin/busybox"
cp "$top/tools/overlay/guest/init" "$stage/init"
cp "$top"/tools/overlay/guest/*.sh "$stage/lib/overlay/"
chmod +x "$stage/init"
find "$kst/vfio" -maxdepth 1 -type f -perm -u+x -exec cp {} "$stage/opt/tests/" \;
"${KMAKE[@]}" -s INSTALL_MOD_PATH="$stage" INSTALL_MOD_STRIP=1 DEPMOD=/sbin/depmod \
	modules_install >/dev/null
rm -f "$stage"/lib/modules/*/build "$stage"/lib/modules/*/source
# QEMU 10 for the L2 VMs of plans-qemu.sh (set up by setup.sh), with every
# shared library it loads at its own path, the L2 firmware and the HMP client.
# No data files: the L2 machine loads only our -bios (-L an empty dir).
qemu10=$BUILD/deps/qemu10/usr/bin/qemu-system-x86_64
if [ -x "$qemu10" ]; then
	"$top/tools/overlay/l2/build.sh" "$BUILD/l2" || die "building the L2 firmware failed"
	mkdir -p "$stage/opt/qemu/bin" "$stage/opt/qemu/share"
	cp "$qemu10" "$stage/opt/qemu/bin/"
	cp "$BUILD/l2/l2fw.bin" "$stage/opt/qemu/share/"
	cp "$BUILD/l2/hmp" "$stage/opt/qemu/bin/"
	libs=$(ldd "$qemu10" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p')
	[ -n "$libs" ] || die "ldd found no libraries for $qemu10"
	for l in $libs; do
		mkdir -p "$stage$(dirname "$l")"
		cp -L "$l" "$stage$l"
	done
	# The loader at the path the binary names (PT_INTERP).
	interp=$(readelf -l "$qemu10" | sed -n 's/.*interpreter: \([^]]*\)].*/\1/p')
	[ -e "$stage$interp" ] || { mkdir -p "$stage$(dirname "$interp")" && cp -L "$interp" "$stage$interp"; }
else
	echo "initramfs: no $qemu10 (tools/overlay/setup.sh): plans-qemu.sh will skip"
fi
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet --owner 0:0) |
	gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
echo "initramfs: $out ($(du -h "$out" | cut -f1), tests: $(ls "$stage/opt/tests" | tr '\n' ' '))"
