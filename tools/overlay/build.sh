#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Configure and build the test kernel out of tree ($BUILD/obj, reused between
# runs): tinyconfig + kernel/configs/vfio_overlay.config, checked line by line
# after olddefconfig; then bzImage and modules. Extra make arguments (for
# example CLIPPY=1) are passed through.
set -euo pipefail
. "$(dirname "$0")/env.sh"

[ -f "$SRC/Makefile" ] || die "no base tree at $SRC: run tools/overlay/setup.sh"
mkdir -p "$OBJ"
# One kernel build at a time on this machine.
exec 9>"$BUILD/.buildlock"
flock 9

# Reconfigure when the fragment changed or the toolchain check never passed.
if [ ! -f "$OBJ/.config" ] || [ "$FRAGMENT" -nt "$OBJ/.config" ] ||
	! grep -q '^CONFIG_RUST=y' "$OBJ/.config"; then
	"${KMAKE[@]}" -s rustavailable >/dev/null 2>"$OBJ/rustavailable.log" ||
		die "Rust toolchain not usable for this kernel: $(tail -n1 "$OBJ/rustavailable.log")"
	"${KMAKE[@]}" -s tinyconfig >/dev/null
	"$SRC/scripts/kconfig/merge_config.sh" -m -O "$OBJ" "$OBJ/.config" "$FRAGMENT" \
		>"$OBJ/merge_config.log" 2>&1 || die "merge_config failed (see $OBJ/merge_config.log)"
	"${KMAKE[@]}" -s olddefconfig >/dev/null
	touch "$OBJ/.config"
fi

# Every line of the fragment must have survived olddefconfig.
bad=0
grep -q '^CONFIG_RUST=y$' "$OBJ/.config" ||
	die "CONFIG_RUST=y did not survive olddefconfig (Rust toolchain check failed?)"
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*) grep -qxF "$line" "$OBJ/.config" || {
		echo "config: '$line' did not survive olddefconfig" \
			"(got: $(grep -E "^(# )?${line%%=*}[= ]" "$OBJ/.config" || echo unset))" >&2
		bad=1
	} ;;
	"# CONFIG_"*" is not set") grep -qxF "$line" "$OBJ/.config" ||
		! grep -q "^${line:2:-11}=" "$OBJ/.config" || {
		echo "config: '$line' did not survive olddefconfig" >&2
		bad=1
	} ;;
	esac
done <"$FRAGMENT"
[ $bad = 0 ] || die "config fragment not honoured"

"${KMAKE[@]}" "$@" bzImage modules
