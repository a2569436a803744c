# After scenario S on the Debian 6.1 kernel: bcc compiles, loads and attaches its kprobe program
# against the headers the merged extension shows at /lib/modules/$(uname -r)/build.
rm -rf /tmp/kheaders-*
record bcc /usr/bin/python3.11 "$KH_CHECKOUT/tests/e2e/guest/bcc_probe.py"
find /tmp -mindepth 1 -maxdepth 1 -name 'kheaders-*' | wc -l | put64 bcc_tmp_extractions
