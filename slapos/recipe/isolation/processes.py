# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Leak check: the processes the command left. The process table of the run
(read through a /proc opened before the command), and how leaked processes
are judged, reported and stopped (SIGTERM, SIGSTOP until none is new,
SIGKILL).

Signals only the run's processes; reports nothing itself (the supervisor
sends what it returns). Imports kernel and common.
"""
import os
import time
try:
    import _signal as signal  # Python 3: `import signal` pulls in enum (~3 ms)
except ImportError:  # Python 2
    import signal

from slapos.recipe.isolation.common import MAX_ARGV_BYTES, now
from slapos.recipe.isolation.kernel import O_CLOEXEC, read_proc_file, reap_children

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
        self.groups = ()  # fallback: the process groups wholly the run's

    def read(self, pid):
        """-> (ppid, process group, alive, name) of pid, or None if it is
        gone. A zombie, or an exiting process, is not alive, unless another
        of its threads still runs (its main thread may exit before them)."""
        try:
            stat_line = read_proc_file('%d/stat' % pid)
        except (IOError, OSError):
            return None
        # "pid (comm) state ppid pgrp ...": comm may itself contain ") ".
        head, _, tail = stat_line.rpartition(b') ')
        name = head.partition(b' (')[2]
        fields = tail.split()
        try:
            ppid, pgrp, flags = int(fields[1]), int(fields[2]), int(fields[6])
        except (IndexError, ValueError):
            return None
        alive = fields[0] not in (b'Z', b'X') and not flags & PF_EXITING
        if not alive:
            alive = self._other_thread_alive(pid)
        return ppid, pgrp, alive, name

    def _other_thread_alive(self, pid):
        try:
            tids = os.listdir('%d/task' % pid)
        except OSError:
            return False
        for tid in tids:
            if tid != str(pid):
                try:
                    state = read_proc_file('%d/task/%s/stat' % (pid, tid)).rpartition(b') ')[2]
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

    def scan(self):
        """-> {pid: name} of the run's live processes (in fallback, also
        sets groups: the process groups whose every member is the run's)"""
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
            # A group may hold processes that are not the run's (the test may
            # join its caller's): only a group of the run's alone is signalled.
            others = set(info[1] for pid, info in procs.items() if pid not in mine)
            self.groups = set(info[1] for info in mine.values()) - others - set([os.getpgrp()])
        return dict((pid, info[3]) for pid, info in mine.items() if info[2])

    def live(self):
        """-> {pid: (name, argv)} of the run's live processes"""
        return dict((pid, (name, self._argv(pid))) for pid, name in self.scan().items())

    def signal(self, pids, signum):
        """Send signum to pids, the run's processes. Isolated, with one
        kill(-1) as pid 1: to every other process of the pid namespace at
        once, nested ones included (SIGSTOP and SIGKILL from an ancestor
        namespace are always delivered, pid_namespaces(7)), and a fork in
        progress is restarted once the signal is handled (kernel/fork.c
        copy_process: ERESTARTNOINTR when a signal is pending). In fallback,
        to each pid, and to each process group wholly the run's (a
        group-wide signal reaches a child being forked too). -> the pids
        it was sent to"""
        if self.isolated:
            kill_all_others(signum)
            return list(pids)
        for group in self.groups:
            try:
                os.kill(-group, signum)
            except OSError:
                pass
        return _signal_all(pids, signum)

    def freeze(self):
        """Stop every process of the run with SIGSTOP, pass after pass until
        a pass finds no new one: a pid hopper (fork, then the parent exits,
        all the time) is in no two snapshots, and a process forking on each
        signal cannot outrun it. -> live(), read once all is frozen: the
        names and argv of what runs now, not of what it was before an exec"""
        stopped, groups, quiet = set(), set(), 0
        for _ in range(1000):
            if self.isolated:  # one kill(-1) stops them all, forks in progress too
                kill_all_others(signal.SIGSTOP)
            new = set(self.scan()) - stopped
            new_groups = set(self.groups) - groups
            if new or new_groups:
                quiet = 0
                groups.update(new_groups)
                if not self.isolated:  # (isolated: all stopped above, before the listing)
                    self.signal(new, signal.SIGSTOP)
                stopped.update(new)
                continue
            # Nothing new: once more, after a moment. In fallback a hopper
            # may have been missed (gone between listing /proc and reading
            # it, its child not listed yet); its exit leaves a zombie, our
            # child until reaped (not here), which names its process group.
            quiet += 1
            if quiet == 2:
                break
            time.sleep(0.001)
        return self.live()


# A process that exits by itself within this time after the command (a
# multiprocessing resource tracker notices its parent's exit a fraction of a
# millisecond later) is not a leak.
SETTLE_TIME = 0.1


def stop_leaked_processes(table, timeout):
    """Report and stop what the command left running. What is still there
    SETTLE_TIME after the command is frozen (ProcessTable.freeze), read and
    reported, then gets SIGTERM (and SIGCONT, without which a stopped
    process would not act on it); what is still there after timeout seconds
    (what it started meanwhile too) is frozen again and killed with SIGKILL.
    Whether anything is left is asked of the whole run, not of pids seen
    before: a pid hopper is never twice the same.
    -> (leaked [(pid, name, argv)], pids SIGKILLed)"""
    if _wait_for_none(table, now() + SETTLE_TIME):
        return [], []
    alive = table.freeze()
    leaked = [(pid,) + alive[pid] for pid in sorted(alive)]
    if not alive:
        return leaked, []
    table.signal(alive, signal.SIGTERM)
    table.signal(alive, signal.SIGCONT)
    if _wait_for_none(table, now() + timeout):
        return leaked, []
    alive = table.freeze()
    known = set(pid for pid, _, _ in leaked)
    leaked.extend((pid,) + alive[pid] for pid in sorted(alive) if pid not in known)
    killed = table.signal(sorted(alive), signal.SIGKILL)
    _wait_for_none(table, now() + 2)  # e.g. stuck in D state: left to the kernel
    return leaked, sorted(killed)


def _wait_for_none(table, deadline):
    """Wait until no process of the run is left, or deadline. -> True if none
    is. Asked of wait(2), not of /proc: as pid 1 or a subreaper, the
    supervisor has a child as long as the run has a process (a pid hopper's
    is missed by a /proc listing often)."""
    delay = 0.001
    while True:
        if reap_children():
            return True
        if now() >= deadline:
            return False
        time.sleep(min(delay, max(0, deadline - now())))
        delay = min(delay * 2, 0.05)


def kill_all_others(signum):
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
