# Scenario S (test_sysext_boot.py): an image-based system. /usr is read-only (a read-only bind
# mount, which also hides the writable /usr/lib/modules and /usr/src the harness grafts there),
# /var is writable and persistent (/var/lib/kheaders-pkg and /var/lib/extensions are on the state
# share), /run is a tmpfs, and / is shared, as systemd makes it at boot. The tool runs as the boot
# unit runs it; it publishes a systemd-sysext extension and runs the real `systemd-sysext refresh`.
mount --make-rshared /
mount --bind /usr /usr && mount -o remount,bind,ro /usr
touch /usr/.e2e-probe 2>/dev/null || put usr_read_only 1
grep -qw overlay /proc/filesystems && put overlayfs 1
record check_before kheaders_pkg check
unit sync ExecStart
record check_after kheaders_pkg check
record status kheaders_pkg status --json
record sysext_status systemd-sysext status --no-pager
put usr_fstype "$(findmnt -n -o FSTYPE /usr | tail -n 1)"
put build_target "$(readlink "$BUILD" || echo absent)"
[ -r "$BUILD/include/linux/kconfig.h" ] && put kconfig_h_readable 1
put ext_target "$(readlink "/var/lib/extensions/kheaders-pkg-$KVER/usr/lib/modules/$KVER/build")"
find /var/lib/extensions -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | put64 extensions
put64 extension_release \
	<"/var/lib/extensions/kheaders-pkg-$KVER/usr/lib/extension-release.d/extension-release.kheaders-pkg-$KVER"
