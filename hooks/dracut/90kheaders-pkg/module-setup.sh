#!/bin/sh
# kheaders-pkg dracut module: add kheaders.ko and, at pre-pivot, record whether the real root's
# /lib/modules/$(uname -r)/build matches the running kernel (see kheaders-pkg-verdict.sh).
# Sourced by dracut, which sets $kernel, $srcmods and $moddir.
# shellcheck disable=SC2154

# The shared verdict library, installed by the package; tests point at a checkout copy.
kheaders_pkg_lib() {
    echo "${KHEADERS_PKG_HOOKLIB:-/usr/lib/kheaders-pkg/kheaders-pkg-verdict.sh}"
}

# Only kernels built with CONFIG_IKHEADERS=m ship kheaders.ko (background section 1).
check() {
    [ -r "$(kheaders_pkg_lib)" ] || return 1
    for _kh_ko in "${srcmods:-/lib/modules/$kernel}"/kernel/kernel/kheaders.ko*; do
        [ -e "$_kh_ko" ] && return 0
    done
    return 1
}

depends() {
    return 0
}

installkernel() {
    instmods kheaders
}

install() {
    inst_simple "$(kheaders_pkg_lib)" /usr/lib/kheaders-pkg/kheaders-pkg-verdict.sh
    inst_multiple cat gzip head mkdir mv od readlink sed sha256sum tr
    inst_hook pre-pivot 90 "$moddir/kheaders-pkg-verdict.sh"
}
