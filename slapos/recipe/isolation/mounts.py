# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The private mounts of a run: the PRIVATE_TMPFS table and its options
(--tmpfs, the recipes' private-tmpfs), and the isolation steps that mount:
private propagation, the private tmpfs, the minimal user database, /proc,
and what follows from them (the working directory, TMPDIR).

Only set-up: it reads nothing back after the command (mountinfo and files
do). Imports kernel and common.
"""
import os

from slapos.recipe.isolation.common import SetupError, UsageError, write_all
from slapos.recipe.isolation.kernel import (
    MNT_DETACH, MS_BIND, MS_DIRSYNC, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID,
    MS_PRIVATE, MS_RDONLY, MS_REC, MS_RELATIME, MS_STRICTATIME, MS_SYNCHRONOUS, O_CLOEXEC, mount,
    open_directory, os_error, umount)

# PRIVATE_TMPFS is the one table of private mounts: every run mounts a fresh
# tmpfs on each of these paths (with these default options), walks it for
# leaked files after the command, and the tests check each of them. --tmpfs
# PATH:OPTIONS changes the options of an entry or adds one.
PRIVATE_TMPFS = (
    ('/tmp', 'mode=1777'),
    ('/dev/shm', 'mode=1777'),
)

# tmpfs mount options in docker's --tmpfs syntax: generic mount flags, each
# with the bits it sets and clears, and the tmpfs options passed to the kernel.
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


def in_private_mount(path, tmpfs):
    """Is path one of the mount points of tmpfs, or under one?"""
    return any(path == entry.path or path.startswith(entry.path + '/') for entry in tmpfs)


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


def mount_private_tmpfs(entry):
    """Mount a fresh tmpfs on entry.path. -> fd of its root, which the leak
    walk starts from (whatever the command stacks on the path later)"""
    if not os.path.isdir(entry.path):  # inside a private tmpfs mounted before
        try:
            os.makedirs(entry.path)
        except OSError as e:
            raise os_error('create %s' % entry.path, e.errno, ())
    mount('tmpfs', entry.path, 'tmpfs', entry.flags, ','.join(entry.data) or None,
          'mount tmpfs on %s' % entry.path)
    return open_directory(entry.path, 'open')


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
            raise os_error('write %s' % source, e.errno, ())
        mount(source, target, None, MS_BIND, None, 'bind %s on %s' % (source, target))
    umount(scratch, MNT_DETACH, 'umount %s' % scratch)


def mount_private_proc():
    """Mount a /proc that shows only the new pid namespace. -> fd of it: the
    supervisor reads processes and mount tables through it, whatever the
    command mounts on /proc later."""
    # Allowed only with CAP_SYS_ADMIN in the user namespace owning the pid
    # namespace, and only if no locked mount hides part of the host's /proc
    # (fs/namespace.c mount_too_revealing(): docker's masked paths make it fail).
    mount('proc', '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC, None, 'mount proc on /proc')
    return open_directory('/proc', 'open')


# Where POSIX message queues are seen (mq_overview(7)); systemd and docker
# mount it, a bare system may lack it.
MQUEUE = '/dev/mqueue'


def mount_private_mqueue(scratch):
    """Mount the mqueue file system of the run's IPC namespace on /dev/mqueue,
    for the command to see its own queues only (the mount point is created
    where the caller may: root; else the command has no /dev/mqueue, as on
    the host). -> fd of another mount of it, on scratch and detached at
    once: the leak check lists the queues through it, whatever the command
    mounts on /dev/mqueue."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount('mqueue', scratch, 'mqueue', flags, None, 'mount mqueue on %s' % scratch)
    fd = open_directory(scratch, 'open')
    umount(scratch, MNT_DETACH, 'umount %s' % scratch)
    if not os.path.isdir(MQUEUE):
        try:
            os.mkdir(MQUEUE, 0o755)
        except OSError:
            return fd
    mount('mqueue', MQUEUE, 'mqueue', flags, None, 'mount mqueue on %s' % MQUEUE)
    return fd


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


def private_env(env, tmpfs):
    """TMPDIR, TMP and TEMP set outside the private mounts, or to a directory
    that does not exist in them (they are fresh), now point to /tmp, so that
    temporary files land where they are isolated and checked."""
    for name in ('TMPDIR', 'TMP', 'TEMP'):
        value = env.get(name)
        if value and not (in_private_mount(value, tmpfs) and os.path.isdir(value)):
            env[name] = '/tmp'
    return env
