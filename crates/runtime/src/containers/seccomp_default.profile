# containerd's default seccomp profile (RuntimeDefault), as facts in berth's notation;
# containerd v2.3.4 (db8809540e1a7a9da5d518876894933ff55692ab), contrib/seccomp/seccomp_default.go,
# DefaultProfile; the file is identical on main at 301026e58c619e63d09c0ec411012e54c0124b03.
# Derived from moby profiles/seccomp/default.json. Only the x86_64 and aarch64 views are written here.

# Default action is errno, with no errno given, so the runtime's EPERM (1) applies.
default errno 1

# Architectures: native arch first, then the extra arches.
arch x86_64 x86 x32
arch aarch64 arm

# Allowed unconditionally.
allow accept accept4 access adjtimex alarm bind brk cachestat capget capset
allow chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
allow clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
allow epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2
allow execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark
allow fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync
allow fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs
allow fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake
allow futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid
allow getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
allow getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname
allow getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init
allow inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set
allow io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr
allow link linkat listen listmount listxattr listxattrat llistxattr _llseek lremovexattr lseek
allow lsetxattr lsm_get_self_attr lsm_list_modules lsm_set_self_attr lstat lstat64 madvise membarrier memfd_create memfd_secret
allow mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall map_shadow_stack mmap
allow mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink
allow mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
allow name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal
allow pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64
allow preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
allow readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
allow removexattr removexattrat rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
allow rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
allow sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
allow seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64
allow sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups
allow setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32
allow setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
allow setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
allow sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount
allow statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
allow timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
allow timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink
allow unlinkat uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid
allow waitpid write writev

# socket: every address family except AF_ALG (38) and AF_VSOCK (40) is allowed.
# This is written as three separate rules because the source uses three. Any
# family that matches none of them gets the default errno. socketcall is still
# allowed above, so the 32-bit socketcall path gets no family filtering.
rule allow socket args 0 lt 38
rule allow socket args 0 eq 39
rule allow socket args 0 gt 40

# personality is allowed only for these exact arg0 values.
rule allow personality args 0 eq 0x0
rule allow personality args 0 eq 0x0008
rule allow personality args 0 eq 0x20000
rule allow personality args 0 eq 0x20008
rule allow personality args 0 eq 0xffffffff

# containerd allows these only when the HOST kernel is >= 4.8. Our notation has
# no kernel gate, so they are listed as unconditional. On any current host the
# result is the same. The same names also appear under CAP_SYS_PTRACE below.
allow process_vm_readv process_vm_writev ptrace

# Arch-specific groups (containerd picks them from runtime.GOARCH).
allow-if arch=x86_64 arch_prctl modify_ldt
allow-if arch=aarch64 arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls

# Capability-gated groups. containerd reads these from the spec's bounding set.
allow-if cap=CAP_DAC_READ_SEARCH open_by_handle_at
allow-if cap=CAP_SYS_ADMIN bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
allow-if cap=CAP_SYS_ADMIN mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog
allow-if cap=CAP_SYS_ADMIN umount umount2 unshare
allow-if cap=CAP_SYS_BOOT reboot
allow-if cap=CAP_SYS_CHROOT chroot
allow-if cap=CAP_SYS_MODULE delete_module init_module finit_module
allow-if cap=CAP_SYS_PACCT acct
allow-if cap=CAP_SYS_PTRACE kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace
allow-if cap=CAP_SYS_RAWIO iopl ioperm
allow-if cap=CAP_SYS_TIME settimeofday stime clock_settime clock_settime64
allow-if cap=CAP_SYS_TTY_CONFIG vhangup
allow-if cap=CAP_SYS_NICE get_mempolicy mbind set_mempolicy set_mempolicy_home_node
allow-if cap=CAP_SYSLOG syslog
allow-if cap=CAP_BPF bpf
allow-if cap=CAP_PERFMON perf_event_open

# Rules that apply only when CAP_SYS_ADMIN is NOT in the bounding set.
# clone: arg0 masked with CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP
# (0x7E020000 = 2114060288) must equal 0. This is arg0 on x86_64 and aarch64
# (s390 uses arg1). In other words, clone with no new-namespace flags.
rule-if nocap=CAP_SYS_ADMIN allow clone args 0 masked_eq 0x7E020000 0
# clone3 returns ENOSYS (38) instead of the default EPERM, so libc falls back to clone.
# The rule has no argument conditions.
rule-if nocap=CAP_SYS_ADMIN errno:38 clone3
