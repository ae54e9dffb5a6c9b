# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Leak check: the System V IPC objects (shared memory segments, semaphore
arrays, message queues) and the POSIX message queues the command left.

Isolated, a run has an IPC namespace of its own (CLONE_NEWIPC, Linux 2.6.19;
for a non-root caller owned by its user namespace, Linux 3.8): the kernel
destroys every object in it when its last process exits, so nothing reaches
the host, and the host's objects (and other runs') are invisible inside.
The objects are listed from /proc/sysvipc/{shm,sem,msg}: those files show
the IPC namespace of the process that opens them (ipc/util.c
sysvipc_proc_open takes current's), so the supervisor, which shares the
command's, reads them through its own /proc, whatever the command mounts.
POSIX message queues are the files of an mqueue mount of that namespace
(mqueue_get_tree keys the superblock on current's IPC namespace), read
through a descriptor the supervisor opened before the command ran.

In fallback there is no namespace: the objects absent before the command
and owned by the caller are reported, never removed (another process of
the caller's may have made them). Reads only; imports kernel and common.
"""
import os

from slapos.recipe.isolation.common import MAX_ITEMS
from slapos.recipe.isolation.kernel import read_proc_file

# What each kind shows of an object, from /proc/sysvipc/KIND's columns
# (ipc/shm.c sysvipc_shm_proc_show, ipc/sem.c, ipc/msg.c): (name in the
# report, column).
SYSVIPC = (
    ('shm', (('bytes', b'size'), ('owner', b'uid'), ('nattch', b'nattch'))),
    ('sem', (('nsems', b'nsems'), ('owner', b'uid'))),
    ('msg', (('messages', b'qnum'), ('bytes', b'cbytes'), ('owner', b'uid'))),
)
_ID_COLUMNS = {'shm': b'shmid', 'sem': b'semid', 'msg': b'msqid'}


def read_sysvipc(proc=''):
    """-> [{'kind', 'key', 'id', ...}] of the System V IPC objects of our IPC
    namespace, from PROC/sysvipc/ (default: the working directory is a
    /proc: the supervisor's, through its descriptor)"""
    objects = []
    for kind, fields in SYSVIPC:
        try:
            lines = read_proc_file(proc + 'sysvipc/' + kind).splitlines()
        except (IOError, OSError):  # a kernel without CONFIG_SYSVIPC
            continue
        if not lines:
            continue
        header = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(header, line.split()))
            try:
                # the key is printed as a signed int: shown as the 32 bits ipcs shows
                item = {'kind': kind, 'key': int(row[b'key']) & 0xffffffff,
                        'id': int(row[_ID_COLUMNS[kind]])}
                for name, column in fields:
                    item[name] = int(row[column])
            except (KeyError, ValueError):
                continue
            objects.append(item)
    return objects


def new_sysvipc(before, after, owner):
    """The objects of after that are not in before (same kind, id and key)
    and belong to owner: what a fallback run may have made."""
    known = set((o['kind'], o['id'], o['key']) for o in before)
    return [o for o in after
            if (o['kind'], o['id'], o['key']) not in known and o['owner'] == owner]


def list_mqueues(mqueue_fd):
    """-> sorted names (bytes, '/name' as mq_open takes them) of the POSIX
    message queues of the mqueue mount open as mqueue_fd"""
    os.fchdir(mqueue_fd)
    return sorted(b'/' + name for name in os.listdir(b'.'))


def ipc_result(objects, mqueues):
    """The check's record, within the report's bounds."""
    return {'ipc': objects[:MAX_ITEMS], 'mqueues': mqueues[:MAX_ITEMS],
            'counts': {'leaked_ipc': len(objects), 'leaked_mqueues': len(mqueues)}}


def describe_ipc(item):
    """The text report's words for one object:
    'shm key=0x51cd3d6d id=0 bytes=4096 owner=1000 nattch=0'"""
    words = ['%s key=0x%08x id=%d' % (item['kind'], item['key'], item['id'])]
    for name, _ in dict(SYSVIPC)[item['kind']]:
        words.append('%s=%d' % (name, item[name]))
    return ' '.join(words)
