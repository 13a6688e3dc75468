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
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet --owner 0:0) |
	gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
echo "initramfs: $out ($(du -h "$out" | cut -f1), tests: $(ls "$stage/opt/tests" | tr '\n' ' '))"
