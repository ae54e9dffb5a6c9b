# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Who the command is in its user namespace: the caller's uid and gid mapped
to themselves, the caller's subordinate ids (/etc/subuid, newuidmap) for the
other ids, and the capabilities it keeps across exec (CAP_SYS_ADMIN only).

Only isolation steps: it mounts nothing and starts no command but
newuidmap and newgidmap. Imports kernel and common.
"""
import errno
import os

from slapos.recipe.isolation.common import EXIT_NOT_FOUND, write_all
from slapos.recipe.isolation.kernel import (
    CAP_SYS_ADMIN, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_CAP_AMBIENT_RAISE,
    PR_SET_NO_NEW_PRIVS, make_pipe,
    os_error, prctl, raw_wait_status_code, read_all, set_inheritable_capabilities, waitpid,
    write_proc_file)


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
            raise os_error('write %s' % path, e.errno)


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
    newuidmap and newgidmap, or why there are none (reason; refused: an
    administrator's error the run must say, not only --probe)."""
    uid = gid = tools = None
    reason = None
    refused = False

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
            # A range holding host id 0 (e.g. "nobody:0:65536") would map the
            # host's root into the run: its files would be the command's.
            if any(first == 0 for first, _ in ranges):
                self.reason = ('the subordinate %s range of %s in %s contains host %s 0'
                               % (kind, name or 'uid %d' % uid, path, kind))
                self.refused = True
                return
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
        out = read_all(output).decode('utf-8', 'replace').strip()
        os.close(output)
        code = raw_wait_status_code(waitpid(child, 0)[1])
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
            raise os_error('write %s' % path, e.errno, ())


def wait_for_id_maps(fd):
    """Wait for isolate-exec to have written our maps (b'M'); exit if it
    could not (it then starts a supervisor that maps the caller only)."""
    ok = os.read(fd, 1) == b'M'
    os.close(fd)
    if not ok:
        os._exit(0)


def drop_to_sys_admin():
    """Make the command keep exactly CAP_SYS_ADMIN across exec, for a non-zero
    uid in a user namespace (capabilities(7): only ambient capabilities survive
    execve for it), so that mount and FUSE work while file permissions still
    apply (no CAP_DAC_OVERRIDE)."""
    set_inheritable_capabilities([CAP_SYS_ADMIN])
    # Ambient capabilities are Linux 4.3+ (commit 58319057b784); a capability
    # can be ambient only while it is both permitted and inheritable.
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what='prctl PR_CAP_AMBIENT_CLEAR_ALL')
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN,
          what='prctl PR_CAP_AMBIENT_RAISE CAP_SYS_ADMIN')


def forbid_new_privileges():
    """No set-user-ID or file capabilities for the command (PR_SET_NO_NEW_PRIVS,
    Linux 3.5), for a non-root caller: with subordinate ids mapped, a
    set-user-ID file the caller made, outside the run, owned by one of them
    (its own rootless namespace can) would otherwise make the command uid 0
    of the run's user namespace, with every capability there. Ambient
    capabilities still pass exec (CAP_SYS_ADMIN stays); set-user-ID root
    files mean nothing in the run anyway (the host's root is unmapped)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1, what='prctl PR_SET_NO_NEW_PRIVS')
