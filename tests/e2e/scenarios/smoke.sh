# The harness itself: identity of the live kernel, a writable /lib/modules, the host's Python.
kver=$(uname -r)
put uname "$kver"
put notes_sha256 "$(sha256 /sys/kernel/notes)"
put archive_sha256 "$(sha256 /sys/kernel/kheaders.tar.xz)"
mkdir -p "/lib/modules/$kver" && touch "/lib/modules/$kver/.e2e-probe" &&
	rm "/lib/modules/$kver/.e2e-probe" && put modules_writable 1
touch /usr/src/.e2e-probe && rm /usr/src/.e2e-probe && put usr_src_writable 1
put python "$(/usr/bin/python3.11 -c 'print(1)')"
