/* slot-enter: run one command inside a live slot container (sandbox_image/container.py).
 *
 *   slot-enter PIDFD SECCOMP_FD CWD [-j CGROUP_FILE]... [-e KEY=VALUE]... -- ARGV...
 *
 * Started by the slot server (as root, with a fixed environment) with PIDFD a pidfd of the
 * container's pid 1 and SECCOMP_FD the slot filter (struct sock_filter records). In order:
 *   1. join the slot's cgroups: "0" to each CGROUP_FILE (a self-move: v1 `tasks` or v2
 *      `cgroup.procs`), so the command and all it starts count against the slot's limits;
 *   2. setns(PIDFD, user|mnt|pid|net|ipc|uts|cgroup): all of the container's namespaces at once,
 *      through the pidfd (a pid number could name another process by now; a pidfd cannot);
 *   3. become root of the slot's user namespace (an unprivileged uid on the host, as its
 *      uid map says) with no extra groups;
 *   4. fork (a pid namespace is entered by the children of whoever joined it); the parent
 *      waits and exits as the child did (128+N for signal N), so the server's view of the
 *      command is this process;
 *   5. in the child: Docker's default capabilities only (bounding set and the rest),
 *      no_new_privs, the seccomp filter, an environment of exactly the -e pairs, CWD, exec.
 * Any failure before the exec exits 125 with one line on stderr. Nothing of the caller's
 * environment is read: host processes never see an image's or a request's variables.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAIL 125
#define MAX_FILTER 4096

/* Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
 * NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP. */
static const int keep[] = {0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31};

static void die(const char *what) {
    fprintf(stderr, "slot-enter: %s: %s\n", what, strerror(errno));
    _exit(FAIL);
}

static int kept(int cap) {
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (keep[i] == cap) return 1;
    return 0;
}

static void drop_capabilities(void) {
    for (int cap = 0; cap <= 63; cap++) {
        if (kept(cap)) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) die("capability bounding set");
    }
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        data[keep[i] / 32].effective |= 1u << (keep[i] % 32);
        data[keep[i] / 32].permitted |= 1u << (keep[i] % 32);
        data[keep[i] / 32].inheritable |= 1u << (keep[i] % 32);
    }
    if (syscall(SYS_capset, &hdr, data) != 0) die("capset");
}

static void load_filter(int fd) {
    static struct sock_filter code[MAX_FILTER];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)code + got, sizeof code - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("reading the seccomp filter");
        }
        if (n == 0) break;
        got += (size_t)n;
        if (got == sizeof code) break;
    }
    close(fd);
    if (got == 0 || got % sizeof code[0]) {
        errno = EINVAL;
        die("seccomp filter");
    }
    struct sock_fprog prog = {(unsigned short)(got / sizeof code[0]), code};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) die("seccomp");
}

static void join_cgroup(const char *path) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) die(path);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: slot-enter PIDFD SECCOMP_FD CWD [-j FILE]... [-e K=V]... -- ARGV...\n");
        return FAIL;
    }
    int pidfd = atoi(argv[1]), filter = atoi(argv[2]);
    const char *cwd = argv[3];
    int envc = 0, i = 4;
    char **env = calloc((size_t)argc + 1, sizeof *env);
    if (!env) die("calloc");
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (i + 1 >= argc) break;
        if (strcmp(argv[i], "-j") == 0) join_cgroup(argv[++i]);
        else if (strcmp(argv[i], "-e") == 0) env[envc++] = argv[++i];
        else {
            fprintf(stderr, "slot-enter: unknown option %s\n", argv[i]);
            return FAIL;
        }
    }
    if (i >= argc - 1) {
        fprintf(stderr, "slot-enter: no command after --\n");
        return FAIL;
    }
    char **command = argv + i + 1;

    if (setns(pidfd, CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC |
                         CLONE_NEWUTS | CLONE_NEWCGROUP) != 0)
        die("entering the slot's namespaces");
    close(pidfd);
    if (setgroups(0, NULL) != 0) die("setgroups");
    if (setresgid(0, 0, 0) != 0) die("setresgid");
    if (setresuid(0, 0, 0) != 0) die("setresuid");

    pid_t child = fork();
    if (child < 0) die("fork");
    if (child > 0) {
        int status;
        close(filter);
        while (waitpid(child, &status, 0) < 0)
            if (errno != EINTR) die("waitpid");
        if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
        return WEXITSTATUS(status);
    }
    /* The parent is outside the slot's pid namespace: getppid() says 0 here, so a parent
     * killed before this line is not detected; the server kills the whole process group. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) die("pdeathsig");
    if (chdir(cwd) != 0) die(cwd);
    drop_capabilities();
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("no_new_privs");
    load_filter(filter);
    execve(command[0], command, env);
    die(command[0]);
    return FAIL;
}
