# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The kernel interface: the system calls the runtime makes through _ctypes
(clone, mount, umount2, setns, prctl, capset, statx, mmap), their errno
mapped to SetupError, and the file descriptor, /proc file and wait helpers
every step uses.

Knows nothing of runs, tmpfs tables or reports: it only wraps calls. It
imports only common and the standard library.
"""
import _ctypes  # the core of ctypes: see "C functions" below
import errno
import os
try:
    import _signal as signal  # Python 3: `import signal` pulls in enum (~3 ms)
except ImportError:  # Python 2
    import signal

from slapos.recipe.isolation.common import SetupError, fsencode

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36  # Linux 3.4
PR_SET_NO_NEW_PRIVS = 38     # Linux 3.5
PR_CAP_AMBIENT = 47          # Linux 4.3, commit 58319057b784
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_SYS_ADMIN = 21
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
O_CLOEXEC = getattr(os, 'O_CLOEXEC', 0o2000000)
O_DIRECTORY = getattr(os, 'O_DIRECTORY', 0o200000)
O_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0o400000)
# mount(2) flags
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_SYNCHRONOUS, MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME = 0x10, 0x80, 0x400, 0x800
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MS_RELATIME, MS_STRICTATIME = 0x200000, 0x1000000

# errno values by which a kernel or its confinement refuses namespaces or
# mounts: EPERM (seccomp, no CAP_SYS_ADMIN, Debian's unprivileged_userns_clone
# = 0), EACCES (AppArmor), ENOSPC (max_user_namespaces reached, or 0),
# EUSERS (the same before Linux 4.9), EINVAL (RHEL 7 kernels without
# user_namespace.enable=1), ENOSYS.
REFUSALS = (errno.EPERM, errno.EACCES, errno.ENOSPC, errno.EUSERS, errno.EINVAL, errno.ENOSYS)


def os_error(what, err=None, refusals=(errno.EPERM, errno.EACCES)):
    """-> SetupError 'what: <strerror>' for err (default: the C errno),
    unavailable if err is one of refusals."""
    if err is None:
        err = _ctypes.get_errno()
    return SetupError('%s: %s' % (what, os.strerror(err)), err in refusals)


# clone(2) has no libc wrapper that returns like fork, so it is called as a raw
# system call; its number and argument order depend on the architecture. With
# a NULL stack the child runs on a copy of the parent's stack, like fork.
_CLONE_SYSCALL = {
    'x86_64': (56, False), 'aarch64': (220, False), 'riscv64': (220, False),
    'loongarch64': (220, False), 'ppc64le': (120, False), 'ppc64': (120, False),
    'i386': (120, False), 'i486': (120, False), 'i586': (120, False),
    'i686': (120, False), 'armv7l': (120, False), 'armv6l': (120, False),
    's390x': (120, True),  # s390: clone(stack, flags, ...)
}

# -- C functions ---------------------------------------------------------------
# The few libc and Python C API functions needed are called through _ctypes,
# the core of ctypes, with the small layer below doing what ctypes.CDLL(None,
# use_errno=True) and ctypes.pythonapi do: importing the ctypes package itself
# costs ~2 ms more at each start (it defines some 40 classes and imports
# struct), and that is most of what isolate-exec adds to a run. _ctypes has
# had this interface since Python 2.5 (tests run it on 2.7 and 3.6 to 3.13).


class _Int(_ctypes._SimpleCData):
    _type_ = 'i'


class _Long(_ctypes._SimpleCData):
    _type_ = 'l'


class _ULong(_ctypes._SimpleCData):
    _type_ = 'L'


class _UInt32(_ctypes._SimpleCData):
    _type_ = 'I'


class _LibcFunction(_ctypes.CFuncPtr):
    """A C function returning int, which sets errno (ctypes.get_errno())."""
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _LibcLongFunction(_ctypes.CFuncPtr):
    """A C function returning long, which sets errno."""
    _flags_ = _LibcFunction._flags_
    _restype_ = _Long


class _PythonFunction(_ctypes.CFuncPtr):
    """A function of the Python C API, called holding the GIL."""
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI
    _restype_ = _Int


class _Program(object):
    """The running program and its libraries (libc, libpython): dlopen(NULL)."""
    _handle = _ctypes.dlopen(None, 2)  # RTLD_NOW


_functions = {}


def c_function(name, kind=_LibcFunction):
    """-> the C function name of the running program; AttributeError if
    there is none. Arguments: int, bytes (char *), None (NULL), _ULong..."""
    try:
        return _functions[name]
    except KeyError:
        function = _functions[name] = kind((name, _Program))
        return function


def prctl(option, arg2=0, arg3=0, what='prctl'):
    if c_function('prctl')(option, _ULong(arg2), _ULong(arg3), _ULong(0), _ULong(0)) < 0:
        raise os_error(what)


def clone_into_namespaces(flags):
    """Fork a child that starts in new namespaces. -> pid in the parent, 0 in
    the child (which is pid 1 of its pid namespace when flags has CLONE_NEWPID)."""
    machine = os.uname()[4]
    if machine not in _CLONE_SYSCALL:
        raise SetupError('clone: unsupported architecture %s' % machine)
    number, stack_first = _CLONE_SYSCALL[machine]
    flags |= signal.SIGCHLD
    args = (0, flags) if stack_first else (flags, 0)
    # The interpreter must do its fork bookkeeping as for os.fork: without it
    # Python 2 ignores every signal in the child (its handler checks getpid()
    # against the pid it saved), and locks or at-fork hooks could be stale.
    try:
        before = c_function('PyOS_BeforeFork', _PythonFunction)  # Python 3.7+
    except AttributeError:
        before = None
    else:
        before()
    pid = c_function('syscall', _LibcLongFunction)(
        number, _ULong(args[0]), _ULong(args[1]), None, None, _ULong(0))
    err = _ctypes.get_errno()
    if before is None:
        if pid == 0:
            c_function('PyOS_AfterFork', _PythonFunction)()
    elif pid == 0:
        c_function('PyOS_AfterFork_Child', _PythonFunction)()
    else:
        c_function('PyOS_AfterFork_Parent', _PythonFunction)()
    if pid < 0:
        raise os_error('create %s namespace' % ('user' if flags & CLONE_NEWUSER else 'mount'),
                        err, REFUSALS)
    return pid


def mount(source, target, fstype, flags, data, what):
    b = lambda s: None if s is None else fsencode(s)
    if c_function('mount')(b(source), b(target), b(fstype), _ULong(flags), b(data)) < 0:
        raise os_error(what)


def umount(target, flags, what):
    if c_function('umount2')(fsencode(target), flags) < 0:
        raise os_error(what)


def enter_mount_namespace(fd, what):
    """setns(2) into the mount namespace open as fd (Linux 3.8): the caller
    needs CAP_SYS_ADMIN in the user namespace owning it, which the supervisor
    has over the command's (it is in the parent user namespace, with the
    owner's uid); it also gets that namespace's root and working directory."""
    if c_function('setns')(fd, CLONE_NEWNS) < 0:
        raise os_error(what)


class _Char(_ctypes._SimpleCData):
    _type_ = 'c'


class _Statx(_ctypes.Array):
    _type_ = _Char
    _length_ = 256  # sizeof(struct statx)


STATX_MNT_ID = 0x1000  # Linux 5.8, commit fa2fcf4f1df1
AT_EMPTY_PATH = 0x1000


def mount_id(fd):
    """-> the id of the mount fd is on (statx STATX_MNT_ID), or None where the
    kernel or libc (glibc < 2.28) cannot tell. Unlike st_dev, it tells a bind
    mount of the same file system from the directory it is mounted on."""
    buf = _Statx()
    try:
        statx = c_function('statx')
    except AttributeError:
        return None
    if statx(fd, b'', AT_EMPTY_PATH, STATX_MNT_ID, buf) < 0:
        return None
    raw = bytearray(buf.raw)
    if not (raw[0] | raw[1] << 8) & STATX_MNT_ID:  # stx_mask: not filled in
        return None
    return sum(raw[144 + i] << (8 * i) for i in range(8))  # stx_mnt_id


def set_inheritable_capabilities(capabilities):
    """capset(2): make the inheritable set exactly capabilities (numbers
    below 32), keeping the permitted and effective sets."""
    class CapHeader(_ctypes.Structure):
        _fields_ = [('version', _UInt32), ('pid', _Int)]

    class CapData(_ctypes.Structure):
        _fields_ = [('effective', _UInt32), ('permitted', _UInt32), ('inheritable', _UInt32)]

    header = CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    if c_function('capget')(_ctypes.byref(header), data) < 0:
        raise os_error('capget')
    data[0].inheritable = sum(1 << cap for cap in capabilities)
    data[1].inheritable = 0
    if c_function('capset')(_ctypes.byref(header), data) < 0:
        raise os_error('capset')


# mmap(2) flags, the same on every architecture of _CLONE_SYSCALL (not on
# mips, sparc, alpha or parisc); MAP_POPULATE (Linux 2.5.46) faults every
# page in at once, several times faster than touching them one by one.
_PROT_READ_WRITE = 0x1 | 0x2
_MAP_PRIVATE_ANONYMOUS_POPULATE = 0x02 | 0x20 | 0x8000


def map_populated(size):
    """Map size bytes of anonymous memory, every page faulted in (charged to
    the cgroup at once). -> its address, or None if it cannot be had"""
    address = c_function('mmap', _LibcLongFunction)(
        None, _ULong(size), _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS_POPULATE, -1, _Long(0))
    return None if address == -1 else address


def unmap(address, size):
    c_function('munmap')(_ULong(address & ((1 << 64) - 1)), _ULong(size))


# -- file descriptors, /proc files, children -------------------------------------

def make_pipe():
    """A close-on-exec pipe whose ends are not 0, 1 or 2: with the standard
    streams closed, os.pipe() would return them, and a warning written to
    fd 2 would go into the pipe."""
    return [_above_stdio(fd) for fd in os.pipe()]


class _IntPair(_ctypes.Array):
    _type_ = _Int
    _length_ = 2


_AF_UNIX = _SOCK_STREAM = 1


def make_socketpair():
    """A close-on-exec connected pair of Unix stream sockets, not on 0, 1 or
    2: unlike a pipe's, neither end can be opened again through
    /proc/PID/fd/N (ENXIO), by a process that may look there. -> [fd, fd]"""
    pair = _IntPair()
    if c_function('socketpair')(_AF_UNIX, _SOCK_STREAM | O_CLOEXEC, 0, pair) < 0:
        err = _ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return [_above_stdio(fd) for fd in pair]


def _above_stdio(fd):
    """fd, moved to a number above 2 if it is 0, 1 or 2, close-on-exec"""
    if fd <= 2:
        import fcntl
        new = fcntl.fcntl(fd, fcntl.F_DUPFD, 3)
        os.close(fd)
        fd = new
    set_cloexec(fd)
    return fd


def set_cloexec(fd):
    import fcntl
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    if not flags & fcntl.FD_CLOEXEC:  # Python 3's fds already are (PEP 446)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)


def occupy_closed_stdio():
    """Open /dev/null on the standard file descriptors that are closed, so
    that no file or pipe of ours gets them (a warning would go there); the
    command gets them closed again. -> the closed ones"""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    return closed


def write_proc_file(path, text):
    """Write text to a /proc file in one write(2): the kernel takes an id
    map whole, from a single write. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | O_CLOEXEC)
    try:
        os.write(fd, text.encode('ascii'))
    finally:
        os.close(fd)


def open_directory(path, what):
    try:
        return os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except OSError as e:
        raise os_error('%s %s' % (what, path), e.errno, ())


def open_directory_entry(name, what):
    try:
        return os.open(name, os.O_RDONLY | O_CLOEXEC)
    except OSError as e:
        raise os_error('open %s' % what, e.errno, ())


def read_proc_file(name):
    """Read a file of the current directory (a /proc) whole."""
    fd = os.open(name, os.O_RDONLY | O_CLOEXEC)
    try:
        return read_all(fd)
    finally:
        os.close(fd)


def read_chunk(fd):
    """One read(2) of up to 64 KiB, retried on EINTR (Python 2 does not
    retry, PEP 475). -> bytes, b'' at EOF"""
    while True:
        try:
            return os.read(fd, 1 << 16)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise


def read_all(fd):
    chunks = []
    while True:
        chunk = read_chunk(fd)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


def waitpid(pid, options):
    while True:
        try:
            return os.waitpid(pid, options)
        except OSError as e:
            if e.errno != errno.EINTR:  # Python 2 does not retry (PEP 475)
                raise


def wait_command(pid):
    """Wait for the command, reaping every other child meanwhile (we are pid 1
    or a child subreaper: orphans are ours). -> wait status"""
    while True:
        reaped, status = waitpid(-1, 0)
        if reaped == pid:
            return status


def reap_children():
    """Reap the children that exited (as pid 1 or a subreaper, orphans too).
    -> True if no child is left: as pid 1 or a subreaper, no descendant is
    (every orphan comes back to us), whatever /proc shows at some instant"""
    while True:
        try:
            pid, _ = waitpid(-1, os.WNOHANG)
        except OSError as e:
            if e.errno == errno.ECHILD:
                return True
            raise
        if pid == 0:
            return False


def raw_wait_status_code(status):
    """Shell-style exit code of a wait status: the exit status, or 128+N for
    death by signal N (bash(1): "128+n")."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def set_child_subreaper():
    """Fallback mode: orphaned descendants (double fork, setsid) become the
    supervisor's children, so they can be found and killed (Linux 3.4)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1, what='prctl PR_SET_CHILD_SUBREAPER')
