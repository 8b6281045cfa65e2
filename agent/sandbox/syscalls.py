"""Thin ctypes wrappers around the Linux system calls the job sandbox needs (standard library only).

Python 3.11 has no `os.unshare`, `mount`, `capset` or Landlock bindings. Every wrapper raises OSError with
the errno on failure, so callers can record *why* a protection is not in force. Nothing here runs on
macOS: `available()` says so and callers skip the Linux sandbox there.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

# Syscall numbers that glibc may not wrap (same on x86_64 and aarch64: they were added after the
# syscall tables were unified in 5.x; capset differs).
_NR = {
    "x86_64": {"capset": 126, "mount_setattr": 442, "ll_create": 444, "ll_add": 445, "ll_restrict": 446},
    "aarch64": {"capset": 91, "mount_setattr": 442, "ll_create": 444, "ll_add": 445, "ll_restrict": 446},
    "armv7l": {"capset": 185, "mount_setattr": 442, "ll_create": 444, "ll_add": 445, "ll_restrict": 446},
}


def available() -> bool:
    return sys.platform.startswith("linux") and platform.machine() in _NR


@functools.cache
def _lib() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _nr(name: str) -> int:
    return _NR[platform.machine()][name]


def unshare(flags: int) -> None:
    _check(_lib().unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(
        _lib().mount(enc(source), target.encode(), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {target}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def make_tree_readonly(path: str) -> None:
    """Every mount at or below `path` read-only, in this mount namespace (mount_setattr, Linux 5.12+)."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(
        _lib().syscall(
            ctypes.c_long(_nr("mount_setattr")),
            ctypes.c_int(AT_FDCWD),
            path.encode(),
            ctypes.c_uint(AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"mount_setattr {path}",
    )


def prctl(option: int, arg2: int = 0) -> None:
    _check(
        _lib().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), *(ctypes.c_ulong(0),) * 3),
        f"prctl {option}",
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_all_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets, and set no_new_privs: nothing
    this process or its descendants exec can regain a privilege (setuid binaries included)."""
    cap = 0
    while True:
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            break  # EINVAL past the last capability this kernel knows
        cap += 1
    with contextlib.suppress(OSError):  # kernels before 4.3 have no ambient set
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_lib().syscall(ctypes.c_long(_nr("capset")), ctypes.byref(header), ctypes.byref(data)), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


# ---------------------------------------------------------------------------------------------- Landlock

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
#: Every right that changes the filesystem (ABI 1), handled so that only granted folders allow them.
FS_MODIFY = (
    FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_CHAR
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_MAKE_BLOCK
    | FS_MAKE_SYM
)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel (0 when Landlock is absent or disabled)."""
    if not available():
        return 0
    r = _lib().syscall(
        ctypes.c_long(_nr("ll_create")), None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)
    )
    return max(0, int(r))


def landlock_writes_only_beneath(writable: list[tuple[str, bool]]) -> None:
    """Restrict this process (and what it starts) so it may change the filesystem only beneath `writable`:
    (path, True) grants every change beneath path; (path, False) only writing to files that exist there
    (device nodes such as /dev/null or a GPU). Reading and executing stay as the other layers allow;
    device ioctls are not handled, so GPUs keep working."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError(95, "Landlock is not available in this kernel")
    handled = FS_MODIFY | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled)
    lib = _lib()
    ruleset = _check(
        lib.syscall(ctypes.c_long(_nr("ll_create")), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0),
        "landlock_create_ruleset",
    )
    try:
        for path, whole in writable:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rights = handled if whole and os.path.isdir(path) else handled & (FS_WRITE_FILE | FS_TRUNCATE)
                rule = _PathBeneath(rights, fd)
                _check(
                    lib.syscall(
                        ctypes.c_long(_nr("ll_add")),
                        ctypes.c_int(ruleset),
                        ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                        ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    ),
                    f"landlock_add_rule {path}",
                )
            finally:
                os.close(fd)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        _check(lib.syscall(ctypes.c_long(_nr("ll_restrict")), ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock")
    finally:
        os.close(ruleset)
