// SPDX-License-Identifier: GPL-2.0
/*
 * A module that imports one symbol of each kind a module build must version: a vmlinux
 * EXPORT_SYMBOL_GPL (init_uts_ns), a namespaced vmlinux export (crypto_cipher_setkey, in
 * CRYPTO_INTERNAL) and a module's export (is_virtio_device, from virtio.ko). Its __versions
 * then carries the CRCs the kernel compares at load time.
 */
#include <linux/module.h>
#include <linux/utsname.h>
#include <crypto/internal/cipher.h>
#include <linux/virtio.h>

MODULE_IMPORT_NS(CRYPTO_INTERNAL);

static int __init kh_hello_init(void)
{
	pr_info("kh_hello: loaded on %s (%ps, %ps)\n", init_uts_ns.name.release,
		crypto_cipher_setkey, is_virtio_device);
	return 0;
}

static void __exit kh_hello_exit(void)
{
}

module_init(kh_hello_init);
module_exit(kh_hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kheaders-pkg kbuild test module");
