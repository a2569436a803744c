// What a header consumer sees: compiled on the host with bcc's include flags against a tree.
#include <linux/version.h>
#include <linux/sched.h>
#include <linux/fs.h>
#include <net/sock.h>

#ifndef KH_CORPUS_VARIANT
#define KH_CORPUS_VARIANT 0 /* the kh-b kernel adds this define to include/linux/kernel.h */
#endif

unsigned long kh_version_code = LINUX_VERSION_CODE;
unsigned long kh_sizeof_task_struct = sizeof(struct task_struct);
unsigned long kh_sizeof_file = sizeof(struct file);
unsigned long kh_sizeof_sock = sizeof(struct sock);
unsigned long kh_corpus_variant = KH_CORPUS_VARIANT;
