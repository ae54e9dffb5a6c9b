# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The report of a run, from the supervisor's records: the text report
(nxdtest-compatible '# leaked ...' lines, bounded, every name escaped), the
JSON report, and the --report file it is written to.

Decides nothing about the run: isolate_exec gives it the exit status and
prints what it returns. Imports mountinfo, kernel and common.
"""
import errno
import os
import stat

from slapos.recipe.isolation.common import (
    MAX_LINE_BYTES, MAX_LINES, PROG, PY2, __version__, fsdecode, fsencode, native, warn, write_all)
from slapos.recipe.isolation.kernel import O_CLOEXEC, O_NOFOLLOW, open_directory
from slapos.recipe.isolation.ipc import describe_ipc
from slapos.recipe.isolation.mountinfo import unescape_mount

# Bytes that never need escaping in a text report line.
_PLAIN = bytes(bytearray(c for c in range(0x20, 0x7f) if c != 0x5c))
_ESCAPES = {0x5c: '\\\\', 0x0a: '\\n', 0x09: '\\t', 0x0d: '\\r'}


def _unsafe(ch):
    """Characters that must not reach a terminal or a log raw: control
    characters (ESC starts terminal sequences), and format characters such as
    the bidi overrides (U+202E shows a name reversed) or zero-width ones."""
    c = ord(ch)
    if c < 0x20 or 0x7f <= c < 0xa0:
        return True
    if c < 0xa0:
        return False
    if PY2:
        import unicodedata
        return unicodedata.category(ch)[0] in 'CZ' and ch != u' '
    return not ch.isprintable()


def escape_name(name, backslash=True):
    """Return name bytes as one unambiguous, harmless line: control and format
    characters and invalid UTF-8 bytes are written as escapes (\\n, \\x1b,
    \\u202e, \\xff), and so is the backslash itself (unless backslash is
    False: mountinfo lines have their own octal escapes, \\134 for it)."""
    if not name.translate(None, _PLAIN if backslash else _PLAIN + b'\\'):
        return name
    escapes = _ESCAPES if backslash else dict((k, v) for k, v in _ESCAPES.items() if k != 0x5c)
    try:
        chars = name.decode('utf-8')
    except UnicodeDecodeError:
        out = []
        for c in bytearray(name):
            if c in escapes:
                out.append(escapes[c])
            elif 0x20 <= c < 0x7f:
                out.append(chr(c))
            else:
                out.append('\\x%02x' % c)
        return ''.join(out).encode('ascii')
    out = []
    for ch in chars:
        c = ord(ch)
        if c in escapes:
            out.append(escapes[c])
        elif c >= 0x20 and c != 0x7f and (c < 0x80 or not _unsafe(ch)):
            out.append(ch)
        elif c < 0x100:
            out.append(u'\\x%02x' % c)
        elif c < 0x10000:
            out.append(u'\\u%04x' % c)
        else:
            out.append(u'\\U%08x' % c)
    return u''.join(out).encode('utf-8')


def _lines(kind, items, total, line):
    """At most MAX_LINES lines of items, then one saying how many more."""
    lines = [line(item) for item in items[:MAX_LINES]]
    if total > MAX_LINES:
        lines.append(fsencode('# ... and %d more %s' % (total - MAX_LINES, kind)))
    return lines


def format_report(result):
    """-> the text report: nxdtest-compatible '# ...' lines, as bytes."""
    counts = result.get('counts', {})

    def process(p):
        pid, name, argv = p
        return fsencode('# leaked pid=%d %r %r' % (pid, native(name), [native(a) for a in argv]))

    lines = _lines('leaked processes', result.get('processes', []),
                   counts.get('leaked_processes', 0), process)
    lines += _lines('processes killed', result.get('killed', []), counts.get('killed_pids', 0),
                    lambda pid: fsencode('# killed pid=%d with SIGKILL: still running after '
                                         '--kill-timeout' % pid))
    files, sticky = result.get('files', []), set(result.get('sticky', ()))
    total = counts.get('leaked_files', 0) + counts.get('sticky_dirs', 0)
    lines += [(b'# found sticky ' if path in sticky else b'# leaked ') + escape_name(path)
              for path in files[:MAX_LINES]]
    if total > MAX_LINES:
        more = '# ... and %d more leaked files' % (total - MAX_LINES)
        more += (' (--report FILE lists them all)' if not result.get('files_cut') else
                 ' (--report FILE lists the first %d)' % len(files))
        lines.append(fsencode(more))
    lines += _lines('unreadable directories', result.get('unreadable', []),
                    counts.get('unreadable_dirs', 0), lambda p: b'# unreadable ' + escape_name(p))
    lines += _lines('files left', result.get('left', []), counts.get('left_files', 0),
                    lambda p: b'# could not remove ' + escape_name(p))
    lines += _lines('leaked mounts', result.get('leaked_mounts', []),
                    counts.get('leaked_mounts', 0),
                    lambda m: b'# leaked mount: ' + escape_name(m, backslash=False))
    lines += _lines('gone mounts', result.get('gone_mounts', []), counts.get('gone_mounts', 0),
                    lambda m: b'# gone mount: ' + escape_name(m, backslash=False))
    lines += _lines('leaked ipc objects', result.get('ipc', []), counts.get('leaked_ipc', 0),
                    lambda item: fsencode('# leaked ipc ' + describe_ipc(item)))
    lines += _lines('leaked mqueues', result.get('mqueues', []), counts.get('leaked_mqueues', 0),
                    lambda name: b'# leaked mqueue ' + escape_name(name))
    return b''.join(_cut(line) + b'\n' for line in lines)


def _cut(line):
    """line, cut to MAX_LINE_BYTES on a UTF-8 character boundary."""
    if len(line) <= MAX_LINE_BYTES:
        return line
    end = MAX_LINE_BYTES - 3
    while end and 0x80 <= bytearray(line[end:end + 1])[0] < 0xc0:
        end -= 1
    return line[:end] + b'...'


def has_leaks(result):
    counts = result.get('counts', {})
    return any(counts.get(key) for key in ('leaked_files', 'leaked_processes', 'leaked_mounts',
                                           'gone_mounts', 'left_files', 'leaked_ipc',
                                           'leaked_mqueues'))


def decode_names(names):
    """fsdecode every name, in one go where possible (names have no NUL)."""
    if PY2 or not names:
        return [fsdecode(n) for n in names]
    return fsdecode(b'\0'.join(names)).split('\0')


def leaked_files(result):
    """The leaked files: what the walk found but sticky directories."""
    files, sticky = result.get('files', []), result.get('sticky')
    if sticky:
        sticky = set(sticky)
        files = [p for p in files if p not in sticky]
    return files


def json_report(run, result, isolated, reason, code):
    """-> the JSON report, as bytes."""
    import json
    counts = dict(leaked_files=0, sticky_dirs=0, unreadable_dirs=0, left_files=0,
                  leaked_mounts=0, gone_mounts=0, leaked_processes=0, killed_pids=0, ignored=0,
                  leaked_ipc=0, leaked_mqueues=0)
    counts.update(result.get('counts', {}))
    report = {
        'version': __version__,
        'isolated': isolated,
        'reason': reason,
        'command': [fsdecode(fsencode(a)) for a in run.command],
        'tmpfs': [{'path': e.path, 'options': e.options} for e in run.tmpfs] if isolated else [],
        'exit_code': code,
        'duration_s': round(result.get('duration', 0.0), 6),
        'leaked': has_leaks(result),
        'complete': not result.get('errors') and 'done' in result,
        'errors': result.get('errors', []),
        'leaked_files': decode_names(leaked_files(result)),
        'sticky_dirs': [fsdecode(p) for p in result.get('sticky', ())],
        'unreadable_dirs': [fsdecode(p) for p in result.get('unreadable', ())],
        'left_files': [fsdecode(p) for p in result.get('left', ())],
        'leaked_mounts': [fsdecode(unescape_mount(m)) for m in result.get('leaked_mounts', ())],
        'gone_mounts': [fsdecode(unescape_mount(m)) for m in result.get('gone_mounts', ())],
        'leaked_processes': [{'pid': pid, 'name': fsdecode(name), 'argv': [fsdecode(a) for a in argv]}
                             for pid, name, argv in result.get('processes', ())],
        'killed_pids': list(result.get('killed', ())),
        'leaked_ipc': [dict(item) for item in result.get('ipc', ())],
        'leaked_mqueues': [fsdecode(name) for name in result.get('mqueues', ())],
        'timed_out': (result.get('timed_out') or (None,))[0],
        'ignore': list(run.ignore),
        'counts': counts,
    }
    report['truncated'] = sorted(key for key, count in counts.items()
                                 if key in report and len(report[key]) < count)
    # One key per line, each value by json's C encoder (indent= would take
    # the pure Python one: ~5 times slower for 100k names).
    return ('{\n%s\n}\n' % ',\n'.join('  %s: %s' % (json.dumps(key), json.dumps(value, sort_keys=True))
                                      for key, value in sorted(report.items()))).encode('ascii')


def write_in_place(fd, data):
    """Write data to fd (then close it): a regular file is truncated first;
    a FIFO or a device opened without blocking is written blocking."""
    try:
        import fcntl
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
        write_all(fd, data, errors=True)
    finally:
        os.close(fd)


class ReportFd(object):
    """Where --report-fd goes: a file descriptor inherited from the caller
    (e.g. an unlinked file of the suite runner: no path a test can reach),
    close-on-exec from the start, so that the command never has it."""

    def __init__(self, fd):
        self.fd = fd

    def write(self, data):
        try:
            write_in_place(self.fd, data)
        except (IOError, OSError) as e:
            warn('%s: write report to file descriptor %d: %s'
                 % (PROG, self.fd, os.strerror(e.errno)))


class ReportFile(object):
    """Where --report goes. Its directory is opened once, before the run, and
    the file is written relative to that descriptor: swapping the directory
    for a symbolic link during the run changes nothing. A regular file (or
    none) is replaced atomically by a temporary file with an unpredictable
    name, created exclusively, without following symbolic links; a device
    or a pipe (/dev/null, /dev/stdout) is written in place, opened without
    blocking (a FIFO nobody reads is an error, not a hang). In a sticky
    world-writable directory (/tmp), a symbolic link is followed, and a FIFO
    or a device written, only as the kernel's fs.protected_symlinks and
    fs.protected_fifos would: if it is the caller's or the directory
    owner's (another user's FIFO there would hang the run, or be read by
    that user)."""

    def __init__(self, path):
        self.path = path
        self.directory, self.name = os.path.split(path)
        self.dir_fd = open_directory(self.directory or '/', 'open directory of --report')

    def write(self, data):
        """Write data; on failure print why. Changes the working directory."""
        try:
            os.fchdir(self.dir_fd)
            self._write(data)
        except (IOError, OSError) as e:
            warn('%s: write report %s: %s' % (PROG, self.path, os.strerror(e.errno)))
        except ValueError as e:
            warn('%s: write report %s: %s' % (PROG, self.path, e))

    def _write(self, data):
        try:
            st = os.lstat(self.name)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            st = None
        if st is None or stat.S_ISREG(st.st_mode):
            return self._replace(data)
        kind = ('symbolic link' if stat.S_ISLNK(st.st_mode) else
                'FIFO' if stat.S_ISFIFO(st.st_mode) else 'device')
        directory = os.fstat(self.dir_fd)
        if (directory.st_mode & (stat.S_ISVTX | stat.S_IWOTH) == stat.S_ISVTX | stat.S_IWOTH
                and st.st_uid not in (os.geteuid(), directory.st_uid)):
            raise ValueError('a %s of another user in a sticky world-writable directory: '
                             'not %s' % (kind, 'followed' if kind == 'symbolic link' else 'written'))
        follow = 0 if kind == 'symbolic link' else O_NOFOLLOW
        try:
            fd = os.open(self.name, os.O_WRONLY | os.O_NONBLOCK | follow | O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ENXIO:
                raise ValueError('a FIFO that nobody reads')
            raise
        write_in_place(fd, data)

    def _replace(self, data):
        while True:
            tmp = '.%s.%s.tmp' % (self.name, ''.join('%02x' % b for b in bytearray(os.urandom(8))))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                             0o666)
                break
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        try:
            try:
                write_all(fd, data, errors=True)
            finally:
                os.close(fd)
            os.rename(tmp, self.name)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
