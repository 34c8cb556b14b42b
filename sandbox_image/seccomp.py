"""A seccomp filter for slot commands, in the spirit of Docker's default profile.

Docker's profile is an allow-list; this is the equivalent deny-list for what it refuses a
container's root without extra capabilities: kernel modules, kexec, reboot, the clock,
swap, accounting, quotas, keyrings, bpf, perf events, userfaultfd, io_uring, handle-based
opens, the mount API (old and new), new namespaces (unshare, setns, clone/clone3 with a
CLONE_NEW* flag), NUMA policy calls,
personality changes other than the usual ones, and the legacy syscalls nobody needs.
Denied calls fail with EPERM (ENOSYS for clone3, so libc falls back to clone, whose flags
the filter can read). Syscalls of a foreign ABI (x32 on x86_64, 32-bit compat) are refused
as a whole.

The program is classic BPF (`struct sock_filter` records), handed to bubblewrap with
`--seccomp FD`; it is built once per architecture and written to a file the server passes
to each command.
"""

from __future__ import annotations

import os
import platform
import struct

# BPF instruction classes / fields (linux/filter.h, linux/bpf_common.h).
_LD, _JMP, _RET, _ALU = 0x00, 0x05, 0x06, 0x04
_W, _ABS = 0x00, 0x20
_JEQ, _JGE, _JSET, _K = 0x10, 0x30, 0x40, 0x00
_AND = 0x50

_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_EPERM, _ENOSYS = 1, 38

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO = 0, 4, 16

_CLONE_NEW = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
              | 0x20000000 | 0x40000000 | 0x00000080)  # NS UTS IPC USER PID NET CGROUP TIME

# Denied everywhere (names; each architecture's table gives the numbers it has).
DENIED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "mbind", "migrate_pages", "mount", "move_pages", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "perf_event_open", "pivot_root", "query_module", "quotactl",
    "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns", "settimeofday",
    "swapoff", "swapon", "sysfs", "_sysctl", "syslog", "umount2", "unshare", "uselib",
    "userfaultfd", "ustat", "vm86", "vm86old", "fsconfig", "fsmount", "fsopen", "fspick",
    "move_mount", "open_tree", "mount_setattr", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "fanotify_init",
)

_X86_64 = {
    "acct": 163, "add_key": 248, "bpf": 321, "clock_adjtime": 305, "clock_settime": 227,
    "create_module": 174, "delete_module": 176, "finit_module": 313, "get_kernel_syms": 177,
    "get_mempolicy": 239, "init_module": 175, "ioperm": 173, "iopl": 172, "kcmp": 312,
    "kexec_file_load": 320, "kexec_load": 246, "keyctl": 250, "lookup_dcookie": 212,
    "mbind": 237, "migrate_pages": 256, "mount": 165, "move_pages": 279,
    "name_to_handle_at": 303, "nfsservctl": 180, "open_by_handle_at": 304,
    "perf_event_open": 298, "pivot_root": 155, "query_module": 178, "quotactl": 179,
    "quotactl_fd": 443, "reboot": 169, "request_key": 249, "set_mempolicy": 238,
    "setns": 308, "settimeofday": 164, "swapoff": 168, "swapon": 167, "sysfs": 139,
    "_sysctl": 156, "syslog": 103, "umount2": 166, "unshare": 272, "uselib": 134,
    "userfaultfd": 323, "ustat": 136, "fsconfig": 431, "fsmount": 432, "fsopen": 430,
    "fspick": 433, "move_mount": 429, "open_tree": 428, "mount_setattr": 442,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "process_vm_readv": 310, "process_vm_writev": 311, "adjtimex": 159,
    "fanotify_init": 300, "landlock_create_ruleset": 444,
    "clone": 56, "clone3": 435, "personality": 135,
}
_AARCH64 = {
    "acct": 89, "add_key": 217, "bpf": 280, "clock_adjtime": 266, "clock_settime": 112,
    "delete_module": 106, "finit_module": 273, "get_mempolicy": 236, "init_module": 105,
    "kcmp": 272, "kexec_file_load": 294, "kexec_load": 104, "keyctl": 219,
    "lookup_dcookie": 18, "mbind": 235, "migrate_pages": 238, "mount": 40,
    "move_pages": 239, "name_to_handle_at": 264, "nfsservctl": 42, "open_by_handle_at": 265,
    "perf_event_open": 241, "pivot_root": 41, "quotactl": 60, "quotactl_fd": 443,
    "reboot": 142, "request_key": 218, "set_mempolicy": 237, "setns": 268,
    "settimeofday": 170, "swapoff": 225, "swapon": 224, "syslog": 116, "umount2": 39,
    "unshare": 97, "userfaultfd": 282, "fsconfig": 431, "fsmount": 432, "fsopen": 430,
    "fspick": 433, "move_mount": 429, "open_tree": 428, "mount_setattr": 442,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "process_vm_readv": 270, "process_vm_writev": 271, "adjtimex": 171,
    "fanotify_init": 262, "landlock_create_ruleset": 444,
    "clone": 220, "clone3": 435, "personality": 92,
}
# machine -> (AUDIT_ARCH_*, syscall table, lowest number of a foreign ABI or None)
_ARCHES = {
    "x86_64": (0xC000003E, _X86_64, 0x40000000),  # x32 syscalls have bit 30 set
    "aarch64": (0xC00000B7, _AARCH64, None),
}
# personality(2) values Docker lets through: PER_LINUX, PER_LINUX32, UNAME26 variants, query.
_PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def _stmt(code: int, k: int) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)


def _jump(code: int, k: int, jt: int, jf: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def supported() -> bool:
    return platform.machine() in _ARCHES


def program(machine: str | None = None) -> bytes:
    """The filter for `machine` (default: this one) as `struct sock_filter` records.
    Raises ValueError for an architecture without a syscall table here."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp syscall table for {machine}")
    audit_arch, table, foreign = _ARCHES[machine]
    ld_nr = _stmt(_LD | _W | _ABS, _OFF_NR)
    deny = _stmt(_RET | _K, _SECCOMP_RET_ERRNO | _EPERM)
    allow = _stmt(_RET | _K, _SECCOMP_RET_ALLOW)
    denied = sorted({table[n] for n in DENIED if n in table})

    # Built back to front is error-prone; instead emit fixed-shape blocks with relative
    # jumps that each skip to the block after them.
    out = [
        _stmt(_LD | _W | _ABS, _OFF_ARCH),
        _jump(_JMP | _JEQ | _K, audit_arch, 1, 0),
        _stmt(_RET | _K, _SECCOMP_RET_KILL_PROCESS),  # another ABI of this CPU
        ld_nr,
    ]
    if foreign is not None:
        out += [_jump(_JMP | _JGE | _K, foreign, 0, 1), deny]
    for nr in denied:  # if nr == N: deny, else go on
        out += [_jump(_JMP | _JEQ | _K, nr, 0, 1), deny]
    # clone3's flags are in a struct the filter cannot read: ENOSYS makes libc use clone.
    out += [_jump(_JMP | _JEQ | _K, table["clone3"], 0, 1),
            _stmt(_RET | _K, _SECCOMP_RET_ERRNO | _ENOSYS)]
    # clone(flags, ...): refuse any CLONE_NEW* flag (x86_64 and arm64 both pass flags in arg0).
    out += [_jump(_JMP | _JEQ | _K, table["clone"], 0, 3),
            _stmt(_LD | _W | _ABS, _OFF_ARG0_LO),
            _jump(_JMP | _JSET | _K, _CLONE_NEW, 0, 1),
            deny,
            ld_nr]
    # personality(p): only the values Docker allows.
    ok = _PERSONALITY_OK
    out += [_jump(_JMP | _JEQ | _K, table["personality"], 0, len(ok) + 2),
            _stmt(_LD | _W | _ABS, _OFF_ARG0_LO)]
    for n, value in enumerate(ok):
        out.append(_jump(_JMP | _JEQ | _K, value, len(ok) - n, 0))
    out += [deny, allow]
    out.append(allow)
    return b"".join(out)


def write_program(path: str) -> str:
    """Write this machine's filter to `path` (read by each command's bwrap); returns it."""
    data = program()
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)
    return path
