#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Check the test harness itself: a failing guest test, a hung guest and a
# panicking guest must each make vm.sh fail, the hang within its deadline,
# and no QEMU may be left running. Prints TAP and a summary line.
set -uo pipefail
. "$(dirname "$0")/env.sh"

n=0
failed=0
result() {
	n=$((n + 1))
	if [ "$1" = ok ]; then
		echo "ok $n $2"
	else
		echo "not ok $n $2"
		failed=$((failed + 1))
	fi
}

# expect PLAN TIMEOUT PATTERN: vm.sh PLAN must fail and print PATTERN.
expect_failure() {
	local plan=$1 timeout=$2 pattern=$3 out rc start secs
	start=$(date +%s)
	out=$(VM_TIMEOUT=$timeout VM_QUIET=1 TAP_OUT=$BUILD/$plan.tap "$top/tools/overlay/vm.sh" "$plan" 2>&1)
	rc=$?
	secs=$(($(date +%s) - start))
	echo "$out" | sed 's/^/# /'
	if [ $rc != 0 ] && echo "$out" | grep -qE "$pattern"; then
		result ok "harness: $plan fails the run (exit $rc, ${secs}s)"
	else
		result "not ok" "harness: $plan fails the run (exit $rc, ${secs}s)"
	fi
	if [ "$secs" -le $((timeout + 15)) ]; then
		result ok "harness: $plan ends within its deadline (${secs}s <= $timeout+15s)"
	else
		result "not ok" "harness: $plan ends within its deadline (${secs}s > $timeout+15s)"
	fi
	if pgrep -f "overlay.plan=$plan" >/dev/null; then
		result "not ok" "harness: no QEMU outlives the $plan run"
		pkill -9 -f "overlay.plan=$plan"
	else
		result ok "harness: no QEMU outlives the $plan run"
	fi
}

echo "TAP version 13"
expect_failure harness_fail 120 '^1 passed, 1 failed$'
expect_failure harness_hang 30 'cut off'
expect_failure harness_panic 120 'crashed'
echo "1..$n"
echo "$((n - failed)) passed, $failed failed"
[ $failed = 0 ]
