# Scenario B: the same kernel boots again on the same root: the tree is fresh, sync keeps it.
snapshot() {
	put "$1.target" "$(readlink -f "$BUILD")"
	put "$1.dir" "$(stat_of "$BUILD/")"
	put "$1.header" "$(stat_of "$BUILD/include/linux/sched.h")"
}
snapshot before
record check kheaders_pkg check
record sync kheaders_pkg sync
snapshot after
