# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The runtime of isolate-exec, one concern per module. The entry point is
slapos.recipe.isolate_exec (the command line, main, run_wrapper, probe);
imports go one way, from the top of this list down:

- supervisor: the supervisor process (pid 1 of the run), the records it
  sends back to isolate-exec, the memory reserve, the set-up checklists
- command: the command's own process (exec, terminal, OOM score)
- signals: forwarding SIGINT/SIGTERM/SIGHUP, --timeout, stopping the command
- processes, mountinfo, files: the leak checks (process table, mount table
  diff, walk of the private tmpfs, fallback's private directory)
- report: the text and JSON reports, the --report file
- ids, mounts: the isolation steps (id maps, subordinate ids, capabilities;
  the private mounts, the user database, /proc)
- kernel: system calls through _ctypes, file descriptors, /proc files
- common: exit statuses, bounds, errors, bytes and text

This package imports nothing by itself: the entry point imports what a run
needs, once, before anything forks.
"""
