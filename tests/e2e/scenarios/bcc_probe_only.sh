# Can bcc work in this guest at all? (bpf syscall, kprobes, tracefs; headers from wherever bcc finds them)
put kprobes "$(zcat /proc/config.gz 2>/dev/null | grep -c '^CONFIG_KPROBES=y')"
put tracefs "$(ls /sys/kernel/tracing/kprobe_events >/dev/null 2>&1 && echo 1 || echo 0)"
t0=$(date +%s)
record bcc /usr/bin/python3.11 "$KH_CHECKOUT/tests/e2e/guest/bcc_probe.py"
put bcc.seconds $(($(date +%s) - t0))
