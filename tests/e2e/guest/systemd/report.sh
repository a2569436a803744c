#!/bin/sh
# kh-e2e-report.service: write what systemd says about this boot to /var/lib/kh-e2e/report on the
# root (a host directory over 9p, read by the test after poweroff), then power off at once.
out=/var/lib/kh-e2e/report
rm -rf "$out"
mkdir -p "$out"
# step NAME: the guest's uptime as each step starts, to see where a slow report spends its time.
step() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >>"$out/steps"; }
step start
# "running", or "degraded" when a unit failed: either way the boot went on to its end.
systemctl is-system-running --wait >"$out/system-state"
step show
for unit in kheaders-pkg.service modprobe@kheaders.service dkms.service multi-user.target; do
    systemctl show "$unit" >"$out/$unit.show"
done
step journal
journalctl -b -o json -u kheaders-pkg.service >"$out/kheaders-pkg.journal.json"
# The manager's own boot timestamps. (systemd-analyze would print the same, but it took over a
# minute per call under TCG on a busy host; the job order is read from the units' timestamps.)
systemctl show >"$out/manager.show"
step files
systemctl list-units --failed --plain --no-legend >"$out/failed"
cp /run/kheaders-pkg/initramfs-verdict "$out/initramfs-verdict" 2>/dev/null
cp /run/kh-e2e/dkms-saw "$out/dkms-saw" 2>/dev/null
{ readlink -e "/lib/modules/$(uname -r)/build" || echo none; } >"$out/build"
uname -r >"$out/release"
step end
: >"$out/done"
sync
echo "kh-e2e: report written"
systemctl poweroff --force --force
