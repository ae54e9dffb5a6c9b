# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The command's own process, started by the supervisor: isolated, in a
mount namespace (and for a non-root caller a user namespace) of its own,
which locks the supervisor's mounts; in fallback, in a process group it
does not lead. Its exec, the terminal it gets, its OOM score, and why it
could not be executed (126, 127).

Knows nothing of leak checks: the supervisor runs those. Imports ids,
kernel and common.
"""
import errno
import marshal
import os
try:
    import _signal as signal  # Python 3: `import signal` pulls in enum (~3 ms)
except ImportError:  # Python 2
    import signal

from slapos.recipe.isolation.common import (
    EXIT_CANNOT_EXEC, EXIT_FAILURE, EXIT_NOT_FOUND, PROG, SetupError, describe, warn, write_all)
from slapos.recipe.isolation.ids import (
    drop_to_sys_admin, forbid_new_privileges, map_caller_ids, write_id_maps)
from slapos.recipe.isolation.kernel import (
    CLONE_NEWNS, CLONE_NEWUSER, O_CLOEXEC, clone_into_namespaces, make_pipe,
    open_directory_entry, read_all, read_proc_file, wait_command, waitpid)


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
    for token in read_all(fd).split(b'\n'):
        if token[1:].isdigit():
            tokens[token[:1]] = int(token[1:])
    return tokens


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
            self.mount_ns = open_directory_entry('%d/ns/mnt' % pid, "the command's mount namespace")
            self.mounts_before = read_proc_file('%d/mountinfo' % pid)
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
                forbid_new_privileges()
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
        waitpid(holder, 0)
        self.pid = tokens.get(b'P')
        self.failure = tokens.get(b'X')

    def go(self):
        if self.pid is None:
            raise SetupError('could not start the command')
        if self.failure is not None:
            wait_command(self.pid)
            return exec_failure(self.run, self.env, self.failure)
        return None
