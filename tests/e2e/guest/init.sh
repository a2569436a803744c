#!/bin/sh
# PID 1 of the e2e initramfs (Debian's busybox-static). It mounts the host's root read-only over 9p,
# builds a writable root view on it, runs the scenario in a chroot of that view and powers off.
# Results reach the host as "@@KH name=value" lines on the serial console (vm.py parses them).
export PATH=/bin

mark() { echo "@@KH $1=$2"; }
die() { mark init.error "$*"; sync; poweroff -f; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

# Modules in load-order order; kernels with 9p/virtio built in (kh-*) have an empty list.
while read -r ko; do
	[ -n "$ko" ] || continue
	insmod "/modules/$ko" || die "insmod $ko"
done </modules/load-order

p9() { mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$3" "$1" "$2"; }
mkdir -p /host /state /newroot /rw
# The host's root does not change under a guest: cache=loose lets the guest cache its lookups,
# attributes and pages instead of a 9p round trip for each of Python's stat and open calls (a
# 2-3x faster start of the tool under TCG). The state share is written by the tool and read by
# the host afterwards: it keeps the default (no cache).
p9 host /host ro,cache=loose || die "mount 9p host"
p9 state /state rw || die "mount 9p state"
set -a
# shellcheck source=/dev/null # written by the harness for each boot
. /state/e2e/env || die "no /state/e2e/env"
set +a

# The root's lower layer: the host's own root, or, for a guest of another architecture, the
# userland the harness made for it (arm64_guest.py), shared as "userland".
lower=/host
if [ -n "${KH_USERLAND:-}" ]; then
	mkdir -p /userland
	p9 userland /userland ro,cache=loose || die "mount 9p userland"
	lower=/userland
fi

# Writable view: overlayfs (host root lower, tmpfs upper) where the kernel has it; else the
# read-only host root, made writable only at the grafted paths below (kh-* lack CONFIG_OVERLAY_FS).
if grep -qw overlay /proc/filesystems; then
	mount -t tmpfs -o mode=0755 tmpfs /rw
	mkdir /rw/upper /rw/work
	mount -t overlay -o "lowerdir=$lower,upperdir=/rw/upper,workdir=/rw/work" overlay /newroot ||
		die "mount overlay"
	mark init.root overlay
else
	mount -o bind "$lower" /newroot
	mark init.root 9p-readonly
fi

# mirror SRC DST: cover DST with a tmpfs holding bind mounts (or copies of the symlinks) of SRC's
# entries, so that a new directory can be made in a read-only DST without hiding anything.
mirror() {
	mount -t tmpfs -o mode=0755 tmpfs "$2" || die "tmpfs on $2"
	for entry in "$1"/* "$1"/.[!.]*; do
		[ -e "$entry" ] || [ -L "$entry" ] || continue
		name=${entry##*/}
		if [ -L "$entry" ]; then
			ln -s "$(readlink "$entry")" "$2/$name"
		elif [ -d "$entry" ]; then
			mkdir "$2/$name" && mount -o bind "$entry" "$2/$name"
		else
			touch "$2/$name" && mount -o bind "$entry" "$2/$name"
		fi
	done
}

# graft PATH: bind the state share's PATH over the root's PATH; it persists across boots.
graft() {
	if ! [ -d "/newroot/$1" ] && ! mkdir -p "/newroot/$1" 2>/dev/null; then
		mirror "$lower/${1%/*}" "/newroot/${1%/*}"
		mkdir "/newroot/$1" || die "mkdir $1"
	fi
	mkdir -p "/state/$1"
	mount -o bind "/state/$1" "/newroot/$1" || die "bind $1"
}

mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
while read -r path; do
	[ -n "$path" ] && graft "$path"
done </writable
mkdir -p /state/e2e /newroot/run/kh-e2e
# Another architecture's root sees the tool's checkout at the same path as the host does.
if [ "$lower" != /host ]; then
	mkdir -p "/newroot$KH_CHECKOUT" || die "mkdir $KH_CHECKOUT"
	mount -o bind "/host$KH_CHECKOUT" "/newroot$KH_CHECKOUT" || die "bind $KH_CHECKOUT"
fi
mount -o bind /state/e2e /newroot/run/kh-e2e

grep -qw debugfs /proc/filesystems && mount -t debugfs debugfs /sys/kernel/debug
grep -qw tracefs /proc/filesystems && mount -t tracefs tracefs /sys/kernel/tracing
for fs in proc sys dev; do
	mount -o rbind "/$fs" "/newroot/$fs" || die "bind /$fs"
done

# The initramfs-tools init-bottom hook, as the initramfs runs it: the real root at $rootmnt, its
# verdict in /run/kheaders-pkg (here the real root's /run, which the initramfs hands over).
hooks=/host$KH_CHECKOUT/hooks
rootmnt=/newroot KHEADERS_PKG_RUNDIR=/newroot/run/kheaders-pkg \
	KHEADERS_PKG_HOOKLIB=$hooks/lib/kheaders-pkg-verdict.sh \
	sh "$hooks/initramfs-tools/scripts/init-bottom/kheaders-pkg" || die "init-bottom hook failed"

mark init.ready 1
env -i /bin/chroot /newroot /bin/sh -c '. /run/kh-e2e/lib.sh && . /run/kh-e2e/scenario.sh'
mark e2e.exit $?
sync
mark e2e.done 1
poweroff -f
