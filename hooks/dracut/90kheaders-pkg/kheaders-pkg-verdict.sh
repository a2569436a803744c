#!/bin/sh
# kheaders-pkg pre-pivot hook: record the headers verdict for kheaders-pkg.service.
# Sourced into dracut's init shell: no shell options, no exit, and it never fails the boot.
# A `.` of a missing file would abort dracut's init shell, so test the library first.
_kh_lib=${KHEADERS_PKG_HOOKLIB:-/usr/lib/kheaders-pkg/kheaders-pkg-verdict.sh}
if [ -r "$_kh_lib" ]; then
    # shellcheck source=../../lib/kheaders-pkg-verdict.sh
    . "$_kh_lib" && kheaders_pkg_verdict "${NEWROOT:-}"
fi
:
