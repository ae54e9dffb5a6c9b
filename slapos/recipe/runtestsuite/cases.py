# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""The test cases of a suite: the suite recipe's NAME COMMAND-LINE lines, or
a .nxdtest file, read as nxdtest reads it (Python, run with TestCase,
PyTest, UnitTest and PyLint in its globals: it runs in the runner, outside
isolation, as in nxdtest).

Runs nothing but the .nxdtest file itself. Imports counting.
"""
import os
import re
try:
    from shlex import quote
except ImportError:  # Python 2
    from pipes import quote

from slapos.recipe.runtestsuite.counting import pytest_summary, unittest_summary


class Case(object):
    """One test case: what nxdtest's TestCase(name, argv, summaryf=None,
    cwd=..., env=..., envadj=...) declares."""

    def __init__(self, name, argv, summaryf=None, cwd=None, env=None, envadj=None,
                 quoted=True):
        self.name, self.argv, self.summaryf = name, list(argv), summaryf
        self.cwd, self.env, self.envadj = cwd, env, dict(envadj or {})
        self.quoted = quoted

    def command(self):
        """The command as shown and sent to the master: shell-quoted for the
        recipe's cases; for a .nxdtest's, exactly as nxdtest shows it (its
        masters keep it): 'make test.py # WENDELIN_CORE_TEST_DB=<fs>'"""
        adj = ' '.join('%s=%s' % (k, self.envadj[k]) for k in sorted(self.envadj))
        argv = [quote(a) for a in self.argv] if self.quoted else self.argv
        return ' '.join(argv) + (' # ' + adj if adj else '')


class PyTest(object):
    summary = staticmethod(pytest_summary)


class UnitTest(object):
    summary = staticmethod(unittest_summary)


class PyLint(object):
    @staticmethod
    def summary(out, err):
        """As nxdtest's: one error per 'file:line:column: code: message'."""
        if err:
            return {'test_count': '?', 'error_count': '?', 'failure_count': 0, 'skip_count': 0}
        messages = re.findall(br'^.*:\d+:\d+: .+: .*$', out, re.M)
        return {'test_count': 1, 'error_count': len(messages), 'failure_count': 0,
                'skip_count': 0}


def load_nxdtest(path):
    """Read a .nxdtest file as nxdtest does: it is Python, run with TestCase,
    PyTest, UnitTest and PyLint in its globals. -> [Case]"""
    cases, names = [], set()

    def test_case(name, argv, summaryf=None, **kw):
        unknown = set(kw) - set(['cwd', 'env', 'envadj'])
        if unknown:
            raise ValueError('TestCase %r: unsupported %s' % (name, ', '.join(sorted(unknown))))
        if name in names:
            raise ValueError('TestCase %r declared twice' % name)
        names.add(name)
        cases.append(Case(name, argv, summaryf, quoted=False, **kw))
    with open(path) as f:
        source = f.read()
    code = compile(source, os.path.realpath(path), 'exec')
    exec(code, {'TestCase': test_case, 'PyTest': PyTest, 'UnitTest': UnitTest,
                'PyLint': PyLint, '__file__': os.path.realpath(path)})
    return cases
