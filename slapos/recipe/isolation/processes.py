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

    def read(self, pid):
        """-> (ppid, alive, name, argv bytes list) of pid, or None if it is
        gone. A zombie, or an exiting process, is not alive, unless another
        of its threads still runs (its main thread may exit before them)."""
        try:
            stat_line = read_proc_file('%d/stat' % pid)
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
