# Scenario B: the same kernel boots again on the same root: the tree is fresh, sync keeps it.
# Scenario D on this boot: the initramfs hook says fresh, so the unit's ExecCondition= skips
# without starting Python; without that verdict, its own `check` says fresh too.
snapshot() {
	put "$1.target" "$(readlink -f "$BUILD")"
	put "$1.dir" "$(stat_of "$BUILD/")"
	put "$1.header" "$(stat_of "$BUILD/include/linux/sched.h")"
}
put_verdict initramfs
snapshot before
unit condition ExecCondition
record check kheaders_pkg check
export KHEADERS_PKG_RUNDIR=/run/kh-e2e-no-verdict
unit condition_no_verdict ExecCondition
unset KHEADERS_PKG_RUNDIR
record sync kheaders_pkg sync
snapshot after
