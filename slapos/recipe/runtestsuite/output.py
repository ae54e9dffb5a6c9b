# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The runner's output: its own lines on stdout (UTF-8 whatever the locale,
flushed at once) and the description of the node it runs on, for
traceability (as nxdtest).

Prints only; imports only the standard library.
"""
import os
import pwd
import re
import socket
import sys
import time


def emit(line):
    """Print a line of our own on stdout, at once (UTF-8 whatever the locale)."""
    out = getattr(sys.stdout, 'buffer', sys.stdout)
    out.write(line.encode('utf-8') if not isinstance(line, bytes) else line)
    out.write(b'\n')
    out.flush()


def system_info():
    emit(u'date:\t%s' % time.strftime('%a, %d %b %Y %H:%M:%S %Z', time.localtime()))
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    emit(u'xnode:\t%s@%s' % (user, socket.getfqdn()))
    emit(u'uname:\t%s' % ' '.join(os.uname()))
    try:
        with open('/proc/cpuinfo') as f:
            cpuinfo = f.read()
    except IOError:
        cpuinfo = ''
    for field in ('model name', 'isa'):  # no 'model name' on riscv, 'isa' only there
        m = re.search(r'^%s\s*:\s*(.*)$' % field, cpuinfo, re.M)
        if m:
            emit(u'%s:\t%s' % ('cpu' if field == 'model name' else 'isa', m.group(1)))


def _buffer(stream):
    return getattr(stream, 'buffer', stream)
