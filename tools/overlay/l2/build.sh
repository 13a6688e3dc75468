#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# build.sh OUTDIR: build the L2 firmware (OUTDIR/l2fw.bin, a 64 KiB -bios
# image) and the static HMP client (OUTDIR/hmp) with the host toolchain.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
die() { echo "l2/build.sh: $*" >&2; exit 1; }

# 32-bit, freestanding, no FPU/SSE: nothing set up for them.
cflags=(-m32 -ffreestanding -fno-pic -fno-stack-protector -fno-asynchronous-unwind-tables
	-mno-sse -mno-mmx -mno-80387 -O2 -Wall -Werror)
gcc "${cflags[@]}" -c "$here/fw.c" -o "$out/fw.o" || die "compiling fw.c failed"
gcc -m32 -c "$here/start.S" -o "$out/start.o" || die "assembling start.S failed"
ld -m elf_i386 -T "$here/fw.lds" -nostdlib -o "$out/l2fw.elf" "$out/start.o" "$out/fw.o" ||
	die "linking the firmware failed"
objcopy -O binary "$out/l2fw.elf" "$out/l2fw.bin"
[ "$(stat -c %s "$out/l2fw.bin")" = 65536 ] || die "l2fw.bin is not 64 KiB"

gcc -static -O2 -Wall -Werror -o "$out/hmp" "$here/hmp.c" || die "building hmp failed"
