# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Leak check: the files the command left. The walk of a private tmpfs (or,
in fallback, of the private TMPDIR, removing what it finds), what it found
within the report's bounds, and the fallback's private directory itself.

Deletes only in the fallback's private directory, through descriptors it
opened, never following a link nor crossing a mount. Imports kernel and
common.
"""
import errno
import os
import stat

from slapos.recipe.isolation.common import (
    MAX_ITEMS, MAX_NAME_BYTES, SetupError, fsdecode, fsencode)
from slapos.recipe.isolation.kernel import (
    O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, mount_id, open_directory)

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
        # opened up before entering it: the test may have made it mode 000
        self._make_writable(self.root_fd, os.fstat(self.root_fd))
        os.fchdir(self.root_fd)
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
        self.parent_fd = open_directory(parent, 'open')
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
