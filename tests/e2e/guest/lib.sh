# Sourced (POSIX sh) inside the guest's chroot before each scenario: environment and helpers.
# /run/kh-e2e is the host's scratch directory, shared read-write over 9p.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
E2E=/run/kh-e2e
set -a
. "$E2E/env"
set +a

# put NAME VALUE: one result line for the host.
put() { printf '@@KH %s=%s\n' "$1" "$2"; }

# put64 NAME: a result read from stdin, any bytes, base64-encoded on one line.
put64() { printf '@@KH64 %s=%s\n' "$1" "$(base64 -w0)"; }

# kheaders-pkg ARGS: the tool from the host's checkout, by its real entry point (python -m
# kheaders_pkg: kheaders_pkg.entry, with the fast path of `check`), on the host's interpreter.
kheaders_pkg() { "$KH_TOOL" "$@"; }

# record NAME CMD...: run CMD, report NAME.rc, NAME.out (stdout) and NAME.err (stderr).
record() {
	name=$1
	shift
	started=$(date +%s.%N)
	"$@" >/tmp/record.out 2>/tmp/record.err
	rc=$?
	put "$name.rc" "$rc"
	put "$name.seconds" "$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }")"
	put64 "$name.out" </tmp/record.out
	put64 "$name.err" </tmp/record.err
	return 0
}

# sha256 FILE: the digest, or "absent".
sha256() {
	if [ -e "$1" ]; then sha256sum <"$1" | cut -d' ' -f1; else echo absent; fi
}

# The build link of the running kernel, where every consumer looks.
KVER=$(uname -r)
BUILD=/lib/modules/$KVER/build

# stat_of PATH: "inode mtime" (nanoseconds) of PATH, following links, or "absent".
stat_of() { stat -L -c '%i %.9Y' "$1" 2>/dev/null || echo absent; }

# put_tree NAME: where the build link leads and what the tree says about its kernel.
put_tree() {
	put "$1target" "$(readlink -f "$BUILD")"
	[ -f "$BUILD/include/linux/kconfig.h" ] && put "$1has_kconfig_h" 1
	put "$1utsrelease" "$(grep -h 'define UTS_RELEASE' "$BUILD/include/generated/utsrelease.h")"
	put "$1version_code" "$(grep -h 'define LINUX_VERSION_CODE' \
		"$BUILD/include/generated/uapi/linux/version.h")"
	put "$1variant" "$(grep -h 'define KH_CORPUS_VARIANT' "$BUILD/include/linux/kernel.h")"
}

# --- the boot path: initramfs hook and systemd unit (scenario D) ---------------------------------
VERDICT=/run/kheaders-pkg/initramfs-verdict

# put_verdict NAME: the verdict file the initramfs hook wrote (NAME.verdict, NAME.reason).
put_verdict() {
	put "$1.verdict" "$(sed -n 's/^verdict=//p' "$VERDICT" 2>/dev/null)"
	sed -n 's/^reason=//p' "$VERDICT" 2>/dev/null | put64 "$1.reason"
}

# hook_verdict NAME: run the initramfs hook's verdict again now, with NEWROOT at this root.
hook_verdict() {
	(. "$KH_CHECKOUT/hooks/lib/kheaders-pkg-verdict.sh" && kheaders_pkg_verdict /)
	put_verdict "$1"
}

# unit NAME KEY: run the rendered kheaders-pkg.service's KEY= command line (ExecCondition=,
# ExecStart=) as systemd would: split on blanks, no shell. The condition helper is run from the
# rendered copy, since nothing is installed at its path ($KH_CONDITION) in this root.
unit() {
	name=$1
	line=$(sed -n "s/^$2=//p" "$KH_HOOKS/kheaders-pkg.service")
	put "$name.line" "$line"
	set -f
	# shellcheck disable=SC2086 # word splitting is what systemd does to the line
	set -- $line
	set +f
	[ "$1" = "$KH_CONDITION" ] && { shift; set -- "$KH_HOOKS/${KH_CONDITION##*/}" "$@"; }
	record "$name" "$@"
}
