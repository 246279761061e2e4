"""The job process's sandbox: Landlock for files, TCP and signals; seccomp for sockets; no capabilities.

The worker builds a :class:`Policy` for each job (its folder, the data it may read, the paths it must
never reach) and the job's process applies it to itself with :func:`apply` before any job code runs.
Restrictions are inherited by every process the job starts and can never be lifted::

    read + execute   sys.prefix, sys.base_prefix, sys.exec_prefix, the sys.path entries, /usr, /lib,
                     /lib64, /bin, /sbin, /etc (the Python and system trees the job imports and runs)
    read             /proc, /sys (a process outside the job stays unreachable: Landlock refuses ptrace,
                     /proc/<pid>/mem and /environ across sandboxes), the settings' job_data_dirs and
                     the data path an admin's spec names
    read + write     the job's folder <home>/jobs/<id> (its temporary files live in its tmp/), and the
                     devices /dev/null, zero, full, random, urandom, nvidia*; /dev/shm for parallel
                     training only (its queues' semaphores, NCCL's buffers; other jobs' live there too)
    never            MODELPORT_HOME outside the job's folder (secrets/, blobs/, the SQLite file), the
                     master key file, the TLS key and the database file, even inside a tree granted above
    TCP              none; a parallel (gloo/NCCL) training job may bind ephemeral ports and connect to
                     ports in the ephemeral range (ip_local_port_range), where its ranks listen: not
                     the database's port, nor any service on a fixed port
    signals          only to the job's own processes (scope SIGNAL); abstract UNIX sockets of the job only
    sockets          no AF_UNIX socket (Landlock does not cover connecting to a path's socket: the fork
                     server's, the database's), no AF_PACKET, no io_uring; AF_INET only for TCP jobs
    capabilities     all dropped (bounding set too), and root gains none at exec (securebits)

Landlock features the running kernel lacks are masked (ABI 1 files, 2 refer, 3 truncate, 4 TCP, 5 device
ioctl, 6 scopes). Where Landlock is missing altogether, ``job_sandbox`` decides: ``required`` fails the
job, ``best-effort`` (the default) runs it with the seccomp and capability parts only, ``off`` applies
nothing. Either way the job's process holds no database connection and no master key (``services.py``).

This module is Linux/x86_64 and aarch64 only, by ctypes (no dependency); elsewhere Landlock is
"unavailable".
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import re
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("modelport.worker")

Mode = Literal["required", "best-effort", "off"]

# -- Landlock ABI (include/uapi/linux/landlock.h) ---------------------------------------------------
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
"""The rights a rule on a file (not a folder) may carry."""
READ_EXEC = EXECUTE | READ_FILE | READ_DIR
READ = READ_FILE | READ_DIR
READ_WRITE = _FS_BY_ABI[5] & ~(MAKE_CHAR | MAKE_BLOCK | IOCTL_DEV)
DEVICE = READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV

SYSTEM_TREES = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")
KERNEL_TREES = ("/proc", "/sys")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SHARED_MEMORY = "/dev/shm"

# -- seccomp (include/uapi/linux/seccomp.h, filter.h, audit.h) ---------------------------------------
_ARCHES = {"x86_64": (0xC000003E, 41, True), "aarch64": (0xC00000B7, 198, False)}
"""machine -> (AUDIT_ARCH_*, __NR_socket, has the x32 ABI whose numbers carry bit 30)."""
_NR_IO_URING_SETUP = 425
_AF_UNIX, _AF_INET, _AF_INET6, _AF_PACKET = 1, 2, 10, 17
_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JGE, _BPF_RET = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000

# -- prctl / capabilities -----------------------------------------------------------------------------
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_PR_CAPBSET_DROP, _PR_SET_SECUREBITS, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT = 24, 28, 38, 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_SETPCAP = 8
_SECUREBITS_LOCKED_DOWN = 0b11101111
"""NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE, each locked, and KEEP_CAPS locked off."""
_CAPABILITY_VERSION_3 = 0x20080522


class SandboxError(Exception):
    """The sandbox could not be applied as the policy and the mode require; the message says why."""


@dataclass(frozen=True, slots=True)
class Policy:
    """What one job's process may reach besides the system trees; built by the worker (which knows
    the settings and the spec), applied by the job's process to itself."""

    mode: Mode
    workdir: str
    read: tuple[str, ...] = ()
    """Read-only: job_data_dirs and the data paths the spec names."""
    forbidden: tuple[str, ...] = ()
    """Never granted, even inside a granted tree: the home, key files, the database file."""
    parallel: bool = False
    """Parallel training: ephemeral TCP ports and /dev/shm for its ranks (gloo/NCCL)."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What :func:`apply` put in place: the Landlock ABI used (0: none), and what was skipped."""

    abi: int
    warnings: tuple[str, ...] = ()


# -- probing --------------------------------------------------------------------------------------------
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


@functools.cache
def landlock_abi() -> tuple[int, str]:
    """The kernel's Landlock ABI version, or 0 and why it cannot be used."""
    if sys.platform != "linux" or platform.machine() not in _ARCHES:
        return 0, f"Landlock needs Linux on {' or '.join(_ARCHES)}"
    libc = _libc()
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    if version < 1:
        code = ctypes.get_errno()
        why = {errno.ENOSYS: "the kernel has no Landlock", errno.EOPNOTSUPP: "Landlock is disabled at boot"}
        return 0, why.get(code, f"Landlock is refused here ({errno.errorcode.get(code, code)})")
    return int(version), ""


_warned = False


def check(mode: Mode) -> str | None:
    """The worker's check before it starts a job: None when it may start (best-effort warns once per
    process where Landlock is missing), else the message the job fails with (``required``)."""
    global _warned
    if mode == "off":
        return None
    abi, why = landlock_abi()
    if abi:
        return None
    if mode == "required":
        return f"the job sandbox is required (job_sandbox=required) but unavailable: {why}"
    if not _warned:
        _warned = True
        log.warning("job sandbox: %s; jobs run without file and network isolation (MODELPORT_JOB_SANDBOX)", why)
    return None


# -- applying -------------------------------------------------------------------------------------------
def apply(policy: Policy) -> Applied:
    """Restrict this process, for good: no new privileges, no capabilities, Landlock, seccomp.

    Must run while the process has one thread: Landlock and seccomp bind the calling thread (and what
    it starts), so a thread started earlier would stay free. Raises SandboxError where ``required``
    cannot be met; in ``best-effort`` what could not be applied comes back in ``warnings``.
    """
    if policy.mode == "off":
        return Applied(abi=0)
    warnings: list[str] = []
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads != 1:
        _degrade(policy, warnings, f"the job's process has {threads} threads (the sandbox binds one)")
        return Applied(abi=0, warnings=tuple(warnings))
    libc = _libc()
    abi, why = landlock_abi()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("no new privileges", lambda: _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)),
        ("capabilities", lambda: _drop_capabilities(libc)),
        ("Landlock", lambda: _landlock(libc, abi, policy)),
        ("seccomp", lambda: _seccomp(libc, tcp=policy.parallel)),
    ]
    if not abi:  # the worker has warned of it once (check); required has failed the job there already
        if policy.mode == "required":
            raise SandboxError(f"the job sandbox is required but {why}")
        steps.pop(2)
    elif policy.parallel and abi < 4:
        _degrade(policy, warnings, f"Landlock ABI {abi} has no TCP rules: this parallel job may reach any port")
    landlocked = 0
    for name, step in steps:
        try:
            step()
        except (SandboxError, OSError) as exc:
            _degrade(policy, warnings, f"{name}: {exc}")
            if name == "no new privileges":  # Landlock and seccomp need it
                break
            continue
        landlocked = abi if name == "Landlock" else landlocked
    return Applied(abi=landlocked, warnings=tuple(warnings))


def _degrade(policy: Policy, warnings: list[str], why: str) -> None:
    if policy.mode == "required":
        raise SandboxError(f"the job sandbox is required but {why}")
    warnings.append(why)


def _prctl(libc: ctypes.CDLL, option: int, arg: int = 0) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise SandboxError(f"prctl({option}) failed: {os.strerror(ctypes.get_errno())}")


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """No capability left, none to gain: a job running as root reads, traces and mounts like nobody."""
    status = Path("/proc/self/status").read_text()
    held = {m[1]: int(m[2], 16) for m in re.finditer(r"^Cap(Eff|Prm|Inh|Bnd|Amb):\s*([0-9a-f]+)$", status, re.M)}
    if held.get("Eff", 0) & (1 << _CAP_SETPCAP):
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            _prctl(libc, _PR_CAPBSET_DROP, cap)
        _prctl(libc, _PR_SET_SECUREBITS, _SECUREBITS_LOCKED_DOWN)
    if held.get("Amb", 0):
        _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    if held.get("Eff", 0) or held.get("Prm", 0) or held.get("Inh", 0):
        header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all empty
        if libc.capset(header, data) != 0:
            raise SandboxError(f"capset failed: {os.strerror(ctypes.get_errno())}")


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


def _landlock(libc: ctypes.CDLL, abi: int, policy: Policy) -> None:
    fs = _FS_BY_ABI[min(abi, 5)]
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    if ruleset < 0:
        raise SandboxError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        _add_path_rule(libc, ruleset, Path(policy.workdir), READ_WRITE & fs)  # inside the home: never carved
        forbidden = [Path(p) for p in policy.forbidden]
        for path, rights in rules(policy):
            for target, allowed in _carved(Path(path), rights, forbidden):
                _add_path_rule(libc, ruleset, target, allowed & fs)
        if net and policy.parallel:
            _add_port_rule(libc, ruleset, 0, NET_BIND_TCP)  # port 0: bind(2) picks an ephemeral port
            low, high = ephemeral_ports()
            for port in range(low, high + 1):
                _add_port_rule(libc, ruleset, port, NET_CONNECT_TCP)
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise SandboxError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def rules(policy: Policy) -> list[tuple[str, int]]:
    """The path rules of ``policy``, before carving: (path, rights)."""
    system = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *SYSTEM_TREES]
    system += [p or os.getcwd() for p in sys.path]
    out = [(p, READ_EXEC) for p in system]
    out += [(p, READ) for p in (*KERNEL_TREES, *policy.read)]
    out += [(p, DEVICE) for p in DEVICES]
    out += [(str(p), DEVICE) for p in sorted(Path("/dev").glob("nvidia*"))]  # CUDA's device files
    if policy.parallel:
        out += [(SHARED_MEMORY, READ_WRITE)]
    return out


def _carved(path: Path, rights: int, forbidden: list[Path]) -> Iterator[tuple[Path, int]]:
    """``path`` itself, or, when a forbidden path lies inside it, each of its entries but the way to
    that path (recursively), so that nothing forbidden is ever beneath a rule. Symlinks are resolved
    first: a rule lands on what a name points to."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return  # missing: nothing to grant
    if any(real == f or real.is_relative_to(f) for f in forbidden):
        return
    if not any(f.is_relative_to(real) for f in forbidden):
        yield real, rights
        return
    try:
        entries = sorted(real.iterdir())
    except OSError:
        return
    for entry in entries:
        yield from _carved(entry, rights, forbidden)


def _add_path_rule(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        if not rights:
            return
        attr = _PathBeneathAttr(rights, fd)
        if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(attr), 0) != 0:
            raise SandboxError(f"landlock_add_rule({path.name!r}) failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _add_port_rule(libc: ctypes.CDLL, ruleset: int, port: int, rights: int) -> None:
    attr = _NetPortAttr(rights, port)
    if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(attr), 0) != 0:
        raise SandboxError(f"landlock_add_rule(port {port}) failed: {os.strerror(ctypes.get_errno())}")


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's ephemeral port range: where bind(port 0) lands, so where parallel ranks listen."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


# -- seccomp --------------------------------------------------------------------------------------------
class _SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def seccomp_program(machine: str, *, tcp: bool) -> list[tuple[int, int, int, int]]:
    """The BPF filter: other ABIs and io_uring refused (EPERM); socket(2) of a refused family EACCES."""
    arch, nr_socket, x32 = _ARCHES[machine]
    families = [_AF_UNIX, _AF_PACKET] + ([] if tcp else [_AF_INET, _AF_INET6])
    # (op, k, label): "ld" loads the word at offset k; "jeq"/"jge" jump to label when true, "jne" when
    # false; otherwise the next instruction runs. Labels are the returns at the end.
    body: list[tuple[str, int, str]] = [("ld", 4, ""), ("jne", arch, "eperm"), ("ld", 0, "")]
    if x32:
        body.append(("jge", 0x40000000, "eperm"))
    body += [("jeq", _NR_IO_URING_SETUP, "eperm"), ("jne", nr_socket, "allow"), ("ld", 16, "")]
    body += [("jeq", family, "eacces") for family in families]
    returns = {"allow": _RET_ALLOW, "eperm": _RET_ERRNO | errno.EPERM, "eacces": _RET_ERRNO | errno.EACCES}
    at = {label: len(body) + i for i, label in enumerate(returns)}
    program = []
    for i, (op, k, label) in enumerate(body):
        jump = at[label] - i - 1 if label else 0
        if op == "ld":
            program.append((_BPF_LD_W_ABS, 0, 0, k))
        elif op == "jne":
            program.append((_BPF_JEQ, 0, jump, k))
        else:
            program.append((_BPF_JEQ if op == "jeq" else _BPF_JGE, jump, 0, k))
    program += [(_BPF_RET, 0, 0, value) for value in returns.values()]
    return program


def _seccomp(libc: ctypes.CDLL, *, tcp: bool) -> None:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise SandboxError(f"no seccomp filter for {machine}")
    program = seccomp_program(machine, tcp=tcp)
    filters = (_SockFilter * len(program))(*(_SockFilter(*op) for op in program))
    prog = _SockFprog(len(program), filters)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise SandboxError(f"seccomp could not be installed: {os.strerror(ctypes.get_errno())}")
