# Scenario A: the first boot of a kernel, no tree yet. check asks for a sync, sync makes a tree,
# check is then happy, and the build link leads to this kernel's headers.
# Scenario D on this boot: the initramfs hook found no tree, the unit's ExecCondition= asks for
# its ExecStart=, which is the sync here; afterwards both the hook and the condition say fresh.
put_verdict initramfs
put kheaders_loaded_before "$(grep -c '^kheaders ' /proc/modules)"
record check_before kheaders_pkg check
unit condition_before ExecCondition
unit sync ExecStart
record check_after kheaders_pkg check
record status kheaders_pkg status --json
put kheaders_loaded_after "$(grep -c '^kheaders ' /proc/modules)"
put_tree build_
put header_stat "$(stat_of "$BUILD/include/linux/sched.h")"
hook_verdict after
unit condition_after ExecCondition
