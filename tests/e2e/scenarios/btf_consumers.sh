# Consumers that matter now, after the sync earlier in this boot: bpftrace runs a script that
# includes <linux/sched.h>; a libbpf CO-RE object compiled on the host against this tree's
# vmlinux.h is loaded, attached and seen to fire. No environment variable points anywhere and
# kheaders.ko is unloaded (the archive is gone), so the tree is the only source. With the tree
# moved away, bpftrace fails.
unset BPFTRACE_KERNEL_SOURCE BPFTRACE_KERNEL_BUILD BCC_KERNEL_SOURCE
put kernel_source_vars "$(env | grep -c 'KERNEL_SOURCE\|KERNEL_BUILD')"
rmmod kheaders 2>/dev/null
[ -e /sys/kernel/kheaders.tar.xz ] || put btf_archive_absent 1
put btf_tree "$(readlink -f "$BUILD")"
put vmlinux_h_sha256 "$(sha256 "$BUILD/vmlinux.h")"
guest=$KH_CHECKOUT/tests/e2e/guest
record bpftrace_with_tree bpftrace -c '/bin/cat /proc/version' "$guest/sched.bt"
record core_with_tree /usr/bin/python3.11 "$guest/core_load.py" /run/kh-e2e/core_probe.bpf.o

dir=/lib/modules/$KVER
mkdir "$dir/.aside"
for link in build source; do
	if [ -e "$dir/$link" ] || [ -L "$dir/$link" ]; then mv "$dir/$link" "$dir/.aside/"; fi
done
rm -rf /tmp/kheaders-*
record bpftrace_without_tree bpftrace -c '/bin/cat /proc/version' "$guest/sched.bt"
mv "$dir/.aside/"* "$dir/" && rmdir "$dir/.aside"
