# Modules built on the host against the tree `sync --kbuild` made for this kernel: the kernel
# refuses the one built with a wrong CRC in Module.symvers, and loads the one built with the
# recovered Module.symvers (an EXPORT_SYMBOL_GPL, a namespaced export, virtio.ko's export).
put kbuild_loaded_before "$(grep -c '^kh_hello ' /proc/modules)"
record kbuild_wrong insmod "$E2E/kbuild/wrong/kh_hello.ko"
record kbuild_good insmod "$E2E/kbuild/good/kh_hello.ko"
grep '^kh_hello ' /proc/modules | put64 kbuild_proc_modules
dmesg | grep 'kh_hello' | put64 kbuild_dmesg
rmmod kh_hello 2>/dev/null
