# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Where the cases to run come from, and where their results go: the ERP5
test node's master (erp5.util.taskdistribution, extra "testnode"), which
hands each case to one runner of the test result, or, without
--master_url, the local list in order (those matching -k/--run).

Starts no case; imports output.
"""
import re
import sys

from slapos.recipe.isolation.common import EXIT_FAILURE
from slapos.recipe.runtestsuite.output import emit


class LocalTestResult(object):
    """Without --master_url: the cases in order, those matching --run (as
    nxdtest's)."""

    def __init__(self, names, pattern=None):
        self._names = [n for n in names if pattern is None or re.search(pattern, n)]

    def start(self):
        if self._names:
            return LocalTestResultLine(self._names.pop(0))

    def isAlive(self):
        return True


class LocalTestResultLine(object):
    def __init__(self, name):
        self.name = name

    def stop(self, **status):
        pass


def connect_master(args, names):
    """-> test result from the master for this revision, or None if it has
    nothing to run."""
    try:
        from erp5.util.taskdistribution import TaskDistributor
    except ImportError as e:
        emit(u'# --master_url needs erp5.util (extra "testnode" of '
             u'slapos.recipe.isolatedtest): %s' % e)
        sys.exit(EXIT_FAILURE)
    tool = TaskDistributor(portal_url=args.master_url)
    return tool.createTestResult(
        revision=args.revision or 'dummy_revision', test_name_list=names,
        node_title=args.test_node_title,
        test_title=args.test_suite_title or args.test_suite,
        project_title=args.project_title)
