# Scenario C: the root holds our tree from another build of this release: check must see it is
# stale, sync must replace it.
# Scenario D on this boot: the initramfs hook says stale, the unit's ExecCondition= asks for its
# ExecStart=, which is the sync here; afterwards the hook says fresh.
put_tree old_
put_verdict initramfs
record check_before kheaders_pkg check
record status_before kheaders_pkg status --json
unit condition_before ExecCondition
unit sync ExecStart
record check_after kheaders_pkg check
record status kheaders_pkg status --json
put_tree
hook_verdict after
unit condition_after ExecCondition
