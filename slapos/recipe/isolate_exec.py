# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""isolate-exec: run a command with private /tmp and /dev/shm, report what it leaked.

This module is the whole runtime of slapos.recipe.isolatedtest. It runs inside
software releases whose Python may still be 2.7, so it uses the standard
library only, and does every namespace operation with direct system calls
through _ctypes (no unshare(1) or mount(1), whose versions vary).

How a run is laid out (isolated mode)::

  isolate-exec (host namespaces: parses options, forwards signals, reports)
   `- supervisor: clone(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID), so pid 1 of
      a new pid namespace; it sets up the mounts, starts the command, reaps
      orphans, then lists and kills leaked processes, diffs the mount table
      and walks the private tmpfs; it sends all that back through a pipe
       `- COMMAND (own process group; non-root: CAP_SYS_ADMIN only)

When the supervisor exits, the kernel kills whatever is left in its pid
namespace and frees the private tmpfs with the mount namespace. If the setup
fails, the supervisor reports the failing step and exits; isolate-exec then
runs the command in fallback mode (private TMPDIR, child subreaper).
"""
import _ctypes  # the core of ctypes: see "C functions" below
import errno
import marshal
import os
import stat
import sys
import time
try:
    import _signal as signal  # Python 3: `import signal` pulls in enum (~3 ms)
except ImportError:  # Python 2
    import signal

__version__ = '0.1'
PROG = 'isolate-exec'
PY2 = sys.version_info[0] == 2

# PRIVATE_TMPFS is the one table of private mounts: every run mounts a fresh
# tmpfs on each of these paths (with these default options), walks it for
# leaked files after the command, and the tests check each of them. --tmpfs
# PATH:OPTIONS changes the options of an entry or adds one.
PRIVATE_TMPFS = (
    ('/tmp', 'mode=1777'),
    ('/dev/shm', 'mode=1777'),
)

# Code run before importing this module by the scripts that start it with a
# sys.path of eggs (the recipes' wrappers, the suite runner's cases): it sets
# up the namespace packages slapos and slapos.recipe as slapos/__init__.py
# would, with the slapos directories of sys.path. zc.buildout (pip, or
# setuptools for wheels) writes into installed eggs an __init__.py that
# imports pkg_resources: ~130 ms and ~17 MiB at each start.
NAMESPACE_SETUP = '''\
import os, sys
for _name in ('slapos', 'slapos.recipe'):
    if _name not in sys.modules:  # not set up yet (pkg_resources, a .pth file)
        _sub = os.path.join(*_name.split('.'))
        _module = sys.modules[_name] = type(sys)(_name)
        _module.__path__ = [os.path.join(_p or os.curdir, _sub) for _p in sys.path
                            if os.path.isdir(os.path.join(_p or os.curdir, _sub))]
sys.modules['slapos'].recipe = sys.modules['slapos.recipe']
'''

# Exit statuses (also documented in USAGE).
EXIT_USAGE = 2          # bad command line
EXIT_LEAKED = 3         # --strict, the command succeeded but something leaked
EXIT_FAILURE = 125      # isolate-exec itself failed (or --userns require)
EXIT_CANNOT_EXEC = 126  # the command exists but cannot be executed
EXIT_NOT_FOUND = 127    # the command was not found

# Text reports list at most this many files; the JSON report has all.
MAX_FILE_LINES = 100

USAGE = """\
usage: isolate-exec [OPTIONS] [--] COMMAND [ARG...]

Run COMMAND with a private tmpfs on /tmp and /dev/shm, in its own user
(non-root callers), mount and pid namespaces, then report on stderr what it
left behind: files, mounts and processes (which are then killed).

options:
  --tmpfs PATH[:OPTIONS]
                  also make PATH a private tmpfs (repeatable); OPTIONS are
                  tmpfs mount options in docker's syntax, e.g. /srv/db:size=512m
                  or /tmp:size=1g,mode=1777. /tmp and /dev/shm are always
                  private: giving them sets their options. A missing PATH is
                  created.
  --userns MODE   auto (default): isolate when possible, else fall back;
                  require: refuse to run COMMAND without isolation;
                  off: run in fallback mode on purpose
  --report FILE   write a JSON report of the run to FILE
  --strict        exit with status 3 when anything leaked, even if COMMAND
                  succeeded
  --kill-timeout SECONDS
                  grace between SIGTERM and SIGKILL for leaked processes
                  (default 5)
  --probe         print what is available (+userns -fuse ...) and exit 0 when
                  isolation works, 1 when it does not
  --version       print the version and exit
  -h, --help      show this help and exit

isolation: a non-root caller keeps its uid and gid in a new user namespace
that maps only them; COMMAND runs with CAP_SYS_ADMIN only (mount and FUSE
work, file permissions still apply), and /etc/passwd and /etc/group list only
the caller, root, nobody, nogroup and disk. A root caller gets mount and pid
namespaces and keeps all of root's powers. Mounts never propagate to the host.
TMPDIR, TMP and TEMP, when set outside the private mounts, are set to /tmp.

fallback: when user namespaces do not work (they are probed by doing the
real setup), isolate-exec prints '# user namespaces not available (REASON)'
and runs COMMAND with TMPDIR, TMP and TEMP set to a fresh private directory,
which is reported on and removed afterwards; leaked processes are still
reported and killed.

report lines (stderr, after COMMAND's output):
  # leaked /tmp/file          # leaked /tmp/dir/     # found sticky /tmp/d/
  # leaked mount: SOURCE MOUNTPOINT FSTYPE OPTIONS   # gone mount: ...
  # leaked pid=N 'name' ['argv', ...]

exit status: COMMAND's own; 128+N if it died of signal N; 126 if it cannot
be executed; 127 if it is not found; 2 for a usage error; 3 for leaks with
--strict; 125 if isolate-exec itself fails or --userns require cannot be met.
"""


class UsageError(Exception):
    """Bad command line or bad arguments: exit 2 with one line on stderr."""


class SetupError(Exception):
    """An isolation step failed; str() names the step, the path and the reason."""


def _os_error(what, err=None):
    if err is None:
        err = _ctypes.get_errno()
    return SetupError('%s: %s' % (what, os.strerror(err)))


# -- bytes and text ----------------------------------------------------------

if PY2:
    def fsencode(s):
        return s.encode('utf-8') if isinstance(s, unicode) else s  # noqa: F821

    def fsdecode(b):
        """Decode a file name exactly: undecodable bytes become U+DC80..U+DCFF."""
        try:
            return b.decode('utf-8')
        except UnicodeDecodeError:
            return u''.join(c.decode('utf-8') if c < '\x80' else unichr(0xdc00 + ord(c))  # noqa: F821
                            for c in b)

    def native(b):
        return b
else:
    fsencode = os.fsencode
    fsdecode = os.fsdecode
    native = os.fsdecode

# Bytes that never need escaping in a text report line.
_PLAIN = bytes(bytearray(c for c in range(0x20, 0x7f) if c != 0x5c))
_ESCAPES = {0x5c: '\\\\', 0x0a: '\\n', 0x09: '\\t', 0x0d: '\\r'}


def escape_name(name):
    """Return file name bytes as one unambiguous line: backslash, control
    characters and invalid UTF-8 bytes are written as escapes (\\n, \\xff)."""
    if not name.translate(None, _PLAIN):
        return name
    try:
        chars = name.decode('utf-8')
    except UnicodeDecodeError:
        out = []
        for c in bytearray(name):
            if c in _ESCAPES:
                out.append(_ESCAPES[c])
            elif 0x20 <= c < 0x7f:
                out.append(chr(c))
            else:
                out.append('\\x%02x' % c)
        return ''.join(out).encode('ascii')
    out = []
    for ch in chars:
        c = ord(ch)
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c < 0x20 or 0x7f <= c < 0xa0 or c in (0x2028, 0x2029):
            out.append('\\x%02x' % c if c < 0x100 else '\\u%04x' % c)
        else:
            out.append(ch)
    return u''.join(out).encode('utf-8')


def write_all(fd, data):
    """Write all of data to fd; give up silently if fd is gone (EPIPE, EBADF)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            return


def warn(line):
    write_all(2, fsencode(line) + b'\n')


def now():
    return time.monotonic() if hasattr(time, 'monotonic') else time.time()


# -- command line ------------------------------------------------------------

# tmpfs mount options in docker's --tmpfs syntax: generic mount flags, each
# with the bits it sets and clears, and the tmpfs options passed to the kernel.
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_SYNCHRONOUS, MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME = 0x10, 0x80, 0x400, 0x800
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MS_RELATIME, MS_STRICTATIME = 0x200000, 0x1000000
MOUNT_FLAGS = {
    'ro': (MS_RDONLY, 0), 'rw': (0, MS_RDONLY),
    'nosuid': (MS_NOSUID, 0), 'suid': (0, MS_NOSUID),
    'nodev': (MS_NODEV, 0), 'dev': (0, MS_NODEV),
    'noexec': (MS_NOEXEC, 0), 'exec': (0, MS_NOEXEC),
    'sync': (MS_SYNCHRONOUS, 0), 'async': (0, MS_SYNCHRONOUS),
    'dirsync': (MS_DIRSYNC, 0),
    'noatime': (MS_NOATIME, 0), 'atime': (0, MS_NOATIME),
    'nodiratime': (MS_NODIRATIME, 0), 'diratime': (0, MS_NODIRATIME),
    'relatime': (MS_RELATIME, 0), 'norelatime': (0, MS_RELATIME),
    'strictatime': (MS_STRICTATIME, 0),
}
TMPFS_DEFAULT_FLAGS = MS_NOSUID | MS_NODEV
_SIZE_SUFFIXES = 'kKmMgGtTpPeE'


def _is_size(value, percent=True):
    # tmpfs: size and nr_blocks/nr_inodes take k/m/g/t/p/e suffixes, size also %
    if value[-1:] in _SIZE_SUFFIXES or (percent and value[-1:] == '%'):
        value = value[:-1]
    return value.isdigit()


TMPFS_OPTIONS = {
    'size': _is_size,
    'nr_blocks': lambda v: _is_size(v, percent=False),
    'nr_inodes': lambda v: _is_size(v, percent=False),
    'mode': lambda v: len(v) <= 4 and v.isdigit() and '8' not in v and '9' not in v,
    'uid': str.isdigit,
    'gid': str.isdigit,
    'huge': ('never', 'always', 'within_size', 'advise', 'deny', 'force').__contains__,
    'mpol': lambda v: bool(v) and v.split(':')[0] in ('default', 'prefer', 'bind',
                                                       'interleave', 'local'),
}
TMPFS_SWITCHES = ('inode32', 'inode64', 'noswap')


class Tmpfs(object):
    """One private tmpfs: path, mount flags and tmpfs options (an ordered list)."""

    def __init__(self, path, options=''):
        self.path = path
        self.flags = TMPFS_DEFAULT_FLAGS
        self.data = []
        self.update(options)

    def update(self, options):
        for opt in options.split(',') if options else ():
            name, eq, value = opt.partition('=')
            if not eq and name in MOUNT_FLAGS:
                set_bits, clear_bits = MOUNT_FLAGS[name]
                self.flags = (self.flags | set_bits) & ~clear_bits
            elif not eq and name in TMPFS_SWITCHES:
                self._set(name, opt)
            elif eq and name in TMPFS_OPTIONS:
                if not TMPFS_OPTIONS[name](value):
                    raise UsageError('--tmpfs %s: invalid %s %r' % (self.path, name, value))
                self._set(name, opt)
            else:
                raise UsageError('--tmpfs %s: unknown tmpfs option %r' % (self.path, opt))

    def _set(self, name, opt):
        self.data = [o for o in self.data if o.partition('=')[0] != name] + [opt]

    @property
    def options(self):
        """The options as docker would write them: flags, then tmpfs options."""
        words = [name for name, (bits, _) in sorted(MOUNT_FLAGS.items())
                 if bits and self.flags & bits == bits]
        return ','.join(words + self.data)

    def __repr__(self):
        return 'Tmpfs(%r, %r)' % (self.path, self.options)


def check_tmpfs_path(path, what='--tmpfs'):
    """Reject paths that are not absolute and normal; return the path."""
    if not path.startswith('/'):
        problem = 'not absolute'
    elif path == '/' or any(c in path for c in '\0\n'):
        problem = 'not a path a tmpfs can be mounted on'
    elif os.path.normpath(path) != path.rstrip('/') or path.startswith('//'):
        problem = 'not normalized (no //, . or ..)'
    else:
        return path.rstrip('/')
    raise UsageError('%s: path %r is %s' % (what, path, problem))


def make_tmpfs_table(specs, what='--tmpfs'):
    """Return the private mounts: PRIVATE_TMPFS updated by (path, options)
    pairs, parents before children (so /tmp/db is mounted inside /tmp)."""
    table = [Tmpfs(path, options) for path, options in PRIVATE_TMPFS]
    seen = set()
    for path, options in specs:
        path = check_tmpfs_path(path, what)
        if path in seen:
            raise UsageError('%s: path %s given twice' % (what, path))
        seen.add(path)
        for entry in table:
            if entry.path == path:
                entry.update(options)
                break
        else:
            table.append(Tmpfs(path, options))
    table.sort(key=lambda entry: entry.path.count('/'))
    return table


class Options(object):
    """The parsed command line."""
    tmpfs_specs = ()
    userns = 'auto'
    report = None
    strict = False
    kill_timeout = 5.0
    probe = False
    command = ()


def parse_args(argv):
    """Parse isolate-exec's arguments: options stop at -- or at the first
    argument that is not an option (like env and unshare). -> Options"""
    opts = Options()
    opts.tmpfs_specs = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == '--':
            i += 1
            break
        if not arg.startswith('-') or arg == '-':
            break
        name, eq, value = arg.partition('=')
        if name in ('-h', '--help', '--version', '--probe', '--strict'):
            if eq:
                raise UsageError('option %s takes no value' % name)
            if name in ('-h', '--help'):
                opts.help = True
                return opts
            if name == '--version':
                opts.version = True
                return opts
            setattr(opts, name[2:], True)
        elif name in ('--tmpfs', '--userns', '--report', '--kill-timeout'):
            if not eq:
                i += 1
                if i == len(argv):
                    raise UsageError('option %s needs a value' % name)
                value = argv[i]
            if name == '--tmpfs':
                path, _, options = value.partition(':')
                opts.tmpfs_specs.append((path, options))
            elif name == '--userns':
                if value not in ('auto', 'require', 'off'):
                    raise UsageError('--userns %r: must be auto, require or off' % value)
                opts.userns = value
            elif name == '--report':
                opts.report = check_report_path(value)
            else:
                opts.kill_timeout = check_kill_timeout(value)
        else:
            raise UsageError('unknown option %r' % arg)
        i += 1
    opts.command = argv[i:]
    if not opts.command and not opts.probe:
        raise UsageError('no command given')
    opts.tmpfs = make_tmpfs_table(opts.tmpfs_specs)
    return opts


def check_report_path(path, what='--report'):
    """Check that a report can be written at path; return it absolute (the
    command may change directory, the report is written on the host)."""
    if not path:
        raise UsageError('%s: empty path' % what)
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise UsageError('%s %s: is a directory' % (what, path))
    if not os.path.isdir(directory):
        raise UsageError('%s %s: directory %s does not exist' % (what, path, directory))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError('%s %s: directory %s is not writable' % (what, path, directory))
    return path


def check_kill_timeout(value, what='--kill-timeout'):
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1
    if not 0 <= timeout < 1e6:  # also rejects nan
        raise UsageError('%s %r: must be a number of seconds >= 0' % (what, value))
    return timeout


# -- the kernel ----------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36  # Linux 3.4
PR_CAP_AMBIENT = 47          # Linux 4.3, commit 58319057b784
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_SYS_ADMIN = 21
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
O_CLOEXEC = getattr(os, 'O_CLOEXEC', 0o2000000)
O_DIRECTORY = getattr(os, 'O_DIRECTORY', 0o200000)

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
        raise _os_error(what)


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
        raise _os_error('create %s namespace' % ('user' if flags & CLONE_NEWUSER else 'mount'),
                        err)
    return pid


def mount(source, target, fstype, flags, data, what):
    b = lambda s: None if s is None else fsencode(s)
    if c_function('mount')(b(source), b(target), b(fstype), _ULong(flags), b(data)) < 0:
        raise _os_error(what)


# -- isolation steps (run by the supervisor, in its new namespaces) -----------

def set_parent_death_signal(lifeline):
    """Die with SIGKILL when isolate-exec dies; as pid 1 this kills the whole
    run. The parent may have died before prctl: writing to its pipe tells."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what='prctl PR_SET_PDEATHSIG')
    try:
        os.write(lifeline, b'+')
    except OSError:  # EPIPE: isolate-exec is gone
        os._exit(EXIT_FAILURE)


def map_caller_ids(uid, gid):
    """Map the caller's uid and gid, and only them, into the new user namespace."""
    # Since Linux 3.19 an unprivileged process may write gid_map only after
    # writing "deny" to /proc/self/setgroups (CVE-2014-8989); on older kernels
    # the file does not exist and gid_map is writable as is.
    for name, line in (('setgroups', 'deny'), ('uid_map', '%d %d 1' % (uid, uid)),
                       ('gid_map', '%d %d 1' % (gid, gid))):
        path = '/proc/self/' + name
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, line.encode('ascii'))
            finally:
                os.close(fd)
        except OSError as e:
            if name == 'setgroups' and e.errno == errno.ENOENT:
                continue
            raise _os_error('write %s' % path, e.errno)


def make_mounts_private():
    """Make every mount private, recursively, before mounting anything: a mount
    made inside must never propagate to the host (as root, shared mounts would
    carry it), and host mount events must not show up in the mount diff."""
    # This is util-linux unshare's UNSHARE_PROPAGATION_DEFAULT (MS_REC|MS_PRIVATE).
    mount('none', '/', None, MS_REC | MS_PRIVATE, None, 'make / private')


def create_mount_points(tmpfs):
    """Create the missing mount points on the host, as the caller (as the
    cookbook's private-tmpfs does); those inside another private mount are
    created in it by mount_private_tmpfs."""
    for entry in tmpfs:
        others = [other for other in tmpfs if other is not entry]
        if os.path.lexists(entry.path) and not os.path.isdir(entry.path):
            raise SetupError('--tmpfs %s: not a directory' % entry.path)
        if not (os.path.isdir(entry.path) or in_private_mount(entry.path, others)):
            try:
                os.makedirs(entry.path)
            except OSError as e:
                raise SetupError('create %s: %s' % (entry.path, os.strerror(e.errno)))


def in_private_mount(path, tmpfs):
    """Is path one of the mount points of tmpfs, or under one?"""
    return any(path == entry.path or path.startswith(entry.path + '/') for entry in tmpfs)


def mount_private_tmpfs(entry):
    """Mount a fresh tmpfs on entry.path. -> fd of its root"""
    if not os.path.isdir(entry.path):  # inside a private tmpfs mounted before
        try:
            os.makedirs(entry.path)
        except OSError as e:
            raise _os_error('create %s' % entry.path, e.errno)
    mount('tmpfs', entry.path, 'tmpfs', entry.flags, ','.join(entry.data) or None,
          'mount tmpfs on %s' % entry.path)
    try:
        return os.open(entry.path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except OSError as e:
        raise _os_error('open %s' % entry.path, e.errno)


def minimal_user_database(uid, gid):
    """Return /etc/passwd and /etc/group contents for a user namespace that
    maps only uid and gid: the caller, root, nobody, nogroup and disk."""
    # In the namespace every other id is unmapped (shown as 65534), so the host
    # database would name users that chown or grantpt cannot use (EINVAL);
    # root and nobody/nogroup are kept because much software expects these
    # names, and disk because slapos.core's tests need it (as nxdtest's trun).
    import pwd
    import grp
    users, groups = [], []

    def user(key, fallback):
        try:
            u = pwd.getpwuid(key) if isinstance(key, int) else pwd.getpwnam(key)
            line = '%s:x:%d:%d:%s:%s:%s\n' % (u.pw_name, u.pw_uid, u.pw_gid,
                                              u.pw_gecos, u.pw_dir, u.pw_shell)
        except KeyError:
            line = fallback
        if line.split(':')[0] not in [u.split(':')[0] for u in users]:
            users.append(line)

    def group(key, fallback, members=''):
        try:
            g = grp.getgrgid(key) if isinstance(key, int) else grp.getgrnam(key)
            line = '%s:x:%d:%s\n' % (g.gr_name, g.gr_gid, members)
        except KeyError:
            line = fallback
        if line.split(':')[0] not in [g.split(':')[0] for g in groups]:
            groups.append(line)

    name = os.environ.get('USER') or os.environ.get('LOGNAME') or 'user%d' % uid
    user(uid, '%s:x:%d:%d::/:/bin/sh\n' % (name, uid, gid))
    user('root', 'root:x:0:0:root:/root:/bin/sh\n')
    user('nobody', 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n')
    caller = users[0].split(':')[0]
    group(gid, 'group%d:x:%d:%s\n' % (gid, gid, caller), caller)
    group('root', 'root:x:0:\n')
    group('nogroup', 'nogroup:x:65534:\n')
    group('disk', 'disk:x:6:\n')
    return ''.join(users), ''.join(groups)


def bind_minimal_user_database(uid, gid, scratch):
    """Bind-mount minimal /etc/passwd and /etc/group over the host's files."""
    # The source files live on a small tmpfs mounted on scratch, then lazily
    # unmounted: the bind mounts keep it alive and nothing shows in /tmp. The
    # files must not be unlinked: a bind mount of a deleted file cannot be
    # mounted over, and a nested isolate-exec would then fail.
    passwd, group = minimal_user_database(uid, gid)
    os.mkdir(scratch, 0o700)
    mount('tmpfs', scratch, 'tmpfs', TMPFS_DEFAULT_FLAGS | MS_NOEXEC, 'size=64k,mode=755',
          'mount tmpfs on %s' % scratch)
    for name, content in (('passwd', passwd), ('group', group)):
        target = '/etc/' + name
        if not os.path.exists(target):
            continue
        source = os.path.join(scratch, name)
        with open(source, 'w') as f:
            f.write(content)
        os.chmod(source, 0o644)
        mount(source, target, None, MS_BIND, None, 'bind %s on %s' % (source, target))
    if c_function('umount2')(fsencode(scratch), MNT_DETACH) < 0:
        raise _os_error('umount %s' % scratch)
    os.rmdir(scratch)


def mount_private_proc():
    """Mount a /proc that shows only the new pid namespace."""
    # Allowed only with CAP_SYS_ADMIN in the user namespace owning the pid
    # namespace, and only if no locked mount hides part of the host's /proc
    # (fs/namespace.c mount_too_revealing(): docker's masked paths make it fail).
    mount('proc', '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC, None, 'mount proc on /proc')


def drop_to_sys_admin():
    """Make the command keep exactly CAP_SYS_ADMIN across exec, for a non-zero
    uid in a user namespace (capabilities(7): only ambient capabilities survive
    execve for it), so that mount and FUSE work while file permissions still
    apply (no CAP_DAC_OVERRIDE). The supervisor keeps its own full set."""
    class CapHeader(_ctypes.Structure):
        _fields_ = [('version', _UInt32), ('pid', _Int)]

    class CapData(_ctypes.Structure):
        _fields_ = [('effective', _UInt32), ('permitted', _UInt32), ('inheritable', _UInt32)]

    header = CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    if c_function('capget')(_ctypes.byref(header), data) < 0:
        raise _os_error('capget')
    data[0].inheritable = 1 << CAP_SYS_ADMIN
    data[1].inheritable = 0
    if c_function('capset')(_ctypes.byref(header), data) < 0:
        raise _os_error('capset')
    # Ambient capabilities are Linux 4.3+ (commit 58319057b784); a capability
    # can be ambient only while it is both permitted and inheritable.
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what='prctl PR_CAP_AMBIENT_CLEAR_ALL')
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN,
          what='prctl PR_CAP_AMBIENT_RAISE CAP_SYS_ADMIN')


def set_child_subreaper():
    """Fallback mode: orphaned descendants (double fork, setsid) become our
    children, so they can be found and killed after the command (Linux 3.4)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1, what='prctl PR_SET_CHILD_SUBREAPER')


# -- signals -------------------------------------------------------------------

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_forward_to = None      # pid the forwarded signals go to
_pending_signal = None  # a signal received before there was anyone to forward it to


def _forward_signal(signum, frame):
    global _pending_signal
    if _forward_to is None:
        _pending_signal = signum
        return
    try:
        os.kill(_forward_to, signum)
    except OSError:
        pass


def forward_signals_to(pid):
    """Send SIGINT, SIGTERM and SIGHUP to pid from now on, including one that
    arrived before (pid None: remember them)."""
    global _forward_to, _pending_signal
    _forward_to = pid
    if pid is not None and _pending_signal is not None:
        _forward_signal(_pending_signal, None)
        _pending_signal = None


def install_signal_forwarding(undo):
    """Install the forwarding handlers, before any child exists: a pid-1
    supervisor receives only signals it has a handler for. Signals ignored by
    our caller (nohup) stay ignored, for us and the command."""
    for signum in FORWARDED_SIGNALS:
        previous = signal.getsignal(signum)
        if previous != signal.SIG_IGN:
            signal.signal(signum, _forward_signal)
            undo.register(signal.signal, signum, previous)


def raw_wait_status_code(status):
    """Shell-style exit code of a wait status: the exit status, or 128+N for
    death by signal N (bash(1): "128+n")."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# -- the command ---------------------------------------------------------------

def terminal_foreground():
    """True when we are the foreground process group of the terminal on stdin."""
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def give_terminal_to(pgrp):
    """Make pgrp the terminal's foreground process group (SIGTTOU ignored)."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, pgrp)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, previous)


def spawn_command(argv, env, foreground):
    """Start argv with default signal dispositions. With foreground, it gets a
    process group of its own and the terminal, so that Ctrl-C reaches it once
    instead of every process of the chain; otherwise it stays in our group,
    not leading one, so that it may call setsid() itself. -> pid"""
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec.
    sigdef = (signal.SIGPIPE, signal.SIGXFSZ)
    spawn = getattr(os, 'posix_spawnp', None)  # Python 3.8+
    if spawn is not None and not foreground:
        return spawn(argv[0], argv, env, setsigdef=sigdef)
    err_r, err_w = os.pipe()
    for fd in (err_r, err_w):  # Python 2's pipes are inheritable
        _set_cloexec(fd)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            if foreground:
                os.setpgid(0, 0)
                give_terminal_to(os.getpid())
            for signum in sigdef:
                signal.signal(signum, signal.SIG_DFL)
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            os.write(err_w, str(e.errno).encode('ascii'))
        finally:
            os._exit(EXIT_NOT_FOUND)
    os.close(err_w)
    if foreground:
        try:
            os.setpgid(pid, pid)  # also here, so the group exists when we return
        except OSError:
            pass
    try:
        err = _read_all(err_r)
    finally:
        os.close(err_r)
    if err:
        _waitpid(pid, 0)
        code = int(err)
        raise OSError(code, os.strerror(code))
    return pid


def start_command(argv, env, foreground):
    """Start the command. -> (pid, None), or (None, exit code) after printing
    why it could not be executed (127: not found, 126: other reasons)."""
    try:
        return spawn_command(argv, env, foreground), None
    except OSError as e:
        err = e.errno
        if err == errno.EACCES and '/' not in argv[0] and not _on_path(argv[0], env):
            # execvp says EACCES when a PATH directory cannot be searched
            # (e.g. /root/... for nobody), even if the command is nowhere.
            err = errno.ENOENT
        warn('%s: %s: %s' % (PROG, argv[0], os.strerror(err)))
        return None, EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_CANNOT_EXEC


def _on_path(name, env):
    return any(os.path.exists(os.path.join(d or '.', name))
               for d in env.get('PATH', os.defpath).split(':'))


def _set_cloexec(fd):
    if PY2:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)


def _read_all(fd):
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


def _waitpid(pid, options):
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
        reaped, status = _waitpid(-1, 0)
        if reaped == pid:
            return status


def has_children():
    """Reap exited children; tell whether any child is still running. As pid 1
    or a subreaper, every live descendant has an ancestor among our children."""
    while True:
        try:
            pid, _ = _waitpid(-1, os.WNOHANG)
        except OSError as e:
            if e.errno == errno.ECHILD:
                return False
            raise
        if pid == 0:
            return True


# -- leak checks: processes ------------------------------------------------------

# PF_EXITING (include/linux/sched.h): set in the flags of /proc/PID/stat from
# the start of exit(); such a process is not a leak, it is going away (e.g. a
# nested run's supervisor while the kernel frees its tmpfs).
PF_EXITING = 0x4


def read_process(pid):
    """-> (ppid, state, name, argv bytes list) of pid, or None if it is gone.
    An exiting process has state 'Z', like a zombie."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            stat_line = f.read()
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read()
    except (IOError, OSError):
        return None
    # "pid (comm) state ppid ...": comm may itself contain ") ".
    head, _, tail = stat_line.rpartition(b') ')
    name = head.partition(b' (')[2]
    fields = tail.split()
    argv = cmdline.split(b'\0')[:-1] if cmdline else []
    state = b'Z' if int(fields[6]) & PF_EXITING else fields[0]
    return int(fields[1]), state, name, argv


def list_processes():
    """-> {pid: (ppid, state, name, argv)} for every process in /proc."""
    procs = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            info = read_process(int(entry))
            if info is not None:
                procs[int(entry)] = info
    return procs


def find_leaked_processes(root_pid):
    """Live processes below root_pid (in a pid namespace, root_pid is 1 and
    that is every other process). -> [(pid, name, argv)] sorted by pid"""
    procs = list_processes()
    if root_pid == 1:
        mine = set(pid for pid in procs if pid != 1)
    else:
        children = {}
        for pid, info in procs.items():
            children.setdefault(info[0], []).append(pid)
        mine, todo = set(), list(children.get(root_pid, ()))
        while todo:
            pid = todo.pop()
            mine.add(pid)
            todo.extend(children.get(pid, ()))
    return [(pid, procs[pid][2], procs[pid][3]) for pid in sorted(mine)
            if procs[pid][1] != b'Z']


def kill_leaked_processes(root_pid, timeout):
    """Report and kill what the command left running: SIGTERM, then SIGKILL
    after timeout seconds. -> (leaked [(pid, name, argv)], pids SIGKILLed)"""
    leaked, killed, seen = [], [], set()
    for _ in range(10):  # new rounds for processes forked meanwhile
        if not has_children():
            break
        found = [p for p in find_leaked_processes(root_pid) if p[0] not in seen]
        if not found:
            break
        leaked.extend(found)
        seen.update(p[0] for p in found)
        alive = _signal_all([p[0] for p in found], signal.SIGTERM)
        deadline, sent_kill = now() + timeout, False
        delay = 0.001
        while alive:
            has_children()
            alive = [pid for pid in alive if _is_running(pid)]
            if alive and now() >= deadline:
                if sent_kill:  # e.g. stuck in D state: leave it to the kernel
                    break
                killed.extend(_signal_all(alive, signal.SIGKILL))
                deadline, sent_kill = now() + 2, True
            if alive:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
    return leaked, killed


def _signal_all(pids, signum):
    sent = []
    for pid in pids:
        try:
            os.kill(pid, signum)
            sent.append(pid)
        except OSError:
            pass
    return sent


def _is_running(pid):
    info = read_process(pid)
    return info is not None and info[1] != b'Z'


# -- leak checks: mounts ---------------------------------------------------------

def read_mountinfo():
    """-> the bytes of /proc/self/mountinfo."""
    with open('/proc/self/mountinfo', 'rb') as f:
        return f.read()


def parse_mounts(mountinfo):
    """-> [mount] from mountinfo bytes, each as 'SOURCE[ROOT] MOUNTPOINT
    FSTYPE OPTIONS' bytes (the /proc/mounts shape, with a bind mount's root)."""
    # Mount IDs, parent IDs and device numbers are left out: they are reused
    # and differ between namespaces (proc(5)); so are propagation tags. Names
    # keep mountinfo's octal escapes (\040 for a space): one mount, one line.
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split(b' ')
        sep = fields.index(b'-', 6)
        root, mountpoint, options = fields[3], fields[4], fields[5]
        fstype, source, super_options = fields[sep + 1:sep + 4]
        if root != b'/':
            source += b'[' + root + b']'
        extra = [o for o in super_options.split(b',') if o not in (b'rw', b'ro')]
        mounts.append(b' '.join((source, mountpoint, fstype, b','.join([options] + extra))))
    return mounts


def diff_mounts(before, after):
    """-> (leaked, gone): mounts only in after, mounts only in before (multisets
    of parse_mounts()), from two mountinfo snapshots."""
    if before == after:  # the usual case: nothing to parse
        return [], []
    before, after = parse_mounts(before), parse_mounts(after)
    count = {}
    for m in before:
        count[m] = count.get(m, 0) + 1
    leaked = []
    for m in after:
        if count.get(m):
            count[m] -= 1
        else:
            leaked.append(m)
    gone = []
    for m in before:
        if count.get(m):
            count[m] -= 1
            gone.append(m)
    return leaked, gone


def detach_mounts(mounts):
    """Lazily unmount leaked mounts, last first, so that the file walk sees
    what the command left beneath them (and no FUSE daemon is asked)."""
    for m in reversed(mounts):
        mountpoint = unescape_mount(m.split(b' ')[1])
        c_function('umount2')(mountpoint, MNT_DETACH)


# -- leak checks: files ----------------------------------------------------------

if hasattr(os, 'scandir'):
    def _list_cwd():
        """-> (sorted file names, sorted [(dir name, lstat)]) of the current
        directory; d_type spares a stat per file."""
        files, dirs = [], []
        for entry in os.scandir(b'.'):
            try:
                if entry.is_dir(follow_symlinks=False):
                    dirs.append((entry.name, entry.stat(follow_symlinks=False)))
                    continue
            except OSError:
                pass
            files.append(entry.name)
        files.sort()
        dirs.sort()
        return files, dirs
else:  # Python 2
    def _list_cwd():
        files, dirs = [], []
        for name in os.listdir(b'.'):
            try:
                st = os.lstat(name)
            except OSError:
                files.append(name)
                continue
            if stat.S_ISDIR(st.st_mode):
                dirs.append((name, st))
            else:
                files.append(name)
        files.sort()
        dirs.sort()
        return files, dirs


def _enter(name, st):
    """chdir into a directory; a mode 000 one is opened up first (its owner may,
    and it is about to be thrown away)."""
    try:
        os.chdir(name)
    except OSError as e:
        if e.errno != errno.EACCES:
            raise
        os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        os.chdir(name)


def walk_leaked_files(root_fd, prefix, skip=(), remove=False):
    """List everything under the directory open as root_fd, shown under prefix,
    without following symbolic links or crossing into other mounts, in
    preorder with sorted names. With remove, delete it all on the way.
    -> (paths, sticky directories, unreadable directories): every path found,
    sticky directories included; directory paths end with '/'. Changes the
    current directory."""
    # The walk goes by relative chdir, so that it needs no lookup of long
    # paths (PATH_MAX is 4096) and no recursion (the tree may be deep), and it
    # starts from a file descriptor, so a mount stacked on the root by the
    # command does not hide what was left under it.
    root_dev = os.fstat(root_fd).st_dev
    os.fchdir(root_fd)
    leaked, sticky, unreadable = [], [], []
    files, dirs = _list_cwd()
    leaked.extend([prefix + b'/' + f for f in files])
    if remove:
        _unlink_all(files)
    stack = [(prefix, dirs[::-1])]
    while stack:
        path, todo = stack[-1]
        if not todo:
            stack.pop()
            if stack:
                os.chdir(b'..')
                if remove:
                    os.rmdir(path.rpartition(b'/')[2])
            continue
        name, st = todo.pop()
        dpath = path + b'/' + name
        if st.st_dev != root_dev:  # a mount point: only its directory is ours
            if dpath not in skip:
                leaked.append(dpath + b'/')
            continue
        leaked.append(dpath + b'/')
        if st.st_mode & stat.S_ISVTX:  # like wcfs' shared registry: not a leak
            sticky.append(dpath + b'/')
        try:
            _enter(name, st)
        except OSError:
            unreadable.append(dpath + b'/')
            continue
        try:
            files, dirs = _list_cwd()
        except OSError:
            unreadable.append(dpath + b'/')
            files, dirs = [], []
        leaked.extend([dpath + b'/' + f for f in files])
        if remove:
            _unlink_all(files)
        stack.append((dpath, dirs[::-1]))
    return leaked, sticky, unreadable


def _unlink_all(names):
    for name in names:
        try:
            os.unlink(name)
        except OSError:
            pass


# -- the supervisor (pid 1 of the run's pid namespace) ----------------------------

class Run(object):
    """What a run needs, prepared by isolate-exec before forking."""

    def __init__(self, opts):
        self.command = list(opts.command)
        self.tmpfs = opts.tmpfs
        self.kill_timeout = opts.kill_timeout
        self.uid, self.gid = os.getuid(), os.getgid()
        self.userns = self.uid != 0
        try:
            self.cwd = os.getcwd()
        except OSError:  # deleted: nothing to look up again
            self.cwd = None
        self.foreground = terminal_foreground()
        self.env = dict(os.environ)


def private_env(env, tmpfs):
    """TMPDIR, TMP and TEMP set outside the private mounts now point to /tmp,
    so that temporary files land where they are isolated and checked."""
    for name in ('TMPDIR', 'TMP', 'TEMP'):
        value = env.get(name)
        if value and not in_private_mount(value, tmpfs):
            env[name] = '/tmp'
    return env


def supervise(run, lifeline):
    """Body of the supervisor: set up the isolation, run the command, collect
    the leaks. Never returns: sends its findings to isolate-exec and exits."""
    result = {}
    try:
        set_parent_death_signal(lifeline)
        # Out of our caller's process group: signals sent to that group (a
        # terminal's Ctrl-C) reach isolate-exec, which forwards them once.
        os.setpgid(0, 0)
        result = setup_isolation(run)
        if 'roots' in result and run.command is not None:
            result.update(run_and_check(run, result.pop('roots'), result.pop('mounts')))
        result.pop('roots', None)
        result.pop('mounts', None)
    except SetupError as e:
        result = {'error': str(e)}
    except BaseException as e:  # never let a traceback out of pid 1
        result = {'error': 'internal error: %s: %s' % (type(e).__name__, e)}
    try:
        data = marshal.dumps(result)
        write_all(lifeline, ('%d\n' % len(data)).encode('ascii') + data)
    finally:
        os._exit(0)


def setup_isolation(run):
    """The isolation checklist, in order. -> {'roots': [(fd, path)], 'mounts': [...]}
    or {'error': message} (the step, the path and the reason)."""
    try:
        if run.userns:
            map_caller_ids(run.uid, run.gid)
        make_mounts_private()
        roots = [(mount_private_tmpfs(entry), entry.path) for entry in run.tmpfs]
        if run.userns:
            bind_minimal_user_database(run.uid, run.gid, '/tmp/.isolate-exec')
        mount_private_proc()
        if run.userns:
            drop_to_sys_admin()
    except SetupError as e:
        return {'error': str(e)}
    # A working directory inside a private mount still is the host's directory
    # under it: look it up again, or relative paths would write to the host.
    # Any other is left as it is (the caller may be unable to look it up).
    try:
        if run.cwd is not None and in_private_mount(run.cwd, run.tmpfs):
            os.chdir(run.cwd)
    except OSError as e:
        return {'fatal': 'working directory %s: %s (hidden by a private tmpfs)'
                         % (run.cwd, os.strerror(e.errno))}
    return {'roots': roots, 'mounts': read_mountinfo()}


def run_and_check(run, roots, mounts_before):
    """Run the command, then diff the mounts (reading mountinfo asks no FUSE
    daemon; a daemon killed first may unmount itself and hide its leak), kill
    leaked processes, detach leaked mounts and walk the private tmpfs (a live
    FUSE daemon could hang the walk). -> result dict"""
    result = {}
    if _pending_signal is not None:  # interrupted before the command started
        result['status'] = 128 + _pending_signal
        return result
    start = now()
    pid, code = start_command(run.command, private_env(run.env, run.tmpfs), run.foreground)
    if pid is not None:
        forward_signals_to(pid)
        code = raw_wait_status_code(wait_command(pid))
        forward_signals_to(None)
    result['status'] = code
    result['duration'] = now() - start
    result['leaked_mounts'], result['gone_mounts'] = diff_mounts(mounts_before, read_mountinfo())
    result['processes'], result['killed'] = kill_leaked_processes(1, run.kill_timeout)
    detach_mounts(result['leaked_mounts'])
    skip = set(fsencode(entry.path) for entry in run.tmpfs)
    files, sticky, unreadable = [], [], []
    for fd, path in roots:
        found = walk_leaked_files(fd, fsencode(path), skip)
        files += found[0]
        sticky += found[1]
        unreadable += found[2]
    # one string, not 100k objects, to marshal: file names have no NUL
    result['files'] = b'\0'.join(files)
    result['sticky'], result['unreadable'] = sticky, unreadable
    return result


def run_isolated(run):
    """Run in new namespaces. -> the supervisor's result dict; it has 'error'
    when the isolation could not be set up (the command did not run)."""
    lifeline_r, lifeline_w = os.pipe()
    for fd in (lifeline_r, lifeline_w):
        _set_cloexec(fd)
    flags = CLONE_NEWNS | CLONE_NEWPID | (CLONE_NEWUSER if run.userns else 0)
    try:
        pid = clone_into_namespaces(flags)
    except SetupError as e:
        os.close(lifeline_r)
        os.close(lifeline_w)
        return {'error': str(e)}
    if pid == 0:
        os.close(lifeline_r)
        supervise(run, lifeline_w)  # does not return
    os.close(lifeline_w)
    forward_signals_to(pid)
    try:
        data = _read_message(lifeline_r)
    finally:
        os.close(lifeline_r)
        forward_signals_to(None)
    try:
        result = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        code = raw_wait_status_code(_waitpid(pid, 0)[1])
        return {'fatal': 'the supervisor died (%s)' % (
            'signal %d' % (code - 128) if code > 128 else 'exit status %d' % code),
            'status': code}
    # The supervisor is done: all it started is dead and it only has to exit.
    # As it exits, the kernel frees its mount namespace and private tmpfs,
    # which takes time when much leaked (~0.25 s for 100k files): nothing
    # waits for that; main() reaps it at the end, the command does not.
    if _waitpid(pid, os.WNOHANG)[0] == 0:
        _exiting_supervisors.append(pid)
    files = result.get('files')
    result['files'] = files.split(b'\0') if files else []
    return result


_exiting_supervisors = []


def reap_supervisors():
    """Wait for the supervisors that were still exiting."""
    while _exiting_supervisors:
        _waitpid(_exiting_supervisors.pop(), 0)


def _read_message(fd):
    """Read the supervisor's '+' (it is alive), then 'LENGTH\\n' and LENGTH
    bytes; do not wait for EOF. -> the bytes, or b'' if it died before."""
    data = bytearray()
    length = None
    while length is None or len(data) < length:
        if length is None and b'\n' in data:
            header, _, rest = bytes(data).partition(b'\n')
            length, data = int(header.lstrip(b'+')), bytearray(rest)
            continue
        try:
            chunk = os.read(fd, max(1 << 16, (length or 0) - len(data)))
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not chunk:
            return b''
        data += chunk
    return bytes(data[:length])


# -- fallback mode -----------------------------------------------------------------

def system_temp_dir():
    """The directory tempfile.gettempdir() would pick (without importing it)."""
    for name in ('TMPDIR', 'TEMP', 'TMP'):
        path = os.environ.get(name)
        if path and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
            return os.path.abspath(path)
    for path in ('/tmp', '/var/tmp', '/usr/tmp'):
        if os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
            return path
    return os.getcwd()


def make_private_dir():
    """Create a fresh 0700 directory under the system temp directory. -> path"""
    parent = system_temp_dir()
    while True:
        path = os.path.join(parent, 'isolate-exec.%s' % ''.join(
            '%02x' % b for b in bytearray(os.urandom(6))))
        try:
            os.mkdir(path, 0o700)
            return path
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise SetupError('create %s: %s' % (path, os.strerror(e.errno)))


def run_fallback(run, undo):
    """Run without namespaces: private TMPDIR, leaked descendants found through
    PR_SET_CHILD_SUBREAPER. -> result dict, as the supervisor's"""
    private = make_private_dir()
    env = dict(run.env, TMPDIR=private, TMP=private, TEMP=private)
    set_child_subreaper()
    result = {}
    start = now()
    pid, code = start_command(run.command, env, run.foreground)
    if pid is not None:
        forward_signals_to(pid)
        code = raw_wait_status_code(wait_command(pid))
        forward_signals_to(None)
    result['status'] = code
    result['duration'] = now() - start
    result['processes'], result['killed'] = kill_leaked_processes(os.getpid(), run.kill_timeout)
    cwd = os.open('.', os.O_RDONLY | O_CLOEXEC)
    root = os.open(private, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    try:
        files, sticky, unreadable = walk_leaked_files(root, fsencode(private), remove=True)
        os.rmdir(private)
    except OSError as e:
        files, sticky, unreadable = [], [], []
        warn('%s: remove %s: %s' % (PROG, private, os.strerror(e.errno)))
    finally:
        os.fchdir(cwd)
        os.close(cwd)
        os.close(root)
    result['files'], result['sticky'], result['unreadable'] = files, sticky, unreadable
    result['leaked_mounts'], result['gone_mounts'] = [], []
    return result


# -- report ------------------------------------------------------------------------

def format_report(result):
    """-> the text report: nxdtest-compatible '# ...' lines, as bytes."""
    lines = []
    for pid, name, argv in result.get('processes', ()):
        lines.append(fsencode('# leaked pid=%d %r %r' % (pid, native(name), [native(a) for a in argv])))
    for pid in result.get('killed', ()):
        lines.append(fsencode('# killed pid=%d with SIGKILL: still running after --kill-timeout'
                              % pid))
    files = result.get('files', ())
    sticky = set(result.get('sticky', ()))
    for path in files[:MAX_FILE_LINES]:
        lines.append((b'# found sticky ' if path in sticky else b'# leaked ') + escape_name(path))
    if len(files) > MAX_FILE_LINES:
        lines.append(fsencode('# ... and %d more leaked files (--report FILE lists them all)'
                              % (len(files) - MAX_FILE_LINES)))
    for path in result.get('unreadable', ()):
        lines.append(b'# unreadable ' + escape_name(path))
    for m in result.get('leaked_mounts', ()):
        lines.append(b'# leaked mount: ' + m)
    for m in result.get('gone_mounts', ()):
        lines.append(b'# gone mount: ' + m)
    return b''.join(line + b'\n' for line in lines)


def has_leaks(result):
    return (len(result.get('files', ())) > len(result.get('sticky', ())) or
            any(result.get(key) for key in ('processes', 'leaked_mounts', 'gone_mounts')))


def decode_names(names):
    """fsdecode every name, in one go where possible (names have no NUL)."""
    if PY2 or not names:
        return [fsdecode(n) for n in names]
    return fsdecode(b'\0'.join(names)).split('\0')


def leaked_files(result):
    """The leaked files: what the walk found but sticky directories."""
    files, sticky = result.get('files', []), result.get('sticky')
    if sticky:
        sticky = set(sticky)
        files = [p for p in files if p not in sticky]
    return files


def unescape_mount(m):
    """Decode mountinfo's octal escapes (\\040 is a space). -> bytes"""
    if b'\\' not in m:
        return m
    out, i = bytearray(), 0
    while i < len(m):
        if m[i:i + 1] == b'\\' and m[i + 1:i + 4].isdigit():
            out.append(int(m[i + 1:i + 4], 8))
            i += 4
        else:
            out += m[i:i + 1]
            i += 1
    return bytes(out)


def write_json_report(path, run, result, isolated, reason, code):
    """Write the JSON report atomically (temporary file, then rename)."""
    import json
    files = leaked_files(result)
    report = {
        'version': __version__,
        'isolated': isolated,
        'reason': reason,
        'command': [fsdecode(fsencode(a)) for a in run.command],
        'tmpfs': [{'path': e.path, 'options': e.options} for e in run.tmpfs] if isolated else [],
        'exit_code': code,
        'duration_s': round(result.get('duration', 0.0), 6),
        'leaked': has_leaks(result),
        'leaked_files': decode_names(files),
        'sticky_dirs': [fsdecode(p) for p in result.get('sticky', ())],
        'unreadable_dirs': [fsdecode(p) for p in result.get('unreadable', ())],
        'leaked_mounts': [fsdecode(unescape_mount(m)) for m in result.get('leaked_mounts', ())],
        'gone_mounts': [fsdecode(unescape_mount(m)) for m in result.get('gone_mounts', ())],
        'leaked_processes': [{'pid': pid, 'name': fsdecode(name), 'argv': [fsdecode(a) for a in argv]}
                             for pid, name, argv in result.get('processes', ())],
        'killed_pids': list(result.get('killed', ())),
    }
    # One key per line, each value by json's C encoder (indent= would take
    # the pure Python one: ~5 times slower for 100k names).
    data = '{\n%s\n}\n' % ',\n'.join('  %s: %s' % (json.dumps(key), json.dumps(value, sort_keys=True))
                                     for key, value in sorted(report.items()))
    tmp = '%s.%d.tmp' % (path, os.getpid())
    try:
        with open(tmp, 'w') as f:
            f.write(data)
        os.rename(tmp, path)
    except (IOError, OSError) as e:
        warn('%s: write report %s: %s' % (PROG, path, os.strerror(e.errno)))
        try:
            os.unlink(tmp)
        except OSError:
            pass


# -- main ----------------------------------------------------------------------------

class Undo(object):
    """Cleanups run in reverse order of registration (contextlib.ExitStack
    for Python 2): each step registers its undo as soon as it succeeded."""

    def __init__(self):
        self._callbacks = []

    def register(self, callback, *args):
        self._callbacks.append((callback, args))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        while self._callbacks:
            callback, args = self._callbacks.pop()
            callback(*args)


def fuse_available(userns):
    """-> (True, None) or (False, reason): FUSE in a user namespace needs
    Linux >= 4.18 (commits 4ad769f3c346, 8cb08329b080) and a /dev/fuse the
    caller can open (it is often 0600 root, or absent in containers)."""
    if userns:
        release = os.uname()[2]
        try:
            version = tuple(int(x) for x in release.split('-')[0].split('.')[:2])
        except ValueError:
            version = (0, 0)
        if version < (4, 18):
            return False, 'Linux %s < 4.18' % release
    try:
        os.close(os.open('/dev/fuse', os.O_RDWR | O_CLOEXEC))
    except OSError as e:
        return False, 'open /dev/fuse: %s' % os.strerror(e.errno)
    return True, None


def probe(opts):
    """--probe: try the real setup without a command; print +feature/-feature
    (reason). -> 0 if isolation works, 1 if not"""
    run = Run(opts)
    run.command = None
    with Undo() as undo:
        install_signal_forwarding(undo)
        result = run_isolated(run)
    name = 'userns' if run.userns else 'mountns'
    error = result.get('error') or result.get('fatal')
    words = ['-%s (%s)' % (name, error) if error else '+' + name]
    fuse, reason = fuse_available(run.userns)
    words.append('+fuse' if fuse else '-fuse (%s)' % reason)
    write_all(1, fsencode(' '.join(words) + '\n'))
    return 1 if error else 0


def execute(opts):
    """Run opts.command isolated (or in fallback), print the report. -> exit status"""
    run = Run(opts)
    with Undo() as undo:
        try:
            create_mount_points(run.tmpfs)
        except SetupError as e:
            warn('%s: %s' % (PROG, e))
            return EXIT_FAILURE
        install_signal_forwarding(undo)
        if run.foreground:
            undo.register(give_terminal_to, os.getpgrp())
        isolated, reason = False, 'disabled by --userns off'
        result = None
        if opts.userns != 'off':
            result = run_isolated(run)
            reason = result.get('error')
            if 'fatal' in result:
                warn('%s: %s' % (PROG, result['fatal']))
                return result.get('status', EXIT_FAILURE)
            if reason is None:
                isolated = True
            elif opts.userns == 'require':
                warn('%s: user namespaces not available (%s); not running %s (--userns require)'
                     % (PROG, reason, run.command[0]))
                return EXIT_FAILURE
            else:
                warn('# user namespaces not available (%s)' % reason)
        if not isolated:
            try:
                result = run_fallback(run, undo)
            except SetupError as e:
                warn('%s: %s' % (PROG, e))
                return EXIT_FAILURE
    code = result['status']
    leaked = has_leaks(result)
    if opts.strict and leaked and code == 0:
        code = EXIT_LEAKED
    text = format_report(result)
    if opts.strict and leaked:
        text += fsencode('# --strict: the run leaked, exit status %d\n' % code)
    write_all(2, text)
    if opts.report:
        write_json_report(opts.report, run, result, isolated, reason, code)
    return code


def main(argv=None):
    """Run isolate-exec with argv (default: sys.argv[1:]). -> exit status"""
    try:
        return _main(argv)
    finally:
        reap_supervisors()


def _main(argv):
    if argv is None:
        argv = sys.argv[1:]
    try:
        opts = parse_args(argv)
    except UsageError as e:
        warn('%s: %s' % (PROG, e))
        return EXIT_USAGE
    if getattr(opts, 'help', False):
        write_all(1, USAGE.encode('ascii'))
        return 0
    if getattr(opts, 'version', False):
        write_all(1, ('%s %s\n' % (PROG, __version__)).encode('ascii'))
        return 0
    if opts.probe:
        return probe(opts)
    return execute(opts)


def run_wrapper(command, environment=None, tmpfs=(), userns='auto', strict=False,
                kill_timeout=5.0, report=None):
    """Entry point of the wrappers generated by the slapos.recipe.isolatedtest
    recipes: run command plus the wrapper's own arguments, with environment
    added, as isolate-exec would (the recipe validated every argument)."""
    opts = Options()
    opts.command = list(command) + sys.argv[1:]
    opts.userns, opts.strict, opts.kill_timeout = userns, strict, kill_timeout
    try:
        opts.tmpfs = make_tmpfs_table(tmpfs)
        opts.report = report and check_report_path(report, 'leak-report')
    except UsageError as e:
        warn('%s: %s' % (PROG, e))
        code = EXIT_USAGE
    else:
        os.environ.update(environment or {})
        code = execute(opts)
    _exit(code)


def console_main():
    """The isolate-exec command: main(), then _exit()."""
    _exit(_main(None))


def _exit(code):
    """Exit without the interpreter's shutdown (~2 ms; everything was
    written with os.write) nor waiting for the supervisor's exit (its parent
    after us reaps it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == '__main__':
    console_main()
