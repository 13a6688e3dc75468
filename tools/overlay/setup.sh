#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Set up everything the overlay needs on a fresh Debian 12 machine, idempotently:
#   1. Debian packages (toolchain, QEMU, busybox for the guest),
#   2. bindgen-cli from crates.io into $BUILD/deps,
#   3. the Linux 7.3 base tree from Debian's linux-source-7.3 (trixie-backports),
#      with patches/*.patch applied (checked to apply without fuzz) and our files
#      linked in at their kernel paths.
# Each step is skipped when already done. A missing piece stops the run with
# one line that names it.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$top/build}
BASE_PKG=${BASE_PKG:-linux-source-7.3}
BASE_SUITE=${BASE_SUITE:-trixie-backports}
BINDGEN_VERSION=${BINDGEN_VERSION:-0.73.2}
deps=$BUILD/deps
src=$BUILD/src/linux

die() { echo "setup: $*" >&2; exit 1; }
log() { echo "setup: $*"; }

# ---------------------------------------------------------------- packages
pkgs=(
	rustc-web rust-web-src cargo-web rust-web-clippy rustfmt-web
	libclang1-22 libclang-common-22-dev
	gcc make flex bison bc libelf-dev libssl-dev cpio kmod xz-utils
	qemu-system-x86 busybox-static python3 patch libc6-dev uuid-dev
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	[ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
	apt-get update -qq >/dev/null || die "apt-get update failed"
	for p in "${missing[@]}"; do
		apt-cache show "$p" >/dev/null 2>&1 ||
			die "Debian package '$p' is not available from the configured apt sources"
	done
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >"$BUILD.apt.log" 2>&1 ||
		die "apt-get install of ${missing[*]} failed (see $BUILD.apt.log)"
	rm -f "$BUILD.apt.log"
fi
[ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] ||
	die "rustc-web did not provide /usr/bin/rustc with its library sources"

# ---------------------------------------------------------------- bindgen
mkdir -p "$deps"
if ! "$deps/bin/bindgen" --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
	log "installing bindgen-cli $BINDGEN_VERSION (about 75 s)"
	command -v cargo >/dev/null || die "no cargo to install bindgen-cli with"
	cargo install -q bindgen-cli --locked --version "$BINDGEN_VERSION" --root "$deps" \
		>"$deps/bindgen.log" 2>&1 ||
		die "cargo install bindgen-cli $BINDGEN_VERSION failed (see $deps/bindgen.log)"
fi

# ---------------------------------------------------------------- base tree
# A private apt configuration: the foreign suite is only used to download
# the source package, never added to the system's sources.
aptdir=$deps/apt
aptopts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o Dir::Etc::SourceParts=/dev/null
	-o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache"
	-o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
patch_sum=$(shopt -s nullglob; cat /dev/null "$top"/patches/*.patch | sha256sum | cut -c1-16)
stamp=$BUILD/src/.stamp
want_stamp="$BASE_PKG $patch_sum"
# Never swap the tree under a running build.
mkdir -p "$BUILD"
exec 9>"$BUILD/.buildlock"
flock 9
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
	deb=$(ls "$aptdir"/debs/"${BASE_PKG}"_*.deb 2>/dev/null | tail -n1 || true)
	if [ -z "$deb" ]; then
		log "downloading $BASE_PKG from Debian $BASE_SUITE (about 170 MB)"
		mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/debs"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
			"http://deb.debian.org/debian $BASE_SUITE main" >"$aptdir/sources.list"
		apt-get "${aptopts[@]}" -qq update >/dev/null 2>&1 ||
			die "cannot read the Debian suite $BASE_SUITE (apt-get update failed)"
		ver=$(apt-cache "${aptopts[@]}" show "$BASE_PKG" 2>/dev/null |
			sed -n 's/^Version: //p' | head -n1)
		[ -n "$ver" ] || die "Debian package $BASE_PKG is not in $BASE_SUITE" \
			"(found: $(apt-cache "${aptopts[@]}" search --names-only '^linux-source-[0-9]' |
			cut -d' ' -f1 | tr '\n' ' '))"
		(cd "$aptdir/debs" && apt-get "${aptopts[@]}" -qq download "$BASE_PKG=$ver") ||
			die "download of $BASE_PKG $ver failed"
		deb=$(ls "$aptdir"/debs/"${BASE_PKG}"_*.deb | tail -n1)
	fi
	log "unpacking $(basename "$deb")"
	rm -rf "$BUILD/src" "$aptdir/x"
	mkdir -p "$BUILD/src" "$aptdir/x"
	dpkg-deb -x "$deb" "$aptdir/x"
	tarball=$(ls "$aptdir"/x/usr/src/linux-source-*.tar.xz | head -n1)
	[ -f "$tarball" ] || die "$deb holds no linux-source-*.tar.xz"
	tar -C "$BUILD/src" -xf "$tarball"
	rm -rf "$aptdir/x"
	mv "$BUILD"/src/linux-source-* "$src"
	grep -q '^VERSION = 7$' "$src/Makefile" && grep -q '^PATCHLEVEL = 3$' "$src/Makefile" ||
		die "$BASE_PKG did not unpack a 7.3 tree"
	for p in "$top"/patches/*.patch; do
		[ -e "$p" ] || continue
		patch -d "$src" -p1 -F0 -s --dry-run <"$p" >/dev/null ||
			die "patch $(basename "$p") does not apply cleanly to $BASE_PKG"
		patch -d "$src" -p1 -F0 -s <"$p"
	done
	echo "$want_stamp" >"$stamp"
fi

# ---------------------------------------------------------------- overlay
# Link every file we carry at its kernel path. Links are listed in a
# manifest so that files removed from the overlay disappear from the tree.
manifest=$BUILD/src/.overlay-links
if [ -f "$manifest" ]; then
	while read -r f; do
		[ -L "$src/$f" ] && [ ! -e "$src/$f" ] && rm -f "$src/$f"
	done <"$manifest"
fi
(cd "$top" && git ls-files -co --exclude-standard -- drivers rust tools/testing Documentation \
	samples kernel/configs include 2>/dev/null || true) | sort -u >"$manifest.new"
while read -r f; do
	[ -f "$top/$f" ] || continue
	if [ -e "$src/$f" ] && [ ! -L "$src/$f" ]; then
		die "overlay file $f would replace an upstream file: carry a patch instead"
	fi
	mkdir -p "$src/$(dirname "$f")"
	ln -sfn "$top/$f" "$src/$f"
done <"$manifest.new"
mv "$manifest.new" "$manifest"
ln -sfn "$top/Kconfig" "$src/Kconfig.overlay"
log "base tree $(make -s -C "$src" kernelversion) ready at $src"

# ---------------------------------------------------------------- QEMU 10
# QEMU >= 10.0 as the VFIO migration client inside the guest (L2 VMs), from
# bookworm-backports through its own private apt configuration, unpacked into
# $deps/qemu10; the system QEMU (7.2) keeps booting the test VM. It runs on
# bookworm's own libraries. Only the binary package is needed: the L2 machine
# loads our firmware (-bios) and no data files (-L an empty dir).
QEMU_SUITE=${QEMU_SUITE:-bookworm-backports}
QEMU_PKGS=${QEMU_PKGS:-qemu-system-x86}
qemu10=$deps/qemu10
qaptdir=$deps/apt-qemu
qaptopts=(-o "Dir::Etc::SourceList=$qaptdir/sources.list" -o Dir::Etc::SourceParts=/dev/null
	-o "Dir::State::Lists=$qaptdir/lists" -o "Dir::Cache=$qaptdir/cache"
	-o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
# qemu_version BINARY: "MAJOR.MINOR" it reports, empty if it does not run.
qemu_version() {
	"$1" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\.[0-9]*\).*/\1/p'
}
qemu_ok() {
	v=$(qemu_version "$qemu10/usr/bin/qemu-system-x86_64")
	[ -n "$v" ] && [ "${v%%.*}" -ge 10 ]
}
if ! qemu_ok; then
	log "downloading $QEMU_PKGS from Debian $QEMU_SUITE"
	mkdir -p "$qaptdir/lists/partial" "$qaptdir/cache/archives/partial" "$qaptdir/debs"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
		"http://deb.debian.org/debian $QEMU_SUITE main" >"$qaptdir/sources.list"
	apt-get "${qaptopts[@]}" -qq update >/dev/null 2>&1 ||
		die "cannot read the Debian suite $QEMU_SUITE (apt-get update failed)"
	rm -rf "$qemu10" "$qaptdir"/debs/*.deb
	mkdir -p "$qemu10"
	for p in $QEMU_PKGS; do
		ver=$(apt-cache "${qaptopts[@]}" show "$p/$QEMU_SUITE" 2>/dev/null |
			sed -n 's/^Version: //p' | head -n1)
		[ -n "$ver" ] || die "Debian package $p is not in $QEMU_SUITE"
		# Debian version [epoch:]upstream-revision: QEMU must be 10.0 or later.
		major=${ver#*:}
		major=${major%%.*}
		[ "$p" != qemu-system-x86 ] || [ "$major" -ge 10 ] 2>/dev/null ||
			die "need qemu-system-x86 >= 10.0 from $QEMU_SUITE, found $ver"
		(cd "$qaptdir/debs" && apt-get "${qaptopts[@]}" -qq download "$p=$ver") ||
			die "download of $p $ver from $QEMU_SUITE failed"
	done
	for deb in "$qaptdir"/debs/*.deb; do
		dpkg-deb -x "$deb" "$qemu10"
	done
	qemu_ok || die "$QEMU_PKGS from $QEMU_SUITE: want qemu-system-x86_64 >= 10.0 running" \
		"on this system, found '$(qemu_version "$qemu10/usr/bin/qemu-system-x86_64" ||
		true)' ($("$qemu10/usr/bin/qemu-system-x86_64" --version 2>&1 | head -n1 || true))"
fi
log "QEMU $(qemu_version "$qemu10/usr/bin/qemu-system-x86_64") for L2 VMs at $qemu10"
