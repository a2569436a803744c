#!/bin/sh
# Run by tests/test_sysext.py in a private mount namespace (`unshare --mount`, propagation
# private): what the running system looks like on an image-based OS, made from this host's own
# root without changing it. /usr is read-only, /var/lib and /run are fresh tmpfs; the tool runs
# against the live root (no --root) and calls the real systemd-sysext. Then a "container": a
# chroot that bind-mounts the host paths the README names, with no /sys (no archive) and no
# CAP_SYS_MODULE, compiles a header consumer against the merged tree.
# Usage: live_merge.sh KHEADERS_PKG KERNEL_FS CONSUMER_C WORKDIR; prints "name=value" lines.
set -eu
tool=$1 kfs=$2 consumer=$3 work=$4
out() { printf '%s=%s\n' "$1" "$2"; }

mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /var/lib
# /usr as on Flatcar or ostree: a read-only mount. It is a new mount in this namespace, made
# shared so that the mount systemd-sysext makes in its own child namespace reaches ours (and,
# being a new peer group, nothing outside this namespace).
mount --bind /usr /usr
mount -o remount,bind,ro /usr
mount --make-shared /usr

rel=$(cat "$kfs/proc/sys/kernel/osrelease")
build=/lib/modules/$rel/build
"$tool" --kernel-fs "$kfs" check >"$work/check_before.out" 2>&1 && rc=0 || rc=$?
out check_before.rc "$rc"
# sync as kheaders-pkg.service runs it: the refresh flag set, without CAP_SYS_ADMIN (its
# sandbox allows no mount), then the unit's privileged ExecStartPost= command ($UNIT_POST).
mkdir -p "$(dirname "$UNIT_FLAG")"
KHEADERS_PKG_REFRESH_FLAG=$UNIT_FLAG setpriv --bounding-set -sys_admin --inh-caps -sys_admin \
	"$tool" --kernel-fs "$kfs" sync >"$work/sync.out" 2>"$work/sync.err" && rc=0 || rc=$?
out sync.rc "$rc"
[ -e "$UNIT_FLAG" ] && out flag_left 1
out build_before_post "$(readlink "$build" || echo absent)"
KHEADERS_PKG_REFRESH_FLAG=$UNIT_FLAG sh -c "$UNIT_POST" >"$work/post.out" 2>&1 && rc=0 || rc=$?
out post.rc "$rc"
"$tool" --kernel-fs "$kfs" check >"$work/check_after.out" 2>&1 && rc=0 || rc=$?
out check_after.rc "$rc"
# The same question through the full CLI (-v is not a spelling the fast path takes), and whether
# the fast path answered it (it never imports argparse).
"$tool" --kernel-fs "$kfs" -v check >"$work/check_full.out" 2>/dev/null && rc=0 || rc=$?
out check_full.rc "$rc"
out fast_path_answered "$("$(dirname "$tool")/python" -c 'import sys
from kheaders_pkg.entry import main
sys.argv = ["kheaders-pkg", "--kernel-fs", sys.argv[1], "-q", "check"]
rc = main()
print(rc == 0 and "argparse" not in sys.modules)' "$kfs")"
"$tool" --kernel-fs "$kfs" status --json >"$work/status.json" 2>&1 || true
"$tool" --kernel-fs "$kfs" sync >"$work/sync_again.out" 2>&1 && rc=0 || rc=$?
out sync_again.rc "$rc"
out sysext_status "$(systemd-sysext status --no-legend 2>&1 | tr -s ' \n' '  ')"
out usr_fstype "$(findmnt -n -o FSTYPE /usr | tail -n 1)"
out build_target "$(readlink "$build" || echo absent)"
[ -f "$build/include/linux/kconfig.h" ] && out kconfig_h_readable 1
out usr_options "$(findmnt -n -o OPTIONS /usr | tail -n 1 | cut -d, -f1)"

# The container: its own root, the host's /usr for its programs (clang), and the two host paths
# of the README's recipe mounted read-only at the same paths.
c=$work/container
mkdir -p "$c/usr" "$c/var/lib/kheaders-pkg/trees" "$c/tmp" "$c/dev" "$c/etc" "$c/proc"
for top in bin sbin lib lib64; do [ -L "/$top" ] && ln -s "$(readlink "/$top")" "$c/$top"; done
mount --rbind /usr "$c/usr"
mount --bind /dev "$c/dev"
mount -t proc proc "$c/proc"
mount --bind -o ro /lib/modules "$c/lib/modules"
mount --bind /var/lib/kheaders-pkg/trees "$c/var/lib/kheaders-pkg/trees"
mount -o remount,bind,ro "$c/var/lib/kheaders-pkg/trees"
cp "$consumer" "$c/tmp/consumer.c"
tree=/lib/modules/$rel/build
[ -e "$c/sys/kernel/kheaders.tar.xz" ] || out container_no_archive 1
# Every symlink in the tree, followed inside the container: none may dangle.
out container_dangling "$(chroot "$c" find -L "$tree/" -type l 2>&1 | head -5 | tr '\n' ' ')"
out container_files "$(chroot "$c" find -L "$tree/" -type f | wc -l)"
a=$tree/arch/x86
set -- -nostdinc -isystem "$(clang -print-resource-dir)/include" \
	-I"$a/include" -I"$a/include/generated" -I"$tree/include" -I"$a/include/uapi" \
	-I"$a/include/generated/uapi" -I"$tree/include/uapi" -I"$tree/include/generated/uapi" \
	-include "$tree/include/linux/kconfig.h" -D__KERNEL__ -D__BPF_TRACING__ \
	-Wno-unused-value -Wno-pointer-sign -Wno-gnu-variable-sized-type-not-at-end \
	-Wno-address-of-packed-member -Wno-tautological-compare -Wno-unknown-warning-option \
	-fno-stack-protector -O2 -S -emit-llvm -o /tmp/consumer.ll /tmp/consumer.c
# No CAP_SYS_MODULE: dropped from the bounding set and every capability set before clang runs.
chroot "$c" setpriv --bounding-set -sys_module --inh-caps -sys_module \
	sh -c 'grep CapBnd /proc/self/status 2>/dev/null; exec "$@"' sh clang -target x86_64-linux-gnu "$@" \
	>"$work/clang.out" 2>&1 && rc=0 || rc=$?
out clang.rc "$rc"
out version_code "$(sed -n 's/^@kh_version_code = .* global i64 \([0-9]*\).*/\1/p' "$c/tmp/consumer.ll" 2>/dev/null)"
out corpus_variant "$(sed -n 's/^@kh_corpus_variant = .* global i64 \([0-9]*\).*/\1/p' "$c/tmp/consumer.ll" 2>/dev/null)"
