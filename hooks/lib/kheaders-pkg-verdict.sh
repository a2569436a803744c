# kheaders-pkg: the initramfs verdict, shared by the dracut and initramfs-tools hooks.
#
# Sourced, never executed: dracut sources pre-pivot hooks into its init shell, so this file only
# defines functions (prefix kh_) and sets no shell options. Nothing here may fail the boot: every
# function returns 0 and a problem becomes the verdict "unknown" with a reason.
#
# It answers one question before the real root is switched to: does the tree behind
# $NEWROOT/lib/modules/$(uname -r)/build belong to the running kernel? The running kernel's build id
# comes from /sys/kernel/notes, its config hash from /proc/config.gz; the tree's from its vmlinux.id
# (Fedora's file, which we also write) and our stamp's config_sha256. The answer goes to
# /run/kheaders-pkg/initramfs-verdict (key=value lines) for kheaders-pkg.service, which skips its
# own check when the verdict is "fresh" for this release.
#
# Inputs can be redirected for tests: KHEADERS_PKG_SYSFS (/sys), KHEADERS_PKG_PROCFS (/proc),
# KHEADERS_PKG_RUNDIR (/run/kheaders-pkg).

KH_STAMP_NAME=.kheaders-pkg.json
# Linux follows at most 40 symlinks in one lookup (MAXSYMLINKS); so do we.
KH_MAX_LINKS=40

# kh_u32 B0 B1 B2 B3: the native-order 32-bit value of four hex bytes (as od -tx1 prints them).
kh_u32() {
    if [ "$kh_little_endian" = 1 ]; then
        echo $((0x$4$3$2$1))
    else
        echo $((0x$1$2$3$4))
    fi
}

# kh_build_id NOTES_FILE: print the GNU build id (type 3) in hex, or nothing. The notes are
# {u32 namesz, descsz, type} + name + desc, each padded to 4 bytes, in the CPU's byte order;
# every step is bound-checked so a short or garbled file gives no id rather than a wrong one.
kh_build_id() {
    [ -r "$1" ] || return 0
    kh_little_endian=0
    [ "$(printf '\001\000\000\000' | od -An -tu4 | tr -d ' ')" = 1 ] && kh_little_endian=1
    # Word splitting of od's output into one positional parameter per byte is the point here.
    # shellcheck disable=SC2046
    set -- $(od -An -v -tx1 "$1")
    while [ "$#" -ge 12 ]; do
        _kh_namesz=$(kh_u32 "$1" "$2" "$3" "$4")
        _kh_descsz=$(kh_u32 "$5" "$6" "$7" "$8")
        _kh_type=$(kh_u32 "$9" "${10}" "${11}" "${12}")
        shift 12
        _kh_namepad=$(((_kh_namesz + 3) / 4 * 4))
        _kh_descpad=$(((_kh_descsz + 3) / 4 * 4))
        [ "$#" -ge $((_kh_namepad + _kh_descpad)) ] || return 0
        if [ "$_kh_namesz" = 4 ] && [ "$_kh_type" = 3 ] && [ "$1$2$3$4" = 474e5500 ]; then
            shift 4
            _kh_id=
            while [ "$_kh_descsz" -gt 0 ]; do
                _kh_id=$_kh_id$1
                shift
                _kh_descsz=$((_kh_descsz - 1))
            done
            echo "$_kh_id"
            return 0
        fi
        shift $((_kh_namepad + _kh_descpad))
    done
    return 0
}

# kh_config_sha256 CONFIG_GZ: sha256 of the decompressed config, or nothing.
kh_config_sha256() {
    [ -r "$1" ] || return 0
    _kh_sum=$(gzip -dc <"$1" | sha256sum) || return 0
    echo "${_kh_sum%% *}"
}

# kh_resolve ROOT PATH: the path of PATH inside ROOT with every symlink followed as if chrooted
# into ROOT (an absolute target starts again at ROOT, never at the initramfs's own /). Prints
# nothing on a loop.
kh_resolve() {
    _kh_root=$1
    _kh_rest=${2#/}
    _kh_done=
    _kh_links=0
    while [ -n "$_kh_rest" ]; do
        _kh_part=${_kh_rest%%/*}
        case $_kh_rest in
        */*) _kh_rest=${_kh_rest#*/} ;;
        *) _kh_rest= ;;
        esac
        case $_kh_part in
        '' | .) continue ;;
        ..)
            _kh_done=${_kh_done%/*}
            continue
            ;;
        esac
        if [ -L "$_kh_root$_kh_done/$_kh_part" ]; then
            _kh_links=$((_kh_links + 1))
            [ "$_kh_links" -le "$KH_MAX_LINKS" ] || return 0
            _kh_target=$(readlink "$_kh_root$_kh_done/$_kh_part") || return 0
            case $_kh_target in
            /*) _kh_done= ;;
            esac
            _kh_target=${_kh_target#/}
            _kh_rest=$_kh_target${_kh_rest:+/$_kh_rest}
        else
            _kh_done=$_kh_done/$_kh_part
        fi
    done
    echo "$_kh_root$_kh_done"
}

# kh_stamp_value STAMP KEY: a string value from our stamp (JSON, one key per line, see stamp.py);
# nothing for null or a missing key.
kh_stamp_value() {
    sed -n "s/^ *\"$2\": *\"\\([^\"]*\\)\",\\{0,1\\}\$/\\1/p" "$1" 2>/dev/null | head -n 1
}

# kh_decide NEWROOT RELEASE BUILD_ID CONFIG_SHA256: set kh_verdict, kh_reason, kh_tree.
kh_decide() {
    kh_tree=
    _kh_link=/lib/modules/$2/build
    _kh_host=$(kh_resolve "$1" "$_kh_link")
    if [ -z "$_kh_host" ]; then
        kh_verdict=unknown
        kh_reason="too many symlinks resolving $_kh_link"
        return 0
    fi
    kh_tree=${_kh_host#"$1"}
    if [ ! -d "$_kh_host" ]; then
        kh_verdict=missing
        kh_reason="no tree at $_kh_link"
        return 0
    fi
    _kh_tree_id=
    [ -r "$_kh_host/vmlinux.id" ] && _kh_tree_id=$(tr -d ' \n' <"$_kh_host/vmlinux.id")
    if [ ! -f "$_kh_host/$KH_STAMP_NAME" ]; then
        # Not ours (a distro's kernel-devel or linux-headers): only a matching build id says fresh.
        if [ -n "$3" ] && [ "$_kh_tree_id" = "$3" ]; then
            kh_verdict=fresh
            kh_reason="tree we do not own matches the running build id"
        elif [ -n "$3" ] && [ -n "$_kh_tree_id" ]; then
            kh_verdict=foreign
            kh_reason="tree we do not own has build id $_kh_tree_id, running $3"
        else
            kh_verdict=foreign
            kh_reason="tree we do not own, no build id to compare"
        fi
        return 0
    fi
    _kh_stamp=$_kh_host/$KH_STAMP_NAME
    _kh_stamp_release=$(kh_stamp_value "$_kh_stamp" release)
    _kh_stamp_id=$(kh_stamp_value "$_kh_stamp" build_id)
    _kh_stamp_config=$(kh_stamp_value "$_kh_stamp" config_sha256)
    _kh_stamp_config_source=$(kh_stamp_value "$_kh_stamp" config_source)
    [ -n "$_kh_tree_id" ] || _kh_tree_id=$_kh_stamp_id
    if [ "$_kh_stamp_release" != "$2" ]; then
        kh_verdict=stale
        kh_reason="stamp release '$_kh_stamp_release' is not $2"
    elif [ -z "$3" ]; then
        # Without a build id only the archive digest decides, and reading the archive is the
        # boot service's job.
        kh_verdict=unknown
        kh_reason="running kernel has no build id"
    elif [ "$_kh_tree_id" != "$3" ]; then
        kh_verdict=stale
        kh_reason="tree build id '$_kh_tree_id' is not the running $3"
    elif [ -n "$4" ] && [ -n "$_kh_stamp_config" ] && [ "$_kh_stamp_config" != "$4" ] &&
        { [ "$_kh_stamp_config_source" = proc ] || [ "$_kh_stamp_config_source" = configs.ko ]; }; then
        # Only the build config (proc or configs.ko) hashes like /proc/config.gz (architecture.md).
        kh_verdict=stale
        kh_reason="tree config $_kh_stamp_config is not the running $4"
    else
        kh_verdict=fresh
        kh_reason="build id matches"
    fi
    return 0
}

# kh_write_verdict: write the verdict atomically to $KHEADERS_PKG_RUNDIR/initramfs-verdict.
kh_write_verdict() {
    _kh_rundir=${KHEADERS_PKG_RUNDIR:-/run/kheaders-pkg}
    mkdir -p "$_kh_rundir" 2>/dev/null || return 0
    {
        echo "verdict=$kh_verdict"
        echo "reason=$kh_reason"
        echo "release=$kh_release"
        echo "build_id=$kh_running_id"
        echo "config_sha256=$kh_running_config"
        echo "tree=$kh_tree"
    } >"$_kh_rundir/.initramfs-verdict.tmp" 2>/dev/null &&
        mv -f "$_kh_rundir/.initramfs-verdict.tmp" "$_kh_rundir/initramfs-verdict" 2>/dev/null
    return 0
}

# kheaders_pkg_verdict NEWROOT: the whole job. Always returns 0.
kheaders_pkg_verdict() {
    _kh_sysfs=${KHEADERS_PKG_SYSFS:-/sys}
    _kh_procfs=${KHEADERS_PKG_PROCFS:-/proc}
    # /proc/sys/kernel/osrelease is what `uname -r` prints, and can be redirected for tests.
    kh_release=
    [ -r "$_kh_procfs/sys/kernel/osrelease" ] && kh_release=$(cat "$_kh_procfs/sys/kernel/osrelease")
    kh_running_id=$(kh_build_id "$_kh_sysfs/kernel/notes")
    kh_running_config=$(kh_config_sha256 "$_kh_procfs/config.gz")
    kh_tree=
    if [ -z "$1" ] || [ ! -d "$1" ]; then
        kh_verdict=unknown
        kh_reason="no real root mounted at '$1'"
    elif [ -z "$kh_release" ]; then
        kh_verdict=unknown
        kh_reason="cannot read $_kh_procfs/sys/kernel/osrelease"
    else
        case $kh_release in
        */* | . | ..)
            kh_verdict=unknown
            kh_reason="release '$kh_release' is not one path component"
            ;;
        *) kh_decide "$1" "$kh_release" "$kh_running_id" "$kh_running_config" ;;
        esac
    fi
    kh_write_verdict
    return 0
}
