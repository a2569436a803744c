# Scenario A: the first boot of a kernel, no tree yet. check asks for a sync, sync makes a tree,
# check is then happy, and the build link leads to this kernel's headers.
put kheaders_loaded_before "$(grep -c '^kheaders ' /proc/modules)"
record check_before kheaders_pkg check
record sync kheaders_pkg sync
record check_after kheaders_pkg check
record status kheaders_pkg status --json
put kheaders_loaded_after "$(grep -c '^kheaders ' /proc/modules)"
put_tree build_
put header_stat "$(stat_of "$BUILD/include/linux/sched.h")"
