// A libbpf CO-RE program written against the tree's vmlinux.h alone (no kernel headers):
// struct task_struct through the current task, struct file through vfs_read's first argument.
// The field offsets are relocated by libbpf against the running kernel's BTF at load time.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct seen {
	__u32 tgid;
	__u32 reads;
	__u64 ino;  // f_inode->i_ino of the last file this process read
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct seen);
} seen SEC(".maps");

SEC("kprobe/vfs_read")
int BPF_KPROBE(on_vfs_read, struct file *file)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct seen s = {};
	__u32 key = BPF_CORE_READ(task, tgid);
	struct seen *old = bpf_map_lookup_elem(&seen, &key);

	s.tgid = key;
	s.reads = old ? old->reads + 1 : 1;
	s.ino = BPF_CORE_READ(file, f_inode, i_ino);
	BPF_CORE_READ_STR_INTO(&s.comm, task, comm);
	bpf_map_update_elem(&seen, &key, &s, BPF_ANY);
	return 0;
}
