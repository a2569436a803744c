# Consumers: bcc compiles a kprobe program against the tree a sync made earlier in this boot,
# attaches it, sees it fire. Then, with the tree moved away and kheaders.ko unloaded (so bcc
# cannot extract the archive itself, and the guest's /lib/modules has no kheaders.ko to
# modprobe), the same program fails.
put kprobes "$(zcat /proc/config.gz 2>/dev/null | grep -c '^CONFIG_KPROBES=y')"
[ -w /sys/kernel/tracing/kprobe_events ] && put tracefs 1
probe=$KH_CHECKOUT/tests/e2e/guest/bcc_probe.py
put bcc_tree "$(readlink -f "$BUILD")"
t0=$(date +%s)
record bcc_with_tree /usr/bin/python3.11 "$probe"
put bcc_seconds $(($(date +%s) - t0))

dir=/lib/modules/$KVER
mkdir "$dir/.aside"
for link in build source; do
	if [ -e "$dir/$link" ] || [ -L "$dir/$link" ]; then mv "$dir/$link" "$dir/.aside/"; fi
done
rm -rf /tmp/kheaders-*
rmmod kheaders 2>/dev/null
[ -e /sys/kernel/kheaders.tar.xz ] || put kheaders_unloaded 1
record bcc_without_tree /usr/bin/python3.11 "$probe"
mv "$dir/.aside/"* "$dir/" && rmdir "$dir/.aside"
