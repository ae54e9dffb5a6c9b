# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The suite runner (runTestSuite), one concern per module. The entry point
is slapos.recipe.isolated_suite (the command line, run_suite); imports go
one way, from the top of this list down:

- scheduler: runs the cases through isolate-exec, up to --node_quantity at
  once, stops them on a signal or the master's cancellation, reads their
  leak reports, tells the master
- results: where the cases to run come from: the master (erp5.util), or the
  local list
- cases: the test cases: the recipe's lines, or a .nxdtest file
- counting: the counts of a case, from its output (pytest, unittest, ERP5's
  runUnitTest) or a .nxdtest's summary function
- output: the runner's own lines on stdout, the node's description
"""
