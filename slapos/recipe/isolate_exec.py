# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""isolate-exec: run a command with private /tmp and /dev/shm, report what it leaked.

This module is the entry point of the runtime of slapos.recipe.isolatedtest:
the command line, main(), run_wrapper() (the recipes' wrappers), --probe,
and execute(), the run from start to report. The steps themselves live in
the package slapos.recipe.isolation, one concern per module (its docstring
lists them). The runtime runs inside software releases whose Python may
still be 2.7, so it uses the standard library only, and does every
namespace operation with direct system calls through _ctypes (no
unshare(1) or mount(1), whose versions vary).

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
import os
import stat
import sys
try:
    import _signal as signal  # Python 3: `import signal` pulls in enum (~3 ms)
except ImportError:  # Python 2
    import signal

from slapos.recipe.isolation.common import (
    EXIT_FAILURE, EXIT_LEAKED, EXIT_TIMEOUT, EXIT_USAGE, PROG, SetupError, UsageError, __version__,
    fsencode, warn, write_all)
from slapos.recipe.isolation.kernel import O_CLOEXEC, occupy_closed_stdio, set_cloexec
from slapos.recipe.isolation.mounts import create_mount_points, make_tmpfs_table
from slapos.recipe.isolation.report import (
    ReportFd, ReportFile, format_report, has_leaks, json_report)
from slapos.recipe.isolation.signals import install_signal_forwarding
from slapos.recipe.isolation.supervisor import Run, reap_supervisors, run_supervised
from slapos.recipe.isolation.command import give_terminal_to

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
  --ipc MODE      private (default): System V IPC objects and POSIX message
                  queues of COMMAND's own (an IPC namespace, /dev/mqueue),
                  freed at its end; host: share the host's
  --report FILE   write a JSON report of the run to FILE (a device or a pipe
                  is written in place)
  --report-fd N   write the JSON report to file descriptor N (>= 3, open
                  and inherited; COMMAND does not get it)
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
  --probe         print what is available (+userns -subids (...) +ipc +fuse)
                  and exit 0 when isolation works, 1 when it does not
  --version       print the version and exit
  -h, --help      show this help and exit

isolation: a non-root caller keeps its uid and gid in a new user namespace
that maps them (and its subordinate ids, see --subids); COMMAND runs with CAP_SYS_ADMIN only (mount and FUSE
work, file permissions still apply), cannot unmount the private mounts, and
/etc/passwd and /etc/group list only the caller, root, nobody, nogroup and
disk. A root caller gets mount and pid namespaces and keeps all of root's
powers. Mounts never propagate to the host. TMPDIR, TMP and TEMP, when set
outside the private mounts or to a directory missing there, are set to /tmp.
Without size=, each tmpfs may grow to half of the RAM: give sizes. COMMAND
has an IPC namespace of its own (--ipc): it sees neither the host's shared
memory segments, semaphores and message queues nor other runs'.

fallback: when user namespaces do not work (they are probed by doing the
real setup), isolate-exec prints '# user namespaces not available (REASON)'
and runs COMMAND with TMPDIR, TMP and TEMP set to a fresh private directory,
which is reported on and removed afterwards; leaked processes are still
reported and killed. IPC is not isolated: System V objects that COMMAND
created (owned by the caller, absent before) are reported, not removed.

report lines (stderr, after COMMAND's output):
  # leaked /tmp/file          # leaked /tmp/dir/     # found sticky /tmp/d/
  # leaked mount: SOURCE MOUNTPOINT FSTYPE OPTIONS   # gone mount: ...
  # leaked pid=N 'name' ['argv', ...]
  # leaked ipc shm key=0x51cd3d6d id=0 bytes=4096 owner=1000 nattch=0
  # leaked ipc sem key=... id=N nsems=N owner=N   # leaked mqueue /name
  # leaked ipc msg key=... id=N messages=N bytes=N owner=N

exit status: COMMAND's own; 128+N if it died of signal N; 126 if it cannot
be executed; 127 if it is not found; 124 after --timeout; 2 for a usage
error; 3 for leaks with --strict; 125 if isolate-exec itself fails or --userns require cannot be met
(after COMMAND ran, a failed leak check gives 125 if COMMAND succeeded, its
own status if not, and an "isolate-exec: ..." line).
"""


class Options(object):
    """The parsed command line."""
    tmpfs_specs = ()
    userns = 'auto'
    subids = 'auto'
    ipc = 'private'
    report = None
    report_fd = None
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
        elif name in ('--tmpfs', '--userns', '--subids', '--ipc', '--report', '--report-fd',
                      '--kill-timeout', '--timeout', '--ignore'):
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
            elif name == '--ipc':
                if value not in ('private', 'host'):
                    raise UsageError('--ipc %r: must be private or host' % value)
                opts.ipc = value
            elif name == '--report':
                opts.report = check_report_path(value)
            elif name == '--report-fd':
                opts.report_fd = check_report_fd(value)
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
    if opts.report and opts.report_fd is not None:
        raise UsageError('--report and --report-fd: give one of them')
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


def check_report_fd(value, what='--report-fd'):
    """An open file descriptor >= 3, made close-on-exec at once: nothing
    isolate-exec starts, COMMAND least of all, may write into it."""
    try:
        fd = int(value)
    except ValueError:
        fd = -1
    if fd < 3:
        raise UsageError('%s %r: must be a file descriptor >= 3' % (what, value))
    try:
        os.fstat(fd)
    except OSError as e:
        raise UsageError('%s %d: %s' % (what, fd, os.strerror(e.errno)))
    set_cloexec(fd)
    return fd


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
    if opts.userns == 'off':  # what a run with these options gets
        result = {'error': 'disabled by --userns off', 'errors': []}
    else:
        with Undo() as undo:
            install_signal_forwarding(undo)
            result = run_supervised(run)
    name = 'userns' if run.userns else 'mountns'
    error = result.get('error') or result.get('fatal') or '; '.join(result['errors']) or None
    words = ['-%s (%s)' % (name, error) if error else '+' + name]
    if run.userns:
        words.append('+subids' if run.subids else '-subids (%s)' % run.subids_reason)
    if not run.ipc:
        words.append('-ipc (disabled by --ipc host)')
    else:
        words.append('-ipc (no %s)' % name if error else '+ipc')
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
            report_file = (ReportFile(opts.report) if opts.report else
                           opts.report_fd is not None and ReportFd(opts.report_fd))
        except SetupError as e:
            warn('%s: %s' % (PROG, e))
            return EXIT_FAILURE
        if run.subids_refused:
            warn('# subordinate ids not mapped (%s)' % run.subids_reason)
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
                kill_timeout=5.0, report=None, ignore=(), timeout=None, subids='auto',
                ipc='private'):
    """Entry point of the wrappers generated by the slapos.recipe.isolatedtest
    recipes: run command plus the wrapper's own arguments, with environment
    added, as isolate-exec would (the recipe validated every argument)."""
    opts = Options()
    opts.command = list(command) + sys.argv[1:]
    opts.userns, opts.strict, opts.kill_timeout = userns, strict, kill_timeout
    opts.subids, opts.ipc = subids, ipc
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
