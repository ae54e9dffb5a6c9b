# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Leak check: the command's mount table, before and after. Parsing
/proc/PID/mountinfo into comparable lines, the diff (leaked and gone
mounts), and undoing mountinfo's octal escapes for the JSON report.

Pure functions on bytes: it reads no file itself. Imports nothing.
"""


def parse_mounts(mountinfo):
    """-> [mount] from mountinfo bytes, each as 'SOURCE[ROOT] MOUNTPOINT
    FSTYPE OPTIONS' bytes (the /proc/mounts shape, with a bind mount's root)."""
    # Mount IDs, parent IDs and device numbers are left out: they are reused
    # and differ between namespaces (proc(5)); so are propagation tags. Names
    # keep mountinfo's octal escapes (\040 for a space, \012 for a newline),
    # but the kernel does not escape \r or other control characters: lines
    # are split on \n only, and printed through escape_name().
    mounts = []
    for line in mountinfo.split(b'\n'):
        if not line:
            continue
        fields = line.split(b' ')
        try:
            sep = fields.index(b'-', 6)
            root, mountpoint, options = fields[3], fields[4], fields[5]
            fstype, source, super_options = fields[sep + 1:sep + 4]
        except (ValueError, IndexError):
            mounts.append(line)  # not expected: kept whole rather than lost
            continue
        if root != b'/':
            source += b'[' + root + b']'
        extra = [o for o in super_options.split(b',') if o not in (b'rw', b'ro')]
        mounts.append(b' '.join((source, mountpoint, fstype, b','.join([options] + extra))))
    return mounts


def diff_mounts(before, after):
    """-> (leaked, gone): mounts only in after, mounts only in before (multisets
    of parse_mounts()), from two mountinfo snapshots."""
    if before == after:  # the usual case: nothing to parse
        return [], []
    before, after = parse_mounts(before), parse_mounts(after)
    count = {}
    for m in before:
        count[m] = count.get(m, 0) + 1
    leaked = []
    for m in after:
        if count.get(m):
            count[m] -= 1
        else:
            leaked.append(m)
    gone = []
    for m in before:
        if count.get(m):
            count[m] -= 1
            gone.append(m)
    return leaked, gone


def unescape_mount(m):
    """Decode mountinfo's octal escapes (\\040 is a space). -> bytes"""
    if b'\\' not in m:
        return m
    out, i = bytearray(), 0
    while i < len(m):
        if m[i:i + 1] == b'\\' and m[i + 1:i + 4].isdigit():
            out.append(int(m[i + 1:i + 4], 8))
            i += 4
        else:
            out += m[i:i + 1]
            i += 1
    return bytes(out)
