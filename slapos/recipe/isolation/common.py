# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""What every module of the runtime shares: the program's name and version,
its exit statuses, the bounds of the report, its two exceptions, and bytes
and text helpers (file names are bytes; Python 2.7 and 3).

Owns no state and makes no system call but write(2); imports only the
standard library.
"""
import errno
import os
import sys
import time

__version__ = '0.3'
PROG = 'isolate-exec'
PY2 = sys.version_info[0] == 2

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


def describe(exc):
    """One line for an unexpected exception: its type and message."""
    if isinstance(exc, EnvironmentError) and exc.errno:
        text = os.strerror(exc.errno)
        if getattr(exc, 'filename', None):
            text = '%s: %s' % (exc.filename, text)
    else:
        text = str(exc)
    return '%s: %s' % (type(exc).__name__, text) if text else type(exc).__name__


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
