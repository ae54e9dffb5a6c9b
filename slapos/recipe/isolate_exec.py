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
      a new pid namespace; it sets up the mounts (private tmpfs, user
      database, /proc), keeps file descriptors of the tmpfs roots and of /proc,
      starts the command, reaps orphans, then diffs the command's mount table,
      kills leaked processes and walks the private tmpfs; it streams all that
      back through a pipe (the lifeline)
       `- COMMAND: in a mount namespace of its own (and, for a non-root
          caller, a user namespace of its own, with CAP_SYS_ADMIN only), so
          that every mount set up above is locked for it: it cannot unmount
          them and uncover the host's /tmp, nor touch what the supervisor reads

When the supervisor exits, the kernel kills whatever is left in its pid
namespace and frees the private tmpfs with the mount namespaces. If the setup
fails before the command starts, the supervisor says why and exits;
isolate-exec then runs the command in fallback mode: a supervisor that is a
plain child (private TMPDIR, child subreaper). Once the command has started,
nothing leads to a fallback: a failure is isolate-exec's own (exit 125).
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

__version__ = '0.2'
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

def self_command(python=None):
    """argv running isolate-exec with this very runtime and python (default:
    this one), without site nor pkg_resources (NAMESPACE_SETUP): what the
    suite runner runs each case with, and the instance's probe."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [python or sys.executable, '-S', '-c', 'import sys\nsys.path[0:0] = %r\n%s'
            'from slapos.recipe.isolate_exec import console_main\nconsole_main()'
            % ([root], NAMESPACE_SETUP)]


# Exit statuses (also documented in USAGE).
EXIT_USAGE = 2          # bad command line
EXIT_LEAKED = 3         # --strict, the command succeeded but something leaked
EXIT_TIMEOUT = 124      # --timeout (as GNU timeout)
EXIT_FAILURE = 125      # isolate-exec itself failed (or --userns require)
EXIT_CANNOT_EXEC = 126  # the command exists but cannot be executed
EXIT_NOT_FOUND = 127    # the command was not found

# Bounds of the report, whatever the command does: the text report prints at
# most MAX_LINES lines of each kind (files, processes, mounts, unreadable
# directories); the JSON report keeps file names up to MAX_NAME_BYTES in all
# and MAX_ITEMS processes, mounts and unreadable directories, and says what
# it cut (its "truncated" and "counts"); a process's argv is cut at
# MAX_ARGV_BYTES, and a text line at MAX_LINE_BYTES.
MAX_LINES = 100
MAX_LINE_BYTES = 4096
MAX_NAME_BYTES = 8 << 20
MAX_ITEMS = 1000
MAX_ARGV_BYTES = 4096

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
  --subids MODE   auto (default): a non-root caller with subordinate ids
                  (/etc/subuid and /etc/subgid, newuidmap and newgidmap)
                  gets the other ids below 65536 mapped to them, so that
                  chown or setuid to another user fail with EPERM as on the
                  host; off: map the caller's uid and gid only
  --report FILE   write a JSON report of the run to FILE (a device or a pipe
                  is written in place)
  --strict        exit with status 3 when anything leaked and COMMAND
                  succeeded (a failing COMMAND keeps its own status)
  --kill-timeout SECONDS
                  grace between SIGTERM and SIGKILL for leaked processes,
                  and for COMMAND after --timeout (default 5)
  --timeout SECONDS
                  stop COMMAND after SECONDS (SIGTERM, SIGKILL after
                  --kill-timeout), report as usual, exit 124
  --ignore GLOB   do not report leaked paths matching GLOB (fnmatch, absolute;
                  a matching directory is skipped whole), e.g. a runner's own
                  /tmp/pytest-of-*; repeatable
  --stdout-report print the report on stdout (where nxdtest's trun printed
                  it) instead of stderr
  --probe         print what is available (+userns -subids (...) +fuse) and exit 0 when
                  isolation works, 1 when it does not
  --version       print the version and exit
  -h, --help      show this help and exit

isolation: a non-root caller keeps its uid and gid in a new user namespace
that maps them (and its subordinate ids, see --subids); COMMAND runs with CAP_SYS_ADMIN only (mount and FUSE
work, file permissions still apply), cannot unmount the private mounts, and
/etc/passwd and /etc/group list only the caller, root, nobody, nogroup and
disk. A root caller gets mount and pid namespaces and keeps all of root's
powers. Mounts never propagate to the host. TMPDIR, TMP and TEMP, when set
outside the private mounts or to a directory missing there, are set to /tmp.
Without size=, each tmpfs may grow to half of the RAM: give sizes.

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
be executed; 127 if it is not found; 124 after --timeout; 2 for a usage
error; 3 for leaks with --strict; 125 if isolate-exec itself fails or --userns require cannot be met
(after COMMAND ran, a failed leak check gives 125 if COMMAND succeeded, its
own status if not, and an "isolate-exec: ..." line).
"""


class UsageError(Exception):
    """Bad command line or bad arguments: exit 2 with one line on stderr."""


class SetupError(Exception):
    """An isolation step failed, before the command started; str() names the
    step, the path and the reason. unavailable: the kernel or its confinement
    refuses the step here (seccomp, AppArmor, sysctls, no user namespaces):
    fall back; otherwise it is isolate-exec's own failure (exit 125), e.g. a
    tmpfs option the kernel rejects."""

    def __init__(self, message, unavailable=False):
        Exception.__init__(self, message)
        self.unavailable = unavailable


# errno values by which a kernel or its confinement refuses namespaces or
# mounts: EPERM (seccomp, no CAP_SYS_ADMIN, Debian's unprivileged_userns_clone
# = 0), EACCES (AppArmor), ENOSPC (max_user_namespaces reached, or 0),
# EUSERS (the same before Linux 4.9), EINVAL (RHEL 7 kernels without
# user_namespace.enable=1), ENOSYS.
REFUSALS = (errno.EPERM, errno.EACCES, errno.ENOSPC, errno.EUSERS, errno.EINVAL, errno.ENOSYS)


def _os_error(what, err=None, refusals=(errno.EPERM, errno.EACCES)):
    if err is None:
        err = _ctypes.get_errno()
    return SetupError('%s: %s' % (what, os.strerror(err)), err in refusals)


def describe(exc):
    """One line for an unexpected exception: its type and message."""
    if isinstance(exc, EnvironmentError) and exc.errno:
        text = os.strerror(exc.errno)
        if getattr(exc, 'filename', None):
            text = '%s: %s' % (exc.filename, text)
    else:
        text = str(exc)
    return '%s: %s' % (type(exc).__name__, text) if text else type(exc).__name__


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


def _unsafe(ch):
    """Characters that must not reach a terminal or a log raw: control
    characters (ESC starts terminal sequences), and format characters such as
    the bidi overrides (U+202E shows a name reversed) or zero-width ones."""
    c = ord(ch)
    if c < 0x20 or 0x7f <= c < 0xa0:
        return True
    if c < 0xa0:
        return False
    if PY2:
        import unicodedata
        return unicodedata.category(ch)[0] in 'CZ' and ch != u' '
    return not ch.isprintable()


def escape_name(name, backslash=True):
    """Return name bytes as one unambiguous, harmless line: control and format
    characters and invalid UTF-8 bytes are written as escapes (\\n, \\x1b,
    \\u202e, \\xff), and so is the backslash itself (unless backslash is
    False: mountinfo lines have their own octal escapes, \\134 for it)."""
    if not name.translate(None, _PLAIN if backslash else _PLAIN + b'\\'):
        return name
    escapes = _ESCAPES if backslash else dict((k, v) for k, v in _ESCAPES.items() if k != 0x5c)
    try:
        chars = name.decode('utf-8')
    except UnicodeDecodeError:
        out = []
        for c in bytearray(name):
            if c in escapes:
                out.append(escapes[c])
            elif 0x20 <= c < 0x7f:
                out.append(chr(c))
            else:
                out.append('\\x%02x' % c)
        return ''.join(out).encode('ascii')
    out = []
    for ch in chars:
        c = ord(ch)
        if c in escapes:
            out.append(escapes[c])
        elif c >= 0x20 and c != 0x7f and (c < 0x80 or not _unsafe(ch)):
            out.append(ch)
        elif c < 0x100:
            out.append(u'\\x%02x' % c)
        elif c < 0x10000:
            out.append(u'\\u%04x' % c)
        else:
            out.append(u'\\U%08x' % c)
    return u''.join(out).encode('utf-8')


def write_all(fd, data, errors=False):
    """Write all of data to fd; give up silently if fd is gone (EPIPE, EBADF),
    unless errors is true (then raise OSError)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            if errors:
                raise
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
    subids = 'auto'
    report = None
    strict = False
    kill_timeout = 5.0
    timeout = None
    ignore = ()
    stdout_report = False
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
        if name in ('-h', '--help', '--version', '--probe', '--strict', '--stdout-report'):
            if eq:
                raise UsageError('option %s takes no value' % name)
            if name in ('-h', '--help'):
                opts.help = True
                return opts
            if name == '--version':
                opts.version = True
                return opts
            setattr(opts, name[2:].replace('-', '_'), True)
        elif name in ('--tmpfs', '--userns', '--subids', '--report', '--kill-timeout',
                      '--timeout', '--ignore'):
            if not eq:
                i += 1
                if i == len(argv):
                    raise UsageError('option %s needs a value' % name)
                value = argv[i]
                if value.startswith('-') and value[1:2] not in ('', '.') and not value[1].isdigit():
                    # "--report --strict": a forgotten value, not a file name
                    raise UsageError('option %s needs a value, not %r (give %s=%s if '
                                     'that is meant)' % (name, value, name, value))
            if name == '--tmpfs':
                path, _, options = value.partition(':')
                opts.tmpfs_specs.append((path, options))
            elif name == '--userns':
                if value not in ('auto', 'require', 'off'):
                    raise UsageError('--userns %r: must be auto, require or off' % value)
                opts.userns = value
            elif name == '--subids':
                if value not in ('auto', 'off'):
                    raise UsageError('--subids %r: must be auto or off' % value)
                opts.subids = value
            elif name == '--report':
                opts.report = check_report_path(value)
            elif name == '--timeout':
                opts.timeout = check_timeout(value)
            elif name == '--ignore':
                opts.ignore = tuple(opts.ignore) + (check_ignore(value),)
            else:
                opts.kill_timeout = check_kill_timeout(value)
        else:
            raise UsageError('unknown option %r' % arg)
        i += 1
    opts.command = argv[i:]
    if not opts.command and not opts.probe:
        raise UsageError('no command given')
    if opts.command and not opts.command[0]:
        raise UsageError('empty command name')
    opts.tmpfs = make_tmpfs_table(opts.tmpfs_specs)
    return opts


def check_report_path(path, what='--report'):
    """Check that a report can be written at path; return it absolute (the
    command may change directory, the report is written on the host). A
    device or a pipe (/dev/stdout) is written in place: it must be writable;
    a file is replaced: its directory must be."""
    if not path:
        raise UsageError('%s: empty path' % what)
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise UsageError('%s %s: is a directory' % (what, path))
    if not os.path.isdir(directory):
        raise UsageError('%s %s: directory %s does not exist' % (what, path, directory))
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        if not os.access(path, os.W_OK):
            raise UsageError('%s %s: not writable' % (what, path))
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError('%s %s: directory %s is not writable' % (what, path, directory))
    return path


def check_timeout(value, what='--timeout'):
    """A positive number of seconds."""
    try:
        timeout = float(value)
    except ValueError:
        timeout = 0
    if not 0 < timeout < 1e7:  # also rejects nan
        raise UsageError('%s %r: must be a number of seconds > 0' % (what, value))
    return timeout


def check_ignore(pattern, what='--ignore'):
    """An absolute glob pattern (fnmatch) of leaked paths not to report."""
    if not pattern.startswith('/') or '\0' in pattern or '\n' in pattern:
        raise UsageError('%s %r: must be an absolute glob pattern, e.g. /tmp/pytest-of-*'
                         % (what, pattern))
    return pattern.rstrip('/') or '/'


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
O_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0o400000)

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
                        err, REFUSALS)
    return pid


def mount(source, target, fstype, flags, data, what):
    b = lambda s: None if s is None else fsencode(s)
    if c_function('mount')(b(source), b(target), b(fstype), _ULong(flags), b(data)) < 0:
        raise _os_error(what)


def enter_mount_namespace(fd, what):
    """setns(2) into the mount namespace open as fd (Linux 3.8): the caller
    needs CAP_SYS_ADMIN in the user namespace owning it, which the supervisor
    has over the command's (it is in the parent user namespace, with the
    owner's uid); it also gets that namespace's root and working directory."""
    if c_function('setns')(fd, CLONE_NEWNS) < 0:
        raise _os_error(what)


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


def make_pipe():
    """A close-on-exec pipe whose ends are not 0, 1 or 2: with the standard
    streams closed, os.pipe() would return them, and a warning written to
    fd 2 would go into the pipe."""
    ends = []
    for fd in os.pipe():
        if fd <= 2:
            import fcntl
            new = fcntl.fcntl(fd, fcntl.F_DUPFD, 3)
            os.close(fd)
            fd = new
        _set_cloexec(fd)
        ends.append(fd)
    return ends


def _set_cloexec(fd):
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


# -- isolation steps (run by the supervisor, in its new namespaces) -----------

def set_parent_death_signal(lifeline, signum):
    """Get signum when isolate-exec dies: SIGKILL for the pid-1 supervisor,
    which kills the whole run. The parent may have died before prctl:
    writing to its pipe tells."""
    prctl(PR_SET_PDEATHSIG, signum, what='prctl PR_SET_PDEATHSIG')
    try:
        os.write(lifeline, b'+')
    except OSError:  # EPIPE: isolate-exec is gone
        os._exit(EXIT_FAILURE)


def write_proc_file(path, text):
    """Write text to a /proc file in one write(2): the kernel takes an id
    map whole, from a single write. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | O_CLOEXEC)
    try:
        os.write(fd, text.encode('ascii'))
    finally:
        os.close(fd)


def map_caller_ids(uid, gid):
    """Map the caller's uid and gid, and only them, into the new user namespace."""
    # Since Linux 3.19 an unprivileged process may write gid_map only after
    # writing "deny" to /proc/self/setgroups (CVE-2014-8989); on older kernels
    # the file does not exist and gid_map is writable as is.
    for name, line in (('setgroups', 'deny'), ('uid_map', '%d %d 1' % (uid, uid)),
                       ('gid_map', '%d %d 1' % (gid, gid))):
        path = '/proc/self/' + name
        try:
            write_proc_file(path, line)
        except OSError as e:
            if name == 'setgroups' and e.errno == errno.ENOENT:
                continue
            raise _os_error('write %s' % path, e.errno)


# Subordinate ids (subuid(5), subgid(5)): the ranges of host ids that a user
# may map into its user namespaces, through shadow's setuid newuidmap and
# newgidmap (Debian package uidmap), as rootless containers do. The kernel
# lets an unprivileged process map only its own id, so every other id a test
# picks (root, nobody, the "other user" of CPython's test_os) is unmapped and
# chown, setuid or Popen(user=) fail with EINVAL instead of the EPERM the
# test expects on the host. With the caller's subordinate ids, the ids below
# ID_LIMIT are mapped (to them), the caller's own id staying itself: those
# calls then fail with EPERM (the command has no CAP_SETUID nor CAP_CHOWN).
ID_LIMIT = 65536
# Linux < 4.15 takes at most 5 lines per map (commit 6397fac4915a raised it
# to 340).
MAX_MAP_LINES = 5
_MAP_TOOL_DIRS = ('/usr/bin', '/bin', '/usr/sbin', '/sbin')


class SubordinateIds(object):
    """The uid and gid maps to write into a new user namespace with
    newuidmap and newgidmap, or why there are none (reason)."""
    uid = gid = tools = None
    reason = None

    def __init__(self, uid, gid, database='/etc'):
        import pwd
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None
        maps = []
        for kind, own, tool in (('uid', uid, 'newuidmap'), ('gid', gid, 'newgidmap')):
            path = os.path.join(database, 'sub' + kind)
            ranges = subordinate_ranges(path, name, uid)
            lines = subordinate_id_map(own, ranges)
            if lines is None:
                self.reason = 'no subordinate %ss for %s in %s' % (
                    kind, name or 'uid %d' % uid, path)
                return
            # the system's, not one on the caller's PATH: only a setuid
            # one works, and a test must not change what its run maps
            found = [os.path.join(d, tool) for d in _MAP_TOOL_DIRS
                     if os.path.exists(os.path.join(d, tool))]
            if not found:
                self.reason = '%s not found' % tool
                return
            found = found[0]
            if os.stat(found).st_uid != 0:
                # In a user namespace where the host's root is unmapped (a
                # nested run), neither its setuid bit nor its file
                # capabilities take effect (fs/exec.c bprm_fill_uid,
                # security/commoncap.c rootid_owns_currentns).
                self.reason = '%s is not owned by root here' % found
                return
            maps.append((lines, found))
        (self.uid, newuidmap), (self.gid, newgidmap) = maps
        self.tools = newuidmap, newgidmap


def subordinate_ranges(path, name, uid):
    """-> [(first, count)] of the lines of path (NAME_OR_UID:FIRST:COUNT)
    for the user; none if path cannot be read"""
    ranges = []
    try:
        with open(path, 'rb') as f:
            data = f.read(1 << 20).decode('utf-8', 'replace')
    except (IOError, OSError):
        return ranges
    for line in data.splitlines():
        fields = line.strip().split(':')
        if len(fields) != 3 or fields[0] not in (name, str(uid)):
            continue
        try:
            first, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if first >= 0 and count > 0:
            ranges.append((first, count))
    return ranges


def subordinate_id_map(own, ranges):
    """Map lines (inside, outside, count): own to itself, then the other ids
    below ID_LIMIT, from 0 up, to the subordinate ranges (without own, which
    a range may include). -> the lines, or None if no range is usable"""
    lines = [(own, own, 1)]
    wanted = [(first, end) for first, end in ((0, min(own, ID_LIMIT)), (own + 1, ID_LIMIT))
              if first < end]
    for start, count in ranges:
        end = start + count
        for a, b in ((start, min(end, own)), (max(start, own + 1), end)):
            while a < b and wanted and len(lines) < MAX_MAP_LINES:
                first, last = wanted[0]
                n = min(b - a, last - first)
                lines.append((first, a, n))
                a += n
                if first + n == last:
                    wanted.pop(0)
                else:
                    wanted[0] = (first + n, last)
    return lines if len(lines) > 1 else None


def map_subordinate_ids(pid, ids):
    """Have newuidmap and newgidmap write the maps of pid's user namespace
    (they are setuid root: an unprivileged writer may map its own id only),
    both at once, without the subprocess module (~8 ms to import).
    -> None, or what failed"""
    env = {'PATH': ':'.join(_MAP_TOOL_DIRS), 'LC_ALL': 'C'}
    started = []
    for tool, lines in zip(ids.tools, (ids.uid, ids.gid)):
        argv = [tool, str(pid)] + ['%d' % n for line in lines for n in line]
        started.append((tool,) + _spawn(argv, env))
    failed = None
    for tool, child, output in started:
        out = _read_all(output).decode('utf-8', 'replace').strip()
        os.close(output)
        code = raw_wait_status_code(_waitpid(child, 0)[1])
        if code and failed is None:
            out = out.splitlines()[-1] if out else 'exit status %d' % code
            failed = '%s: %s' % (os.path.basename(tool), out[:200])
    return failed


def _spawn(argv, env):
    """Start argv (an absolute path) with stdin /dev/null and its output to
    a pipe. -> (pid, the pipe's read end)"""
    r, w = make_pipe()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.execve(argv[0], argv, env)
        except OSError as e:
            write_all(w, ('%s\n' % os.strerror(e.errno)).encode('ascii', 'replace'))
        finally:
            os._exit(EXIT_NOT_FOUND)
    os.close(w)
    return pid, r


def write_id_maps(pid, ids):
    """Map into the user namespace of pid (a child of ours, in a user
    namespace we own) the same ids as ours, to themselves: we have
    CAP_SETUID and CAP_SETGID over it, so more than one line is allowed and
    setgroups need not be denied (user_namespaces(7))."""
    for name, lines in (('uid_map', ids.uid), ('gid_map', ids.gid)):
        path = '/proc/%d/%s' % (pid, name)
        text = ''.join('%d %d %d\n' % (inside, inside, n) for inside, _, n in lines)
        try:
            write_proc_file(path, text)
        except OSError as e:
            raise _os_error('write %s' % path, e.errno, ())


def wait_for_id_maps(fd):
    """Wait for isolate-exec to have written our maps (b'M'); exit if it
    could not (it then starts a supervisor that maps the caller only)."""
    ok = os.read(fd, 1) == b'M'
    os.close(fd)
    if not ok:
        os._exit(0)


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


def _open_directory(path, what):
    try:
        return os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except OSError as e:
        raise _os_error('%s %s' % (what, path), e.errno, ())


def mount_private_tmpfs(entry):
    """Mount a fresh tmpfs on entry.path. -> fd of its root, which the leak
    walk starts from (whatever the command stacks on the path later)"""
    if not os.path.isdir(entry.path):  # inside a private tmpfs mounted before
        try:
            os.makedirs(entry.path)
        except OSError as e:
            raise _os_error('create %s' % entry.path, e.errno, ())
    mount('tmpfs', entry.path, 'tmpfs', entry.flags, ','.join(entry.data) or None,
          'mount tmpfs on %s' % entry.path)
    return _open_directory(entry.path, 'open')


_SAFE_NAME = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-')


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

    # An id without an entry gets one named after $USER, if that is a plain
    # name: the environment is the caller's to set, the database is not (a
    # ':' or a newline would add fields or users).
    name = os.environ.get('USER') or os.environ.get('LOGNAME') or ''
    if not (name and set(name) <= _SAFE_NAME and not name.startswith('-') and len(name) <= 32):
        name = 'user%d' % uid
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
    # The source files live on a small tmpfs mounted on scratch (the host's
    # /tmp, which the private /tmp then covers), then lazily unmounted: the
    # bind mounts keep it alive, and nothing is created anywhere. The files
    # must not be unlinked: a bind mount of a deleted file cannot be mounted
    # over, and a nested isolate-exec would then fail.
    passwd, group = minimal_user_database(uid, gid)
    mount('tmpfs', scratch, 'tmpfs', TMPFS_DEFAULT_FLAGS | MS_NOEXEC, 'size=64k,mode=755',
          'mount tmpfs on %s' % scratch)
    for name, content in (('passwd', passwd), ('group', group)):
        target = '/etc/' + name
        if not os.path.exists(target):
            continue
        source = os.path.join(scratch, name)
        try:
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
            try:
                write_all(fd, content.encode('utf-8'), errors=True)
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
        except OSError as e:
            raise _os_error('write %s' % source, e.errno, ())
        mount(source, target, None, MS_BIND, None, 'bind %s on %s' % (source, target))
    if c_function('umount2')(fsencode(scratch), MNT_DETACH) < 0:
        raise _os_error('umount %s' % scratch)


def mount_private_proc():
    """Mount a /proc that shows only the new pid namespace. -> fd of it: the
    supervisor reads processes and mount tables through it, whatever the
    command mounts on /proc later."""
    # Allowed only with CAP_SYS_ADMIN in the user namespace owning the pid
    # namespace, and only if no locked mount hides part of the host's /proc
    # (fs/namespace.c mount_too_revealing(): docker's masked paths make it fail).
    mount('proc', '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC, None, 'mount proc on /proc')
    return _open_directory('/proc', 'open')


def look_up_working_directory(run):
    """A working directory inside a private mount still is the host's directory
    under it: look it up again, or relative paths would write to the host.
    Any other is left as it is (the caller may be unable to look it up)."""
    if run.cwd is not None and in_private_mount(run.cwd, run.tmpfs):
        try:
            os.chdir(run.cwd)
        except OSError as e:
            raise SetupError('working directory %s: %s (hidden by a private tmpfs)'
                             % (run.cwd, os.strerror(e.errno)))


def drop_to_sys_admin():
    """Make the command keep exactly CAP_SYS_ADMIN across exec, for a non-zero
    uid in a user namespace (capabilities(7): only ambient capabilities survive
    execve for it), so that mount and FUSE work while file permissions still
    apply (no CAP_DAC_OVERRIDE)."""
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
    """Fallback mode: orphaned descendants (double fork, setsid) become the
    supervisor's children, so they can be found and killed (Linux 3.4)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1, what='prctl PR_SET_CHILD_SUBREAPER')


# -- signals -------------------------------------------------------------------

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_forward_to = None      # pid the forwarded signals go to
_pending_signal = None  # a signal received before there was anyone to forward it to
_orphaned = None        # fallback supervisor: (parent pid, kill timeout)
_stopping = None        # the command is being stopped: [kill timeout, signals sent]


def _forward_signal(signum, frame):
    global _pending_signal
    if _orphaned is not None and os.getppid() != _orphaned[0]:
        # isolate-exec is gone (PR_SET_PDEATHSIG): this SIGTERM goes to the
        # command; SIGKILL follows after the kill timeout, and the supervisor
        # cleans up as usual
        stop_command(_orphaned[1], sent=[signal.SIGTERM])
    if _forward_to is None:
        _pending_signal = signum
        return
    try:
        os.kill(_forward_to, signum)
    except OSError:
        pass


def stop_command(kill_timeout, sent=None):
    """Stop the command: SIGTERM now (unless already sent), SIGKILL after
    kill_timeout (a SIGALRM timer, so that waiting for it goes on)."""
    global _stopping
    if _stopping is not None:
        return
    _stopping = [kill_timeout, list(sent or ())]
    signal.signal(signal.SIGALRM, _on_alarm)
    if not sent:
        _on_alarm(signal.SIGALRM, None)
    else:
        signal.setitimer(signal.ITIMER_REAL, max(kill_timeout, 0.001))


def _on_alarm(signum, frame):
    """--timeout's timer: the next step of stop_command()."""
    if _stopping is None:  # the timeout itself
        return stop_command(_timeout[1])
    kill_timeout, sent = _stopping
    signum = signal.SIGKILL if signal.SIGTERM in sent else signal.SIGTERM
    sent.append(signum)
    if _forward_to is not None:
        try:
            os.kill(_forward_to, signum)
        except OSError:
            pass
    if signum == signal.SIGTERM:
        signal.setitimer(signal.ITIMER_REAL, max(kill_timeout, 0.001))


_timeout = (None, None)  # (seconds, kill timeout) of --timeout


def arm_timeout(seconds, kill_timeout):
    """--timeout: stop_command() after seconds."""
    global _timeout
    _timeout = (seconds, kill_timeout)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def disarm_timeout():
    signal.setitimer(signal.ITIMER_REAL, 0)


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
    our caller (nohup) stay ignored, for us and the command. SIGCHLD ignored
    by the caller would make the kernel reap our children itself (waitpid
    fails with ECHILD): it gets its default."""
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        undo.register(signal.signal, signal.SIGCHLD, signal.SIG_IGN)
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


# The OOM killer kills the process with the highest badness (mm/oom_kill.c
# oom_badness(): resident, swap and page-table pages, plus oom_score_adj in
# thousandths of the memory). A test filling a private tmpfs in a
# memory-limited cgroup charges it with pages that no process has resident:
# the largest process is then isolate-exec or its supervisor (~10 MiB), and
# the run would end with no report. The command and its descendants (they
# inherit it) are made the first victims instead, then the supervisor, whose
# death frees the private tmpfs (it holds the mount namespace) and leaves
# isolate-exec to report what it was sent. An unprivileged process may raise
# its own oom_score_adj, and lower it again only down to the last value a
# privileged writer set (oom_score_adj_min, Linux 2.6.36, commit
# a63d83f427fb; CAP_SYS_RESOURCE): a test can undo this on purpose, back to
# its caller's, not below.
OOM_SCORE_ADJ_COMMAND = 1000
OOM_SCORE_ADJ_SUPERVISOR = 500


def make_oom_victim(level):
    """Raise our oom_score_adj to level (never lower it); best effort:
    without it, only the report is at risk."""
    try:
        fd = os.open('/proc/self/oom_score_adj', os.O_RDWR | O_CLOEXEC)
    except OSError:
        return
    try:
        if int(os.read(fd, 32) or 0) < level:
            os.write(fd, b'%d' % level)
    except (OSError, ValueError):
        pass
    finally:
        os.close(fd)


# Memory the supervisor holds while the command runs, in two parts: one it
# gives back when the command ended (for the mount check), the other once
# the leaked processes are dead (for the walk), when nothing of the run can
# take it any more. In a cgroup that the test filled up to its limit (tmpfs
# pages stay charged after the test is killed, and a leaked child may go on
# writing), the checks then have room instead of making the OOM killer take
# the supervisor; its exit then frees its own memory for isolate-exec.
MEMORY_RESERVE = (512 << 10, 512 << 10)
_reserve = []
# mmap(2) flags, the same on every architecture of _CLONE_SYSCALL (not on
# mips, sparc, alpha or parisc); MAP_POPULATE (Linux 2.5.46) faults every
# page in at once, several times faster than touching them one by one.
_PROT_READ_WRITE = 0x1 | 0x2
_MAP_PRIVATE_ANONYMOUS_POPULATE = 0x02 | 0x20 | 0x8000


def reserve_memory(sizes=MEMORY_RESERVE):
    """Map and populate anonymous memory (charged to the cgroup at once);
    best effort."""
    mmap = c_function('mmap', _LibcLongFunction)
    for size in sizes:
        address = mmap(None, _ULong(size), _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS_POPULATE,
                       -1, _Long(0))
        if address == -1:
            return
        _reserve.append((address, size))


def release_memory(parts=None):
    """Unmap parts of the reserve (default: all): the cgroup is uncharged
    at once."""
    for _ in range(len(_reserve) if parts is None else min(parts, len(_reserve))):
        address, size = _reserve.pop()
        c_function('munmap')(_ULong(address & ((1 << 64) - 1)), _ULong(size))


def exec_command(run, env, report_fd):
    """In the command's process: exec it with default signal dispositions and
    the standard streams the caller had closed closed again. Never returns;
    an exec failure is written to report_fd as b'X<errno>\\n'."""
    try:
        # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        for fd in run.closed_stdio:
            os.close(fd)
        make_oom_victim(OOM_SCORE_ADJ_COMMAND)
        os.execvpe(run.command[0], run.command, env)
    except OSError as e:
        write_all(report_fd, b'X%d\n' % e.errno)
    except BaseException:
        write_all(report_fd, b'X%d\n' % errno.ENOEXEC)
    finally:
        os._exit(EXIT_NOT_FOUND)


def exec_failure(run, env, err):
    """Print why the command could not be executed. -> 127 or 126"""
    argv0 = run.command[0]
    if err == errno.EACCES and '/' not in argv0 and not _on_path(argv0, env):
        # execvp says EACCES when a PATH directory cannot be searched (e.g.
        # /root/... for nobody), even if the command is nowhere.
        err = errno.ENOENT
    warn('%s: %s: %s' % (PROG, argv0, os.strerror(err)))
    return EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_CANNOT_EXEC


def _on_path(name, env):
    return any(os.path.exists(os.path.join(d or '.', name))
               for d in env.get('PATH', os.defpath).split(':'))


def _read_tokens(fd):
    """Read fd to EOF. -> {b'letter': int} from the b'<letter><number>\\n' tokens"""
    tokens = {}
    for token in _read_all(fd).split(b'\n'):
        if token[1:].isdigit():
            tokens[token[:1]] = int(token[1:])
    return tokens


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


def reap_children():
    """Reap the children that exited (as pid 1 or a subreaper, orphans too)."""
    while True:
        try:
            pid, _ = _waitpid(-1, os.WNOHANG)
        except OSError as e:
            if e.errno == errno.ECHILD:
                return
            raise
        if pid == 0:
            return


class IsolatedCommand(object):
    """The command's process in the isolated mode: forked into a mount
    namespace of its own (and a user namespace of its own for a non-root
    caller), set up, and waiting for go()."""

    def __init__(self, run, env, proc_fd):
        # Every mount the supervisor made is copied into the command's mount
        # namespace. For a non-root caller that namespace belongs to a new,
        # less privileged user namespace, so the copies are locked
        # (mount_namespaces(7); Linux 3.12, commit 5ff9d8a65ce8 "vfs: Lock in
        # place mounts from more privileged users"): umount(2) of one of them
        # fails with EINVAL, and so does a non-recursive bind mount of a
        # directory they are mounted under. The command cannot uncover the
        # host's /tmp, /dev/shm or /proc beneath them. The command's
        # CAP_SYS_ADMIN is then its own namespace's only: it mounts (tmpfs,
        # FUSE) there, while the supervisor keeps reading its own /proc.
        self.run, self.env = run, env
        flags = CLONE_NEWNS | (CLONE_NEWUSER if run.userns else 0)
        sync_r, sync_w = make_pipe()
        go_r, go_w = make_pipe()
        try:
            pid = clone_into_namespaces(flags)
        except SetupError as e:
            for fd in (sync_r, sync_w, go_r, go_w):
                os.close(fd)
            e.args = ("the command's %s" % e.args[0],)
            raise
        if pid == 0:
            os.close(sync_r)
            os.close(go_w)
            self._child(sync_w, go_r)  # does not return
        os.close(sync_w)
        os.close(go_r)
        self.pid, self.sync_r, self.go_w = pid, sync_r, go_w
        try:
            if run.userns and run.subids:
                write_id_maps(pid, run.subids)
                write_all(go_w, b'M')
            ready = os.read(sync_r, 1 << 12)
            if ready != b'R':
                raise self._child_error(ready)
            # Its mount namespace, kept open to be entered after it exited,
            # and the baseline of the mount diff, read through our /proc.
            os.fchdir(proc_fd)
            self.mount_ns = _open_directory_entry('%d/ns/mnt' % pid, "the command's mount namespace")
            self.mounts_before = _read_proc_file('%d/mountinfo' % pid)
        except BaseException:
            self.quit()
            raise

    def _child(self, sync_w, go_r):
        """The command's process: set up, say so, wait for go, exec."""
        try:
            run = self.run
            if run.userns and run.subids:
                if os.read(go_r, 1) != b'M':
                    os._exit(0)
            elif run.userns:
                map_caller_ids(run.uid, run.gid)
            if run.userns:
                drop_to_sys_admin()
            if run.foreground:
                os.setpgid(0, 0)
                give_terminal_to(os.getpid())
            os.write(sync_w, b'R')
            if os.read(go_r, 1) != b'G':
                os._exit(0)
        except SetupError as e:
            write_all(sync_w, b'E' + marshal.dumps((str(e), e.unavailable)))
            os._exit(EXIT_FAILURE)
        except BaseException as e:
            write_all(sync_w, b'E' + marshal.dumps(('the command set-up: ' + describe(e), False)))
            os._exit(EXIT_FAILURE)
        exec_command(run, self.env, sync_w)

    def _child_error(self, data):
        if data[:1] == b'E':
            try:
                message, unavailable = marshal.loads(data[1:])
                return SetupError("the command's " + message, unavailable)
            except (EOFError, ValueError, TypeError):
                pass
        return SetupError("the command's set-up: it died", False)

    def go(self):
        """Let it exec. -> None, or the exit code if it could not be executed"""
        write_all(self.go_w, b'G')
        os.close(self.go_w)
        tokens = _read_tokens(self.sync_r)  # EOF at exec: the pipe is close-on-exec
        os.close(self.sync_r)
        if b'X' in tokens:
            wait_command(self.pid)
            return exec_failure(self.run, self.env, tokens[b'X'])
        return None

    def quit(self):
        """Make it exit without running the command (probe, early signal)."""
        os.close(self.go_w)
        os.close(self.sync_r)
        wait_command(self.pid)


def _open_directory_entry(name, what):
    try:
        return os.open(name, os.O_RDONLY | O_CLOEXEC)
    except OSError as e:
        raise _os_error('open %s' % what, e.errno, ())


def _read_proc_file(name):
    """Read a file of the current directory (a /proc) whole."""
    fd = os.open(name, os.O_RDONLY | O_CLOEXEC)
    try:
        return _read_all(fd)
    finally:
        os.close(fd)


class FallbackCommand(object):
    """The command's process in the fallback mode: a process group of its own
    that it does not lead (a short-lived holder process creates it), so that
    `kill -9 0` from the command cannot kill the supervisor or isolate-exec,
    while the command may still call setsid() itself (which a group leader
    may not); the holder exits at once and the command becomes the
    supervisor's child (it is a subreaper)."""

    def __init__(self, run, env):
        self.run, self.env = run, env
        report_r, report_w = make_pipe()
        holder = os.fork()
        if holder == 0:
            try:
                os.close(report_r)
                os.setpgid(0, 0)
                if run.foreground:
                    give_terminal_to(os.getpid())
                pid = os.fork()
                if pid == 0:
                    exec_command(run, env, report_w)  # does not return
                write_all(report_w, b'P%d\n' % pid)
            finally:
                os._exit(0)
        os.close(report_w)
        tokens = _read_tokens(report_r)  # EOF when the command exec'd (or failed)
        os.close(report_r)
        _waitpid(holder, 0)
        self.pid = tokens.get(b'P')
        self.failure = tokens.get(b'X')

    def go(self):
        if self.pid is None:
            raise SetupError('could not start the command')
        if self.failure is not None:
            wait_command(self.pid)
            return exec_failure(self.run, self.env, self.failure)
        return None


# -- leak checks: processes ------------------------------------------------------

# PF_EXITING (include/linux/sched.h): set in the flags of /proc/PID/stat from
# the start of exit(); such a process is not a leak, it is going away (e.g. a
# nested run's supervisor while the kernel frees its tmpfs).
PF_EXITING = 0x4


class ProcessTable(object):
    """The processes of the run, read through a /proc directory opened before
    the command started (os.fchdir to it): whatever the command mounts on
    /proc, or unmounts, is not what the supervisor reads. isolated: every
    process but pid 1 is the run's; otherwise the supervisor's descendants."""

    def __init__(self, proc_fd, isolated):
        self.proc_fd, self.isolated = proc_fd, isolated

    def read(self, pid):
        """-> (ppid, alive, name, argv bytes list) of pid, or None if it is
        gone. A zombie, or an exiting process, is not alive, unless another
        of its threads still runs (its main thread may exit before them)."""
        try:
            stat_line = _read_proc_file('%d/stat' % pid)
        except (IOError, OSError):
            return None
        # "pid (comm) state ppid ...": comm may itself contain ") ".
        head, _, tail = stat_line.rpartition(b') ')
        name = head.partition(b' (')[2]
        fields = tail.split()
        try:
            ppid, flags = int(fields[1]), int(fields[6])
        except (IndexError, ValueError):
            return None
        alive = fields[0] not in (b'Z', b'X') and not flags & PF_EXITING
        if not alive:
            alive = self._other_thread_alive(pid)
        return ppid, alive, name, self._argv(pid) if alive else []

    def _other_thread_alive(self, pid):
        try:
            tids = os.listdir('%d/task' % pid)
        except OSError:
            return False
        for tid in tids:
            if tid != str(pid):
                try:
                    state = _read_proc_file('%d/task/%s/stat' % (pid, tid)).rpartition(b') ')[2]
                except (IOError, OSError):
                    continue
                if state[:1] not in (b'Z', b'X'):
                    return True
        return False

    @staticmethod
    def _argv(pid):
        """The argv, cut at MAX_ARGV_BYTES (a last '...' says it was cut)."""
        try:
            fd = os.open('%d/cmdline' % pid, os.O_RDONLY | O_CLOEXEC)
        except OSError:
            return []
        try:
            data = os.read(fd, MAX_ARGV_BYTES + 1)
        except OSError:
            data = b''
        finally:
            os.close(fd)
        if len(data) > MAX_ARGV_BYTES:
            return data[:MAX_ARGV_BYTES].split(b'\0') + [b'...']
        return data.split(b'\0')[:-1] if data else []

    def live(self):
        """-> {pid: (name, argv)} of the run's live processes"""
        os.fchdir(self.proc_fd)
        me = os.getpid()
        procs = {}
        for entry in os.listdir('.'):
            if entry.isdigit() and int(entry) != me:
                info = self.read(int(entry))
                if info is not None:
                    procs[int(entry)] = info
        if self.isolated:
            mine = procs
        else:  # the supervisor's descendants
            children = {}
            for pid, info in procs.items():
                children.setdefault(info[0], []).append(pid)
            mine, todo = {}, list(children.get(me, ()))
            while todo:
                pid = todo.pop()
                mine[pid] = procs[pid]
                todo.extend(children.get(pid, ()))
        return dict((pid, (info[2], info[3])) for pid, info in mine.items() if info[1])


# A process that exits by itself within this time after the command (a
# multiprocessing resource tracker notices its parent's exit a fraction of a
# millisecond later) is not a leak.
SETTLE_TIME = 0.1


def stop_leaked_processes(table, timeout):
    """Report and stop what the command left running: the processes still
    alive SETTLE_TIME after it get SIGTERM; those alive after timeout seconds
    (with what they started meanwhile) are frozen with SIGSTOP until no new
    one appears (a process forking on each signal cannot outrun it), then
    killed with SIGKILL. -> (leaked [(pid, name, argv)], pids SIGKILLed)"""
    alive = _wait_for_exits(table, table.live(), now() + SETTLE_TIME)
    leaked = [(pid,) + alive[pid] for pid in sorted(alive)]
    if not alive:
        return leaked, []
    _signal_all(alive, signal.SIGTERM)
    alive = _wait_for_exits(table, alive, now() + timeout)
    if not alive:
        return leaked, []
    known, stopped = set(pid for pid, _, _ in leaked), set()
    for _ in range(1000):
        alive = table.live()
        new = [pid for pid in alive if pid not in stopped]
        if not new:
            break
        leaked.extend((pid,) + alive[pid] for pid in sorted(new) if pid not in known)
        known.update(new)
        stopped.update(_signal_all(new, signal.SIGSTOP))
    killed = _signal_all(sorted(set(alive) | stopped), signal.SIGKILL)
    _wait_for_exits(table, alive, now() + 2)  # e.g. stuck in D state: left to the kernel
    return leaked, sorted(killed)


def _wait_for_exits(table, procs, deadline):
    """Wait until none of procs is alive, or deadline. -> those still alive"""
    delay = 0.001
    while procs:
        reap_children()
        still = table.live()
        procs = dict((pid, info) for pid, info in procs.items() if pid in still)
        if not procs or now() >= deadline:
            break
        time.sleep(min(delay, max(0, deadline - now())))
        delay = min(delay * 2, 0.05)
    return procs


def _kill_all_others(signum):
    """As pid 1 of a pid namespace: send signum to every other process in it
    (none left: ESRCH)."""
    if os.getpid() == 1:
        try:
            os.kill(-1, signum)
        except OSError:
            pass


def _signal_all(pids, signum):
    sent = []
    for pid in pids:
        try:
            os.kill(pid, signum)
            sent.append(pid)
        except OSError:
            pass
    return sent


# -- leak checks: mounts ---------------------------------------------------------

def parse_mounts(mountinfo):
    """-> [mount] from mountinfo bytes, each as 'SOURCE[ROOT] MOUNTPOINT
    FSTYPE OPTIONS' bytes (the /proc/mounts shape, with a bind mount's root)."""
    # Mount IDs, parent IDs and device numbers are left out: they are reused
    # and differ between namespaces (proc(5)); so are propagation tags. Names
    # keep mountinfo's octal escapes (\040 for a space, \012 for a newline),
    # but the kernel does not escape \r or other control characters: lines
    # are split on \n only, and printed through escape_name().
    mounts = []
    for line in mountinfo.split(b'\n'):
        if not line:
            continue
        fields = line.split(b' ')
        try:
            sep = fields.index(b'-', 6)
            root, mountpoint, options = fields[3], fields[4], fields[5]
            fstype, source, super_options = fields[sep + 1:sep + 4]
        except (ValueError, IndexError):
            mounts.append(line)  # not expected: kept whole rather than lost
            continue
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


class WalkError(Exception):
    pass


def _opening_up(name, st, action):
    """action(name) on a directory listed as st; if it is mode 000 (EACCES),
    its owner may open it up first (it is the run's, and being thrown away).
    -> action's result, or None if it cannot be done"""
    try:
        return action(name)
    except OSError as e:
        if e.errno != errno.EACCES:
            return None
    try:
        os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        return action(name)
    except OSError:
        return None


class FileReport(object):
    """What the walks found, within the report's bounds: every path is
    counted; names are kept up to MAX_NAME_BYTES (then only counted), sticky
    and unreadable directories up to MAX_ITEMS. A path is only built while it
    is kept, so a deep tree costs memory in proportion to what is kept, not
    to the square of its depth."""

    def __init__(self):
        self.paths, self.sticky, self.unreadable, self.left = [], [], [], []
        self.count = self.sticky_count = self.unreadable_count = self.left_count = 0
        self.ignored = 0
        self.size = 0

    def keeps(self):
        return self.size < MAX_NAME_BYTES

    def add(self, path):
        self.count += 1
        if path is not None and self.size < MAX_NAME_BYTES:
            self.paths.append(path)
            self.size += len(path) + 1

    def add_files(self, directory, names):
        """The files of one directory (directory ends with '/'): one step
        for all of them, as long as they fit."""
        self.count += len(names)
        if self.size < MAX_NAME_BYTES and names:
            paths = [directory + name for name in names]
            self.paths.extend(paths)
            self.size += len(directory) * len(names) + sum(map(len, names)) + len(names)

    def add_special(self, kind, path):
        setattr(self, kind + '_count', getattr(self, kind + '_count') + 1)
        items = getattr(self, kind)
        if path is not None and len(items) < MAX_ITEMS:
            items.append(path)

    def result(self):
        result = {'files': b'\0'.join(self.paths), 'sticky': self.sticky,
                  'unreadable': self.unreadable, 'left': self.left,
                  'counts': {'leaked_files': self.count - self.sticky_count,
                             'sticky_dirs': self.sticky_count,
                             'unreadable_dirs': self.unreadable_count,
                             'left_files': self.left_count, 'ignored': self.ignored}}
        if len(self.paths) < self.count:
            result['files_cut'] = True
        return result


class Walk(object):
    """One walk of a directory tree open as root_fd, shown under prefix: in
    preorder with sorted names, without following symbolic links (directories
    are opened with O_NOFOLLOW and checked against what was listed), without
    crossing into other mounts (st_dev, and the statx mount id, which also
    tells a bind mount of the same file system), by relative fchdir (no
    lookup of long paths, PATH_MAX is 4096; no recursion, the tree may be
    deep). With remove, everything found is deleted on the way (fallback mode:
    the private TMPDIR is ours to delete, and nothing of the run is alive).
    Without remove (isolated mode: every process of the run is dead, the
    tmpfs is the run's own), directories are entered with a plain chdir."""

    def __init__(self, report, root_fd, prefix, skip=(), remove=False, ignore=(), shown_as=None):
        self.report, self.prefix, self.skip, self.remove = report, prefix, skip, remove
        self.root_fd = root_fd
        self.root = os.fstat(root_fd)
        self.mount_id = mount_id(root_fd) if remove else None
        self.names = []  # the path below root of the current directory
        # --ignore: paths matching them are not reported (a directory is
        # skipped whole); shown_as: what prefix stands for in the patterns
        # (fallback: the private TMPDIR is the run's /tmp)
        self.ignored = None
        if ignore:
            import fnmatch
            import re
            self.ignored = re.compile(b'|'.join(
                fsencode(fnmatch.translate(p)) for p in ignore)).match
            self.shown_as = shown_as or prefix

    def is_ignored(self, name):
        """Does the path of name, in the current directory, match --ignore?"""
        path = b'/'.join([self.shown_as] + self.names + [name])
        if self.ignored(path):
            self.report.ignored += 1
            return True
        return False

    def path(self, name):
        if not self.report.keeps():
            return None
        return b'/'.join([self.prefix] + self.names + [name])

    def run(self):
        os.fchdir(self.root_fd)
        self._make_writable(self.root_fd, self.root)
        self.quiet = 0  # > 0 inside an ignored directory being removed
        stack = [(self._list(), (self.root.st_dev, self.root.st_ino), False)]
        while stack:
            todo, _, quiet = stack[-1]
            if not todo:
                stack.pop()
                self.quiet -= quiet
                if stack:
                    self._go_up(stack[-1][1])
                continue
            name, st = todo.pop()
            quiet = False
            if self.ignored and not self.quiet and self.is_ignored(name):
                if not self.remove:
                    continue
                quiet = True  # walked to be removed, not reported
            if self.quiet or quiet:
                if st.st_dev == self.root.st_dev and self._enter(name, st):
                    self.names.append(name)
                    self.quiet += 1
                    stack.append((self._list(), (st.st_dev, st.st_ino), True))
                continue
            path = self.path(name)
            dpath = path and path + b'/'  # None past the budget: only counted
            if st.st_dev != self.root.st_dev:  # a mount point: only its directory is ours
                if path is None or path not in self.skip:
                    self.report.add(dpath)
                    if self.remove:
                        self.report.add_special('left', dpath)
                continue
            self.report.add(dpath)
            if st.st_mode & stat.S_ISVTX:  # like wcfs' shared registry: not a leak
                self.report.add_special('sticky', dpath)
            if not self._enter(name, st):
                self.report.add_special('unreadable', dpath)
                if self.remove:
                    self.report.add_special('left', dpath)
                continue
            self.names.append(name)
            stack.append((self._list(), (st.st_dev, st.st_ino), False))

    def _list(self):
        """List the current directory, report its files (deleting them with
        remove). -> its sub-directories, last first"""
        try:
            files, dirs = _list_cwd()
        except OSError:
            self.report.add_special('unreadable', self.path(b''))
            return []
        shown = files
        if self.quiet:
            shown = []
        elif self.ignored:
            shown = [name for name in files if not self.is_ignored(name)]
        directory = self.path(b'')  # b'PREFIX/.../' or None past the budget
        if directory is None:
            self.report.count += len(shown)
        else:
            self.report.add_files(directory, shown)
        if self.remove:
            for name in files:
                try:
                    os.unlink(name)
                except OSError:
                    self.report.add_special('left', self.path(name))
        return dirs[::-1]

    def _enter(self, name, st):
        """chdir into name, which was listed as st; with remove, only if it
        still is that very directory on the same mount (opened without
        following a link, checked, then fchdir). -> False if it cannot be
        entered"""
        if not self.remove:  # two system calls a directory instead of six
            return _opening_up(name, st, lambda name: os.chdir(name) or True) is not None
        fd = _opening_up(name, st, lambda name: os.open(
            name, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC))
        if fd is None:
            return False
        try:
            now_st = os.fstat(fd)
            if (now_st.st_dev, now_st.st_ino) != (st.st_dev, st.st_ino):
                return False
            if self.mount_id is not None and mount_id(fd) not in (None, self.mount_id):
                return False  # a bind mount of the same file system
            self._make_writable(fd, now_st)
            os.fchdir(fd)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _make_writable(self, fd, st):
        """With remove, a directory must be writable to delete what it holds
        (e.g. mode 0500): it is the run's own, and about to go."""
        if self.remove and st.st_mode & 0o700 != 0o700:
            try:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
            except OSError:
                pass

    def _go_up(self, parent):
        """chdir .. and check it is the directory we came from (nothing of the
        run is alive to move it, but never assume), then remove the one left."""
        name = self.names.pop()
        os.chdir(b'..')
        if self.remove:
            st = os.stat(b'.')
            if (st.st_dev, st.st_ino) != parent:
                raise WalkError('%s moved during the walk' % fsdecode(self.prefix))
            try:
                os.rmdir(name)
            except OSError:
                if not self.quiet:
                    self.report.add_special('left', self.path(name) and self.path(name) + b'/')


# -- the supervisor ----------------------------------------------------------------

class Run(object):
    """What a run needs, prepared by isolate-exec before forking."""

    def __init__(self, opts, closed_stdio=()):
        self.command = list(opts.command) if opts.command is not None else None
        self.tmpfs = opts.tmpfs
        self.kill_timeout = opts.kill_timeout
        self.timeout = opts.timeout
        self.ignore = opts.ignore
        self.uid, self.gid = os.getuid(), os.getgid()
        self.userns = self.uid != 0
        # the caller's subordinate ids to map, if any (non-root callers)
        self.subids = self.subids_reason = self.map_fd = None
        if self.userns:
            if opts.subids == 'off':
                self.subids_reason = 'disabled by --subids off'
            else:
                ids = SubordinateIds(self.uid, self.gid)
                self.subids, self.subids_reason = (ids, None) if ids.uid else (None, ids.reason)
        self.isolated = True
        self.parent = os.getpid()
        self.closed_stdio = list(closed_stdio)
        try:
            self.cwd = os.getcwd()
        except OSError:  # deleted: nothing to look up again
            self.cwd = None
        self.foreground = terminal_foreground()
        self.env = dict(os.environ)


def private_env(env, tmpfs):
    """TMPDIR, TMP and TEMP set outside the private mounts, or to a directory
    that does not exist in them (they are fresh), now point to /tmp, so that
    temporary files land where they are isolated and checked."""
    for name in ('TMPDIR', 'TMP', 'TEMP'):
        value = env.get(name)
        if value and not (in_private_mount(value, tmpfs) and os.path.isdir(value)):
            env[name] = '/tmp'
    return env


class Lifeline(object):
    """The supervisor's side of the pipe to isolate-exec: b'+' (alive, set
    up to die with it), then records, each 'LENGTH\\n' + marshal(dict). The
    records are sent as soon as known: if the supervisor dies later (OOM
    killer, a bug), isolate-exec still has the command's status and what was
    checked."""

    def __init__(self, fd):
        self.fd = fd

    def send(self, **record):
        data = marshal.dumps(record)
        write_all(self.fd, b'%d\n' % len(data) + data)


def supervise(run, lifeline_fd):
    """Body of the supervisor: set up the isolation (or the fallback), run the
    command, check for leaks, streaming what it finds. Never returns."""
    lifeline = Lifeline(lifeline_fd)
    try:
        set_parent_death_signal(lifeline_fd, signal.SIGKILL if run.isolated else signal.SIGTERM)
        make_oom_victim(OOM_SCORE_ADJ_SUPERVISOR)
        # Out of our caller's process group: signals sent to that group (a
        # terminal's Ctrl-C) reach isolate-exec, which forwards them once.
        os.setpgid(0, 0)
        try:
            if run.isolated:
                checks = set_up_isolation(run)
            else:
                checks = set_up_fallback(run)
        except SetupError as e:
            lifeline.send(**{'error' if e.unavailable else 'fatal': str(e)})
            return
        except BaseException as e:
            lifeline.send(fatal='internal error while setting up: %s' % describe(e))
            return
        # From here on, the command may run: whatever fails is reported as
        # isolate-exec's own failure, never as a reason to run it again.
        if run.command is not None:
            reserve_memory()
        lifeline.send(started=True)
        if run.command is None:  # --probe
            checks.command.quit()
            lifeline.send(done=True)
            return
        try:
            lifeline.send(**checks.run_command())
        except BaseException as e:
            lifeline.send(errors=['run the command: %s' % describe(e)])
        for what, check in checks.after_command():
            try:
                lifeline.send(**check())
            except BaseException as e:
                lifeline.send(errors=['%s: %s' % (what, describe(e))])
        lifeline.send(done=True)
    finally:
        os._exit(0)


class Checks(object):
    """The command of a run, and the leak checks that follow it."""
    command = None

    def run_command(self):
        """Let the command run; wait for it. -> {'status', 'duration'}"""
        start = now()
        if _pending_signal is not None:  # interrupted before the command started
            self.command.quit()
            return {'status': 128 + _pending_signal, 'duration': 0.0}
        code = self.command.go()
        result = {}
        if code is None:
            forward_signals_to(self.command.pid)
            if self.run.timeout:
                arm_timeout(self.run.timeout, self.run.kill_timeout)
            code = raw_wait_status_code(wait_command(self.command.pid))
            self.pause_leaked_processes()
            release_memory(1)
            disarm_timeout()
            forward_signals_to(None)
            if _timeout[0] is not None and _stopping is not None:
                result['timed_out'] = (self.run.timeout, list(_stopping[1]))
        result.update(status=code, duration=now() - start)
        return result

    def pause_leaked_processes(self):
        """Keep what the command left from running until the mount table is
        read (IsolatedChecks)."""

    def resume_leaked_processes(self):
        """Let it run again, before it is judged."""

    def check_processes(self):
        self.resume_leaked_processes()
        processes, killed = stop_leaked_processes(self.processes, self.run.kill_timeout)
        release_memory()
        result = {'processes': processes[:MAX_ITEMS], 'killed': killed[:MAX_ITEMS],
                  'counts': {'leaked_processes': len(processes), 'killed_pids': len(killed)}}
        return result


class IsolatedChecks(Checks):

    def __init__(self, run, roots, proc_fd):
        self.run, self.roots = run, roots
        self.processes = ProcessTable(proc_fd, isolated=True)
        self.proc_fd = proc_fd
        # (the command has not run yet: /proc is still the one mounted above,
        # and the working directory must stay the command's)
        self.own_mount_ns = _open_directory_entry('/proc/self/ns/mnt', 'the mount namespace')
        self.command = IsolatedCommand(run, private_env(run.env, run.tmpfs), proc_fd)

    def after_command(self):
        """Diff the command's mount table first (reading it asks no FUSE
        daemon; a daemon killed first may unmount itself and hide its leak),
        then stop leaked processes, then walk the private tmpfs, from the
        supervisor's own mounts: mounts the command left are not in its way
        (a live FUSE daemon could hang the walk)."""
        return [('read the mount table', self.check_mounts),
                ('stop leaked processes', self.check_processes),
                ('walk the private tmpfs', self.check_files)]

    # A process the command left may go on filling a private tmpfs in a
    # memory-limited cgroup: it would take the memory the supervisor gives
    # back when the command ended (MEMORY_RESERVE), then be killed by the OOM
    # killer without freeing any (tmpfs pages belong to no process), and the
    # supervisor, needing a page to send the command's status or read the
    # mount table, would be the next victim. It is stopped until the mount
    # table is read: as pid 1, kill(-1) reaches every other process of the
    # pid namespace, nested ones included (SIGSTOP from an ancestor pid
    # namespace is always delivered, pid_namespaces(7)), in one system call.
    # SIGCONT then resumes them all, one the test had stopped too (it gets
    # SIGTERM next, which a stopped process would only act on after it).
    def pause_leaked_processes(self):
        _kill_all_others(signal.SIGSTOP)

    def resume_leaked_processes(self):
        _kill_all_others(signal.SIGCONT)

    def check_mounts(self):
        # Back in its own namespace right after: path lookups from there would
        # not cross the supervisor's own mounts (the nested --tmpfs ones).
        enter_mount_namespace(self.command.mount_ns, "enter the command's mount namespace")
        try:
            os.fchdir(self.proc_fd)
            mounts_after = _read_proc_file('self/mountinfo')
        finally:
            enter_mount_namespace(self.own_mount_ns, 'enter the mount namespace of the supervisor')
        leaked, gone = diff_mounts(self.command.mounts_before, mounts_after)
        return {'leaked_mounts': leaked[:MAX_ITEMS], 'gone_mounts': gone[:MAX_ITEMS],
                'counts': {'leaked_mounts': len(leaked), 'gone_mounts': len(gone)}}

    def check_files(self):
        report = FileReport()
        skip = set(fsencode(entry.path) for entry in self.run.tmpfs)
        for fd, entry in zip(self.roots, self.run.tmpfs):
            Walk(report, fd, fsencode(entry.path), skip, ignore=self.run.ignore).run()
        return report.result()


def set_up_isolation(run):
    """The isolation checklist, in order; each step raises SetupError.
    -> IsolatedChecks, whose command is ready to exec"""
    if run.subids:
        wait_for_id_maps(run.map_fd)
    elif run.userns:
        map_caller_ids(run.uid, run.gid)
    make_mounts_private()
    if run.userns:
        bind_minimal_user_database(run.uid, run.gid, run.tmpfs[0].path)
    roots = [mount_private_tmpfs(entry) for entry in run.tmpfs]
    proc_fd = mount_private_proc()
    look_up_working_directory(run)
    return IsolatedChecks(run, roots, proc_fd)


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


class PrivateDir(object):
    """A fresh 0700 directory under the system temp directory, held open from
    its creation: it is walked and deleted through that descriptor, never
    through its path (the test may replace it with a symbolic link)."""

    def __init__(self):
        parent = system_temp_dir()
        self.parent_fd = _open_directory(parent, 'open')
        while True:
            self.name = 'isolate-exec.%s' % ''.join(
                '%02x' % b for b in bytearray(os.urandom(6)))
            self.path = os.path.join(parent, self.name)
            try:
                os.mkdir(self.path, 0o700)
                break
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise SetupError('create %s: %s' % (self.path, os.strerror(e.errno)))
        try:
            self.fd = os.open(self.path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        except OSError as e:
            raise SetupError('open %s: %s' % (self.path, os.strerror(e.errno)))
        self.st = os.fstat(self.fd)

    def remove(self, report):
        """Delete the directory itself (empty by now), where it is: under its
        name, or under the name the test renamed it to in the same parent
        (its descriptor tells). A symbolic link the test put at its name is
        deleted (never followed) and reported. -> False if it is left"""
        os.fchdir(self.parent_fd)
        try:
            st = os.lstat(self.name)
            if stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(self.name)
                report.add(fsencode(self.path))
        except OSError:
            pass
        try:
            where = os.readlink('/proc/self/fd/%d' % self.fd)
        except OSError:
            where = self.path
        if where.endswith(' (deleted)'):  # the test deleted it
            return True
        if os.path.dirname(where) != os.path.dirname(self.path):
            return False  # moved elsewhere: left there
        name = os.path.basename(where)
        try:
            st = os.lstat(name)
            if (st.st_dev, st.st_ino) != (self.st.st_dev, self.st.st_ino):
                return False
            os.rmdir(name)
            return True
        except OSError:
            return False


class FallbackChecks(Checks):

    def __init__(self, run, private):
        self.run, self.private = run, private
        self.processes = ProcessTable(_open_directory('/proc', 'open'), isolated=False)
        env = dict(run.env, TMPDIR=private.path, TMP=private.path, TEMP=private.path)
        self.command = FallbackCommand(run, env)

    def after_command(self):
        return [('stop leaked processes', self.check_processes),
                ('clean up %s' % self.private.path, self.check_files)]

    def check_files(self):
        report = FileReport()
        Walk(report, self.private.fd, fsencode(self.private.path), remove=True,
             ignore=self.run.ignore, shown_as=b'/tmp').run()
        if not self.private.remove(report):
            report.add_special('left', fsencode(self.private.path) + b'/')
        return report.result()


def set_up_fallback(run):
    """The fallback checklist: a child subreaper, which dies with isolate-exec
    only after cleaning up (SIGTERM is forwarded to the command, then SIGKILL
    after the kill timeout), and a private TMPDIR. -> FallbackChecks"""
    global _orphaned
    _orphaned = (run.parent, run.kill_timeout)
    set_child_subreaper()
    private = PrivateDir()
    try:
        return FallbackChecks(run, private)
    except BaseException:
        os.rmdir(private.path)
        raise


# -- isolate-exec's side -----------------------------------------------------------

def run_supervised(run):
    """Start the supervisor (isolated: in new namespaces; fallback: a plain
    child) and collect what it sends. -> result dict: 'error' (the isolation
    is not available) or 'fatal' (set-up failed otherwise) before 'started';
    then 'status', the checks' results, 'errors' (checks that failed), and
    'done' if it finished"""
    lifeline_r, lifeline_w = make_pipe()
    map_w = None
    if run.isolated:
        flags = CLONE_NEWNS | CLONE_NEWPID | (CLONE_NEWUSER if run.userns else 0)
        if run.userns and run.subids:
            run.map_fd, map_w = make_pipe()
        try:
            pid = clone_into_namespaces(flags)
        except SetupError as e:
            for fd in (lifeline_r, lifeline_w, run.map_fd, map_w):
                if fd is not None:
                    os.close(fd)
            return {'error' if e.unavailable else 'fatal': str(e)}
    else:
        pid = os.fork()
    if pid == 0:
        os.close(lifeline_r)
        if map_w is not None:
            os.close(map_w)
        supervise(run, lifeline_w)  # does not return
    os.close(lifeline_w)
    if map_w is not None:
        os.close(run.map_fd)
        failed = map_subordinate_ids(pid, run.subids)
        if failed is None:
            try:
                write_all(map_w, b'M')
            except OSError:  # it died: its lifeline tells
                pass
        os.close(map_w)
        if failed is not None:
            # it exits at EOF; start again, mapping the caller only
            _waitpid(pid, 0)
            os.close(lifeline_r)
            run.subids, run.subids_reason = None, failed
            if run.command is not None:
                warn('# subordinate ids not mapped (%s)' % failed)
            return run_supervised(run)
    forward_signals_to(pid)
    result = {'errors': []}
    try:
        for record in _read_records(lifeline_r):
            result['errors'].extend(record.pop('errors', ()))
            counts = record.pop('counts', None)
            if counts:
                result.setdefault('counts', {}).update(counts)
            result.update(record)
            if 'done' in record:
                break
    finally:
        os.close(lifeline_r)
        forward_signals_to(None)
    if 'done' not in result and not ('error' in result or 'fatal' in result):
        status = raw_wait_status_code(_waitpid(pid, 0)[1])
        why = 'signal %d' % (status - 128) if status > 128 else 'exit status %d' % status
        if 'started' in result:
            result['errors'].append('the supervisor died (%s)' % why)
        else:
            result['fatal'] = 'the supervisor died while setting up (%s)' % why
        return result
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


def _read_records(fd):
    """The supervisor's b'+' (it is alive), then its records, until EOF."""
    data = bytearray()
    eof = False
    while True:
        while True:
            if data[:1] == b'+':
                del data[:1]
            header, newline, _ = bytes(data[:24]).partition(b'\n')
            if not newline:
                break
            length = int(header)
            if len(data) < len(header) + 1 + length:
                break
            start = len(header) + 1
            record = marshal.loads(bytes(data[start:start + length]))
            del data[:start + length]
            yield record
        if eof:
            return
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not chunk:
            eof = True
        data += chunk


# -- report ------------------------------------------------------------------------

def _lines(kind, items, total, line):
    """At most MAX_LINES lines of items, then one saying how many more."""
    lines = [line(item) for item in items[:MAX_LINES]]
    if total > MAX_LINES:
        lines.append(fsencode('# ... and %d more %s' % (total - MAX_LINES, kind)))
    return lines


def format_report(result):
    """-> the text report: nxdtest-compatible '# ...' lines, as bytes."""
    counts = result.get('counts', {})

    def process(p):
        pid, name, argv = p
        return fsencode('# leaked pid=%d %r %r' % (pid, native(name), [native(a) for a in argv]))

    lines = _lines('leaked processes', result.get('processes', []),
                   counts.get('leaked_processes', 0), process)
    lines += _lines('processes killed', result.get('killed', []), counts.get('killed_pids', 0),
                    lambda pid: fsencode('# killed pid=%d with SIGKILL: still running after '
                                         '--kill-timeout' % pid))
    files, sticky = result.get('files', []), set(result.get('sticky', ()))
    total = counts.get('leaked_files', 0) + counts.get('sticky_dirs', 0)
    lines += [(b'# found sticky ' if path in sticky else b'# leaked ') + escape_name(path)
              for path in files[:MAX_LINES]]
    if total > MAX_LINES:
        more = '# ... and %d more leaked files' % (total - MAX_LINES)
        more += (' (--report FILE lists them all)' if not result.get('files_cut') else
                 ' (--report FILE lists the first %d)' % len(files))
        lines.append(fsencode(more))
    lines += _lines('unreadable directories', result.get('unreadable', []),
                    counts.get('unreadable_dirs', 0), lambda p: b'# unreadable ' + escape_name(p))
    lines += _lines('files left', result.get('left', []), counts.get('left_files', 0),
                    lambda p: b'# could not remove ' + escape_name(p))
    lines += _lines('leaked mounts', result.get('leaked_mounts', []),
                    counts.get('leaked_mounts', 0),
                    lambda m: b'# leaked mount: ' + escape_name(m, backslash=False))
    lines += _lines('gone mounts', result.get('gone_mounts', []), counts.get('gone_mounts', 0),
                    lambda m: b'# gone mount: ' + escape_name(m, backslash=False))
    return b''.join(_cut(line) + b'\n' for line in lines)


def _cut(line):
    """line, cut to MAX_LINE_BYTES on a UTF-8 character boundary."""
    if len(line) <= MAX_LINE_BYTES:
        return line
    end = MAX_LINE_BYTES - 3
    while end and 0x80 <= bytearray(line[end:end + 1])[0] < 0xc0:
        end -= 1
    return line[:end] + b'...'


def has_leaks(result):
    counts = result.get('counts', {})
    return any(counts.get(key) for key in ('leaked_files', 'leaked_processes', 'leaked_mounts',
                                           'gone_mounts', 'left_files'))


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


def json_report(run, result, isolated, reason, code):
    """-> the JSON report, as bytes."""
    import json
    counts = dict(leaked_files=0, sticky_dirs=0, unreadable_dirs=0, left_files=0,
                  leaked_mounts=0, gone_mounts=0, leaked_processes=0, killed_pids=0, ignored=0)
    counts.update(result.get('counts', {}))
    report = {
        'version': __version__,
        'isolated': isolated,
        'reason': reason,
        'command': [fsdecode(fsencode(a)) for a in run.command],
        'tmpfs': [{'path': e.path, 'options': e.options} for e in run.tmpfs] if isolated else [],
        'exit_code': code,
        'duration_s': round(result.get('duration', 0.0), 6),
        'leaked': has_leaks(result),
        'complete': not result.get('errors') and 'done' in result,
        'errors': result.get('errors', []),
        'leaked_files': decode_names(leaked_files(result)),
        'sticky_dirs': [fsdecode(p) for p in result.get('sticky', ())],
        'unreadable_dirs': [fsdecode(p) for p in result.get('unreadable', ())],
        'left_files': [fsdecode(p) for p in result.get('left', ())],
        'leaked_mounts': [fsdecode(unescape_mount(m)) for m in result.get('leaked_mounts', ())],
        'gone_mounts': [fsdecode(unescape_mount(m)) for m in result.get('gone_mounts', ())],
        'leaked_processes': [{'pid': pid, 'name': fsdecode(name), 'argv': [fsdecode(a) for a in argv]}
                             for pid, name, argv in result.get('processes', ())],
        'killed_pids': list(result.get('killed', ())),
        'timed_out': (result.get('timed_out') or (None,))[0],
        'ignore': list(run.ignore),
        'counts': counts,
    }
    report['truncated'] = sorted(key for key, count in counts.items()
                                 if key in report and len(report[key]) < count)
    # One key per line, each value by json's C encoder (indent= would take
    # the pure Python one: ~5 times slower for 100k names).
    return ('{\n%s\n}\n' % ',\n'.join('  %s: %s' % (json.dumps(key), json.dumps(value, sort_keys=True))
                                      for key, value in sorted(report.items()))).encode('ascii')


class ReportFile(object):
    """Where --report goes. Its directory is opened once, before the run, and
    the file is written relative to that descriptor: swapping the directory
    for a symbolic link during the run changes nothing. A regular file (or
    none) is replaced atomically by a temporary file with an unpredictable
    name, created exclusively, without following symbolic links; a device
    or a pipe (/dev/null, /dev/stdout) is written in place. A symbolic link
    is followed only as the kernel's fs.protected_symlinks would in a sticky
    world-writable directory (/tmp): if it is the caller's or the directory
    owner's."""

    def __init__(self, path):
        self.path = path
        self.directory, self.name = os.path.split(path)
        self.dir_fd = _open_directory(self.directory or '/', 'open directory of --report')

    def write(self, data):
        """Write data; on failure print why. Changes the working directory."""
        try:
            os.fchdir(self.dir_fd)
            self._write(data)
        except (IOError, OSError) as e:
            warn('%s: write report %s: %s' % (PROG, self.path, os.strerror(e.errno)))
        except ValueError as e:
            warn('%s: write report %s: %s' % (PROG, self.path, e))

    def _write(self, data):
        try:
            st = os.lstat(self.name)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            directory = os.fstat(self.dir_fd)
            if (directory.st_mode & (stat.S_ISVTX | stat.S_IWOTH) == stat.S_ISVTX | stat.S_IWOTH
                    and st.st_uid not in (os.geteuid(), directory.st_uid)):
                raise ValueError('a symbolic link of another user in a sticky world-writable '
                                 'directory: not followed')
            self._write_in_place(os.open(self.name, os.O_WRONLY | O_CLOEXEC), data)
        elif st is not None and not stat.S_ISREG(st.st_mode):
            self._write_in_place(os.open(self.name, os.O_WRONLY | O_NOFOLLOW | O_CLOEXEC), data)
        else:
            self._replace(data)

    @staticmethod
    def _write_in_place(fd, data):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, 0)
            write_all(fd, data, errors=True)
        finally:
            os.close(fd)

    def _replace(self, data):
        while True:
            tmp = '.%s.%s.tmp' % (self.name, ''.join('%02x' % b for b in bytearray(os.urandom(8))))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                             0o666)
                break
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        try:
            try:
                write_all(fd, data, errors=True)
            finally:
                os.close(fd)
            os.rename(tmp, self.name)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


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
        result = run_supervised(run)
    name = 'userns' if run.userns else 'mountns'
    error = result.get('error') or result.get('fatal') or '; '.join(result['errors']) or None
    words = ['-%s (%s)' % (name, error) if error else '+' + name]
    if run.userns:
        words.append('+subids' if run.subids else '-subids (%s)' % run.subids_reason)
    fuse, reason = fuse_available(run.userns)
    words.append('+fuse' if fuse else '-fuse (%s)' % reason)
    write_all(1, fsencode(' '.join(words) + '\n'))
    return 1 if error else 0


def execute(opts):
    """Run opts.command isolated (or in fallback), print the report. -> exit status"""
    closed_stdio = occupy_closed_stdio()
    run = Run(opts, closed_stdio)
    with Undo() as undo:
        try:
            create_mount_points(run.tmpfs)
            report_file = opts.report and ReportFile(opts.report)
        except SetupError as e:
            warn('%s: %s' % (PROG, e))
            return EXIT_FAILURE
        install_signal_forwarding(undo)
        if run.foreground:
            undo.register(give_terminal_to, os.getpgrp())
        isolated, reason = False, 'disabled by --userns off'
        result = {}
        if opts.userns != 'off':
            result = run_supervised(run)
            reason = result.get('error')
            if 'fatal' in result:
                warn('%s: %s' % (PROG, result['fatal']))
                return EXIT_FAILURE
            if 'started' in result:
                isolated, reason = True, None
            elif opts.userns == 'require':
                warn('%s: user namespaces not available (%s); not running %s (--userns require)'
                     % (PROG, reason, run.command[0]))
                return EXIT_FAILURE
            else:
                warn('# user namespaces not available (%s)' % reason)
        if not isolated:
            run.isolated = False
            result = run_supervised(run)
            if 'started' not in result:
                warn('%s: %s' % (PROG, result.get('fatal') or result.get('error')))
                return EXIT_FAILURE
    return report(opts, run, result, isolated, reason, report_file)


def report(opts, run, result, isolated, reason, report_file):
    """Print what the run left (the JSON report first: the text one may block
    on a full stderr pipe). -> exit status"""
    errors = result.get('errors', [])
    code = result.get('status')
    if code is None or errors:  # a check failed: the report is incomplete
        code = code or EXIT_FAILURE
    if result.get('timed_out'):
        code = EXIT_TIMEOUT
    leaked = has_leaks(result)
    if opts.strict and leaked and code == 0:
        code = EXIT_LEAKED
    if report_file:
        report_file.write(json_report(run, result, isolated, reason, code))
    text = format_report(result)
    if result.get('timed_out'):
        seconds, sent = result['timed_out']
        text = fsencode('# timed out after %g s: stopped with %s\n' % (
            seconds, ', then '.join('SIGKILL' if s == signal.SIGKILL else 'SIGTERM'
                                    for s in sent))) + text
    for error in errors:
        text += fsencode('%s: %s; the leak report is incomplete\n' % (PROG, error))
    if 'status' not in result:
        text += fsencode('%s: the status of %s is unknown\n' % (PROG, run.command[0]))
    if opts.strict and leaked:
        if code == EXIT_LEAKED:
            text += fsencode('# --strict: the run leaked: exit status %d\n' % code)
        else:
            text += fsencode('# --strict: the run leaked; the command\'s own exit status %d '
                             'is kept\n' % code)
    write_all(1 if opts.stdout_report else 2, text)
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
                kill_timeout=5.0, report=None, ignore=(), timeout=None, subids='auto'):
    """Entry point of the wrappers generated by the slapos.recipe.isolatedtest
    recipes: run command plus the wrapper's own arguments, with environment
    added, as isolate-exec would (the recipe validated every argument)."""
    opts = Options()
    opts.command = list(command) + sys.argv[1:]
    opts.userns, opts.strict, opts.kill_timeout = userns, strict, kill_timeout
    opts.subids = subids
    opts.ignore, opts.timeout = tuple(ignore), timeout
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
    for stream in (sys.stdout, sys.stderr):  # None when the fd was closed at start
        try:
            stream.flush()
        except (AttributeError, EnvironmentError, ValueError):
            pass
    os._exit(code)


if __name__ == '__main__':
    console_main()
