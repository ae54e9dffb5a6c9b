# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The supervisor: the process isolate-exec starts for a run (isolated: pid 1
of new user, mount and pid namespaces; fallback: a child subreaper). It
runs the set-up checklist, starts the command, runs the leak checks, and
streams its records back to isolate-exec through the lifeline pipe; here
too is isolate-exec's side, which starts it and reads those records.

What a record holds, in order (each a marshalled dict, sent as soon as
known): 'error' or 'fatal' (the set-up failed: isolation unavailable, or
isolate-exec's own failure), or 'started'; then 'status' and 'duration'
(and 'timed_out'); then one record per check ('leaked_mounts',
'gone_mounts'; 'processes', 'killed'; 'files', 'sticky', 'unreadable',
'left'; each with its 'counts'), 'errors' for a check that failed, and
'done'.

It prints nothing (isolate-exec reports); imports command, signals, the
checks (processes, mountinfo, files), mounts, ids, kernel and common.
"""
import marshal
import os
try:
    import _signal as signal  # Python 3: `import signal` pulls in enum (~3 ms)
except ImportError:  # Python 2
    import signal

from slapos.recipe.isolation.common import (
    EXIT_FAILURE, MAX_ITEMS, SetupError, describe, fsencode, now, warn, write_all)
from slapos.recipe.isolation.command import (
    OOM_SCORE_ADJ_SUPERVISOR, FallbackCommand, IsolatedCommand, make_oom_victim,
    terminal_foreground)
from slapos.recipe.isolation.files import FileReport, PrivateDir, Walk
from slapos.recipe.isolation.ipc import ipc_result, list_mqueues, new_sysvipc, read_sysvipc
from slapos.recipe.isolation.ids import (
    SubordinateIds, map_caller_ids, map_subordinate_ids, wait_for_id_maps)
from slapos.recipe.isolation.kernel import (
    CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, PR_SET_DUMPABLE, PR_SET_PDEATHSIG,
    clone_into_namespaces, enter_mount_namespace, make_pipe, make_socketpair, map_populated,
    open_directory, open_directory_entry, prctl, read_chunk,
    raw_wait_status_code, read_proc_file, set_child_subreaper, unmap, wait_command, waitpid)
from slapos.recipe.isolation.mountinfo import diff_mounts
from slapos.recipe.isolation.mounts import (
    bind_minimal_user_database, look_up_working_directory, make_mounts_private,
    mount_private_mqueue, mount_private_proc, mount_private_tmpfs, private_env)
from slapos.recipe.isolation.processes import ProcessTable, kill_all_others, stop_leaked_processes
from slapos.recipe.isolation.signals import (
    arm_timeout, disarm_timeout, forward_signals_to, ignore_stray_alarms, pending_signal,
    stop_when_orphaned, timed_out)


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
        self.ipc = opts.ipc == 'private'  # an IPC namespace of its own (isolated)
        # the caller's subordinate ids to map, if any (non-root callers)
        self.subids = self.subids_reason = self.map_fd = None
        self.subids_refused = False  # ranges the run must not map (SubordinateIds)
        if self.userns:
            if opts.subids == 'off':
                self.subids_reason = 'disabled by --subids off'
            else:
                ids = SubordinateIds(self.uid, self.gid)
                self.subids, self.subids_reason = (ids, None) if ids.uid else (None, ids.reason)
                self.subids_refused = ids.refused
        self.isolated = True
        self.parent = os.getpid()
        self.closed_stdio = list(closed_stdio)
        try:
            self.cwd = os.getcwd()
        except OSError:  # deleted: nothing to look up again
            self.cwd = None
        self.foreground = terminal_foreground()
        self.env = dict(os.environ)
        self.secret = os.urandom(SECRET_BYTES)  # starts each record (Lifeline)

# -- the records ---------------------------------------------------------------------


# The lifeline is a Unix socket pair, not a pipe: a pipe's write end can be
# opened again through /proc/1/fd/N by a test with the supervisor's uid (a
# root test did, and wrote records of its own). Each record starts with a
# secret drawn by isolate-exec before the supervisor exists, which the
# command never has (it exists only in the memory exec replaces): bytes
# that do not are refused before they are unmarshalled. A root test can
# still read the supervisor's memory or take its descriptor (pidfd_getfd):
# see the security model.
SECRET_BYTES = 16


class Lifeline(object):
    """The supervisor's side of the socket to isolate-exec: b'+' (alive,
    set up to die with it), then records, each SECRET + 'LENGTH\\n' +
    marshal(dict). The records are sent as soon as known: if the supervisor
    dies later (OOM killer, a bug), isolate-exec still has the command's
    status and what was checked."""

    def __init__(self, fd, secret):
        self.fd, self.secret = fd, secret

    def send(self, **record):
        data = marshal.dumps(record)
        write_all(self.fd, self.secret + b'%d\n' % len(data) + data)


class ForgedRecord(Exception):
    """Bytes on the lifeline that are not the supervisor's record."""


def _read_records(fd, secret):
    """The supervisor's b'+' (it is alive), then its records, until EOF.
    Raises ForgedRecord at bytes without the secret."""
    data = bytearray()
    eof = alive = False
    start = len(secret)
    while True:
        while True:
            if not alive and data[:1] == b'+':  # the first byte only: the secret may hold one
                del data[:1]
                alive = True
            if len(data) < start:
                break
            if bytes(data[:start]) != secret:
                raise ForgedRecord()
            header, newline, _ = bytes(data[start:start + 24]).partition(b'\n')
            if not newline:
                if len(data) >= start + 24:
                    raise ForgedRecord()
                break
            try:
                length = int(header)
            except ValueError:
                raise ForgedRecord()
            body = start + len(header) + 1
            if len(data) < body + length:
                break
            record = marshal.loads(bytes(data[body:body + length]))
            del data[:body + length]
            yield record
        if eof:
            return
        chunk = read_chunk(fd)
        if not chunk:
            eof = True
        data += chunk

# -- the supervisor ------------------------------------------------------------------


def set_parent_death_signal(lifeline, signum):
    """Get signum when isolate-exec dies: SIGKILL for the pid-1 supervisor,
    which kills the whole run. The parent may have died before prctl:
    writing to its pipe tells."""
    prctl(PR_SET_PDEATHSIG, signum, what='prctl PR_SET_PDEATHSIG')
    try:
        os.write(lifeline, b'+')
    except OSError:  # EPIPE: isolate-exec is gone
        os._exit(EXIT_FAILURE)


# Memory the supervisor holds while the command runs, in two parts: one it
# gives back when the command ended (for the mount check), the other once
# the leaked processes are dead (for the walk), when nothing of the run can
# take it any more. In a cgroup that the test filled up to its limit (tmpfs
# pages stay charged after the test is killed, and a leaked child may go on
# writing), the checks then have room instead of making the OOM killer take
# the supervisor; its exit then frees its own memory for isolate-exec.
MEMORY_RESERVE = (512 << 10, 512 << 10)
_reserve = []


def reserve_memory(sizes=MEMORY_RESERVE):
    """Map and populate anonymous memory (charged to the cgroup at once);
    best effort."""
    for size in sizes:
        address = map_populated(size)
        if address is None:
            return
        _reserve.append((address, size))


def release_memory(parts=None):
    """Unmap parts of the reserve (default: all): the cgroup is uncharged
    at once."""
    for _ in range(len(_reserve) if parts is None else min(parts, len(_reserve))):
        unmap(*_reserve.pop())


def supervise(run, lifeline_fd):
    """Body of the supervisor: set up the isolation (or the fallback), run the
    command, check for leaks, streaming what it finds. Never returns."""
    lifeline = Lifeline(lifeline_fd, run.secret)
    try:
        ignore_stray_alarms()
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
        # Not dumpable from now on (its /proc/PID files become the host
        # root's): to look into its memory or take its descriptors (ptrace,
        # /proc/1/fd, /proc/1/mem, pidfd_getfd), a test then needs
        # CAP_SYS_PTRACE where the supervisor's memory was made, which a
        # non-root caller's command lacks (kernel/ptrace.c
        # __ptrace_may_access). Not before: writing our own id maps needs
        # our /proc/self files to be ours.
        prctl(PR_SET_DUMPABLE, 0, what='prctl PR_SET_DUMPABLE')
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
        if pending_signal() is not None:  # interrupted before the command started
            self.command.quit()
            return {'status': 128 + pending_signal(), 'duration': 0.0}
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
            stopped = timed_out()
            if stopped:
                result['timed_out'] = stopped
        result.update(status=code, duration=now() - start)
        return result

    def pause_leaked_processes(self):
        """Keep what the command left from running until the mount table is
        read (IsolatedChecks)."""

    def resume_leaked_processes(self):
        """Let it run again, before it is judged."""

    # The run's IPC namespace (mqueue_fd), or the host's, whose objects that
    # were there before the command (ipc_before) are not the run's.
    mqueue_fd = None
    ipc_before = None

    def check_ipc(self):
        """What the command left in the IPC namespace, listed before any
        process is killed (nattch still counts them)."""
        os.fchdir(self.processes.proc_fd)
        objects = read_sysvipc()
        if self.ipc_before is not None:
            objects = new_sysvipc(self.ipc_before, objects, self.run.uid)
        mqueues = list_mqueues(self.mqueue_fd) if self.mqueue_fd is not None else []
        return ipc_result(objects, mqueues)

    def check_processes(self):
        self.resume_leaked_processes()
        processes, killed = stop_leaked_processes(self.processes, self.run.kill_timeout)
        release_memory()
        result = {'processes': processes[:MAX_ITEMS], 'killed': killed[:MAX_ITEMS],
                  'counts': {'leaked_processes': len(processes), 'killed_pids': len(killed)}}
        return result


class IsolatedChecks(Checks):

    def __init__(self, run, roots, proc_fd, mqueue_fd):
        self.run, self.roots, self.mqueue_fd = run, roots, mqueue_fd
        self.processes = ProcessTable(proc_fd, isolated=True)
        self.proc_fd = proc_fd
        # (the command has not run yet: /proc is still the one mounted above,
        # and the working directory must stay the command's)
        self.own_mount_ns = open_directory_entry('/proc/self/ns/mnt', 'the mount namespace')
        self.command = IsolatedCommand(run, private_env(run.env, run.tmpfs), proc_fd)
        if not run.ipc:  # the host's IPC namespace (--ipc host): what is there before
            os.fchdir(proc_fd)  # (IsolatedCommand left us there too)
            self.ipc_before = read_sysvipc()

    def after_command(self):
        """Diff the command's mount table first (reading it asks no FUSE
        daemon; a daemon killed first may unmount itself and hide its leak),
        then stop leaked processes, then walk the private tmpfs, from the
        supervisor's own mounts: mounts the command left are not in its way
        (a live FUSE daemon could hang the walk)."""
        return [('read the mount table', self.check_mounts),
                ('list IPC objects', self.check_ipc),
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
        kill_all_others(signal.SIGSTOP)

    def resume_leaked_processes(self):
        kill_all_others(signal.SIGCONT)

    def check_mounts(self):
        # Back in its own namespace right after: path lookups from there would
        # not cross the supervisor's own mounts (the nested --tmpfs ones).
        enter_mount_namespace(self.command.mount_ns, "enter the command's mount namespace")
        try:
            os.fchdir(self.proc_fd)
            mounts_after = read_proc_file('self/mountinfo')
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
    mqueue_fd = mount_private_mqueue(run.tmpfs[0].path) if run.ipc else None
    if run.userns:
        bind_minimal_user_database(run.uid, run.gid, run.tmpfs[0].path)
    roots = [mount_private_tmpfs(entry) for entry in run.tmpfs]
    proc_fd = mount_private_proc()
    look_up_working_directory(run)
    return IsolatedChecks(run, roots, proc_fd, mqueue_fd)


class FallbackChecks(Checks):

    def __init__(self, run, private):
        self.run, self.private = run, private
        self.processes = ProcessTable(open_directory('/proc', 'open'), isolated=False)
        self.ipc_before = read_sysvipc('/proc/')  # no IPC namespace: the host's objects
        env = dict(run.env, TMPDIR=private.path, TMP=private.path, TEMP=private.path)
        self.command = FallbackCommand(run, env)

    def after_command(self):
        return [('list IPC objects', self.check_ipc),
                ('stop leaked processes', self.check_processes),
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
    stop_when_orphaned(run.parent, run.kill_timeout)
    set_child_subreaper()
    private = PrivateDir()
    try:
        return FallbackChecks(run, private)
    except BaseException:
        os.rmdir(private.path)
        raise

# -- isolate-exec's side -------------------------------------------------------------


def run_supervised(run):
    """Start the supervisor (isolated: in new namespaces; fallback: a plain
    child) and collect what it sends. -> result dict: 'error' (the isolation
    is not available) or 'fatal' (set-up failed otherwise) before 'started';
    then 'status', the checks' results, 'errors' (checks that failed), and
    'done' if it finished"""
    lifeline_r, lifeline_w = make_socketpair()
    map_w = None
    if run.isolated:
        flags = (CLONE_NEWNS | CLONE_NEWPID | (CLONE_NEWUSER if run.userns else 0) |
                 (CLONE_NEWIPC if run.ipc else 0))
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
            waitpid(pid, 0)
            os.close(lifeline_r)
            run.subids, run.subids_reason = None, failed
            if run.command is not None:
                warn('# subordinate ids not mapped (%s)' % failed)
            return run_supervised(run)
    forward_signals_to(pid)
    result = {'errors': []}
    forged = False
    try:
        for record in _read_records(lifeline_r, run.secret):
            result['errors'].extend(record.pop('errors', ()))
            counts = record.pop('counts', None)
            if counts:
                result.setdefault('counts', {}).update(counts)
            result.update(record)
            if 'done' in record:
                break
    except ForgedRecord:
        # Nothing it says can be trusted any more: it is stopped (isolated:
        # SIGKILL takes the whole run; fallback: SIGTERM, it cleans up).
        forged = True
        result['errors'].append("read the supervisor's records: bytes that are not its own "
                                "(written into its socket by a test?)")
        os.kill(pid, signal.SIGKILL if run.isolated else signal.SIGTERM)
    finally:
        os.close(lifeline_r)
        forward_signals_to(None)
    if 'done' not in result and not ('error' in result or 'fatal' in result):
        status = raw_wait_status_code(waitpid(pid, 0)[1])
        why = 'signal %d' % (status - 128) if status > 128 else 'exit status %d' % status
        if forged:  # killed above; its error is said
            return result
        if 'started' in result:
            result['errors'].append('the supervisor died (%s)' % why)
        else:
            result['fatal'] = 'the supervisor died while setting up (%s)' % why
        return result
    # The supervisor is done: all it started is dead and it only has to exit.
    # As it exits, the kernel frees its mount namespace and private tmpfs,
    # which takes time when much leaked (~0.25 s for 100k files): nothing
    # waits for that; main() reaps it at the end, the command does not.
    if waitpid(pid, os.WNOHANG)[0] == 0:
        _exiting_supervisors.append(pid)
    files = result.get('files')
    result['files'] = files.split(b'\0') if files else []
    return result


_exiting_supervisors = []


def reap_supervisors():
    """Wait for the supervisors that were still exiting."""
    while _exiting_supervisors:
        waitpid(_exiting_supervisors.pop(), 0)
