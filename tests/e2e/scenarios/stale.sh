# Scenario C: the root holds our tree from another build of this release: check must see it is
# stale, sync must replace it.
put_tree old_
record check_before kheaders_pkg check
record status_before kheaders_pkg status --json
record sync kheaders_pkg sync
record check_after kheaders_pkg check
record status kheaders_pkg status --json
put_tree
