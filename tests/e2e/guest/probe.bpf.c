// A bcc kprobe program that needs real kernel headers: task_struct, struct file, struct sock.
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include <linux/fs.h>
#include <net/sock.h>

struct seen_t {
	u32 tgid;
	u32 pid;
	char comm[TASK_COMM_LEN];
	u64 sizes;  // sizeof(struct file) << 32 | sizeof(struct sock): fs.h and sock.h were parsed
};

BPF_HASH(seen, u32, struct seen_t);

int on_getpid(struct pt_regs *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct seen_t s = {};

	s.tgid = task->tgid;
	s.pid = task->pid;
	bpf_get_current_comm(&s.comm, sizeof(s.comm));
	s.sizes = ((u64)sizeof(struct file) << 32) | sizeof(struct sock);
	seen.update(&s.tgid, &s);
	return 0;
}
