# SPDX-License-Identifier: GPL-2.0
# Sourced by the overlay scripts: paths and the kernel make command line.
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top/build}
SRC=$BUILD/src/linux
OBJ=$BUILD/obj
FRAGMENT=$top/kernel/configs/vfio_overlay.config
JOBS=${JOBS:-$(nproc)}
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-22/lib}
# Debian's rustc-web (with its library sources) and our bindgen, never the
# rustup toolchain that may come first in PATH (it has no rust-src).
KMAKE=(make -C "$SRC" O="$OBJ" -j"$JOBS"
	RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc HOSTRUSTC=/usr/bin/rustc
	RUSTFMT=/usr/bin/rustfmt CLIPPY_DRIVER=/usr/bin/clippy-driver
	BINDGEN="$BUILD/deps/bin/bindgen")

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
