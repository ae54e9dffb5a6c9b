# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Counting the tests of a case, from its output: pytest's, unittest's and
ERP5's runUnitTest summaries, compatible with nxdtest's PyTest.summary and
UnitTest.summary (a .nxdtest file may name them), into the counts the
master's test_result_line.stop() takes; and the case's status word.

Pure functions on the case's output, but for a .nxdtest's summary function
(the tested project's code) whose traceback it prints. Imports output.
"""
import re
import sys

from slapos.recipe.runtestsuite.output import _buffer

# Summaries compatible with nxdtest's PyTest.summary and UnitTest.summary (a
# .nxdtest file may name them): counts for the master's test_result_line.stop().

# pytest's last line, e.g. '=== 1 failed, 2 passed, 1 xfailed, 3 warnings in 0.1s ===',
# '=== no tests ran in 0.01s ==='; with -q the same without the '=' (and
# with -qq there is none: the progress line is counted instead).
PYTEST_OUTCOMES = (br'failed|passed|skipped|errors?|xfailed|xpassed|deselected|warnings?|'
                   br'rerun|subtests? (?:passed|failed|skipped)')
PYTEST_LAST_LINE = re.compile(
    br'^(?:=+ )?(?:(?:\d+ (?:' + PYTEST_OUTCOMES + br')(?:, |(?= in )))+|no tests ran)'
    br' in \d+(?:\.\d+)? ?s(?:econds)?\b.*?(?: =+)?$')  # pytest < 5: '0.12 seconds'
# a progress line: one character per test (-q, -qq), then its percentage
PYTEST_PROGRESS = re.compile(br'^([.FEsxXR]+) *\[ *\d+%\]$')
PYTEST_PROGRESS_KEYS = {b'.': 'passed', b'F': 'failed', b'E': 'error', b's': 'skipped',
                        b'x': 'xfailed', b'X': 'xpassed'}


def pytest_summary(out, err):
    """Counts from pytest's last line, with or without its '=' ('-q'), else
    from its progress lines ('-qq': '.FsEx    [100%]'). xfailed counts as
    skipped, xpassed as passed (pytest's own verdict: a strict xfail that
    passed is reported "failed"); warnings are not tests."""
    lines = out.splitlines()
    for line in reversed(lines):
        if PYTEST_LAST_LINE.match(line):
            break
    else:
        return _pytest_progress(lines)

    def count(*words):
        return sum(int(m) for word in words
                   for m in re.findall(br'\b([0-9]+) ' + word + br'\b', line))
    return _pytest_counts(count(b'failed'), count(b'errors?'), count(b'skipped'),
                          count(b'xfailed'), count(b'passed'), count(b'xpassed'))


def _pytest_progress(lines):
    chars = b''.join(m.group(1) for m in map(PYTEST_PROGRESS.match, lines) if m)
    if not chars:
        return {}
    n = dict((key, chars.count(char)) for char, key in PYTEST_PROGRESS_KEYS.items())
    return _pytest_counts(n['failed'], n['error'], n['skipped'], n['xfailed'], n['passed'],
                          n['xpassed'])


def _pytest_counts(failed, errors, skipped, xfailed, passed, xpassed):
    return {'failure_count': failed, 'error_count': errors, 'skip_count': skipped + xfailed,
            'expected_failures': xfailed, 'unexpected_successes': xpassed,
            'test_count': failed + errors + skipped + xfailed + passed + xpassed}


UNITTEST_RAN = re.compile(br'^Ran (\d+) tests? in ', re.M)
UNITTEST_STATUS = re.compile(br'^(OK|FAILED)(?: \((.*)\))?\s*$', re.M)
UNITTEST_KEYS = {
    b'failures': 'failure_count', b'errors': 'error_count', b'skipped': 'skip_count',
    b'expected failures': 'expected_failures', b'unexpected successes': 'unexpected_successes'}


def unittest_status(summary, status):
    """Fold unittest's 'failures=1, errors=2, skipped=3, expected failures=4,
    unexpected successes=5' into summary: as nxdtest and erp5.util count
    them, an unexpected success is a failure, an expected failure a skip."""
    for item in status.split(b','):
        key, _, value = item.strip().partition(b'=')
        if key in UNITTEST_KEYS and value.strip().isdigit():
            summary[UNITTEST_KEYS[key]] = int(value)
    summary['failure_count'] = summary.get('failure_count', 0) + summary.get('unexpected_successes', 0)
    summary['skip_count'] = summary.get('skip_count', 0) + summary.get('expected_failures', 0)
    return summary


def unittest_summary(out, err):
    """Counts from unittest's 'Ran N tests' and 'OK (...)' / 'FAILED (...)'."""
    text = err + b'\n' + out
    ran = UNITTEST_RAN.findall(text)
    if not ran:
        return {}
    summary = {'test_count': int(ran[-1]), 'failure_count': 0, 'error_count': 0,
               'skip_count': 0}
    status = UNITTEST_STATUS.findall(text)
    if status:
        unittest_status(summary, status[-1][1])
    return summary


ERP5_SUB_RESULT = re.compile(br'SUB\s+RESULT:\s+(\d+)\s+Tests?,\s+(\d+)\s+Failures?\s*(?:\((.*?)\))?')


def erp5_summary(out, err):
    """ERP5's runUnitTest: its 'SUB RESULT: 150 Tests, 2 Failures (skipped=1,
    expected failures=0, unexpected successes=0)' line (a functional test
    zuite of many tests run as one) gives the counts, over unittest's."""
    text = err + b'\n' + out
    found = ERP5_SUB_RESULT.findall(text)
    if not found:
        return {}
    tests, failures, rest = found[-1]
    summary = unittest_summary(out, err) or {'error_count': 0, 'skip_count': 0}
    summary.update(test_count=int(tests), failure_count=int(failures))
    if rest:
        summary['skip_count'] = 0
        unittest_status(summary, rest)
    return summary


def case_status(returncode, out, err, summaryf=None):
    """The testnode's counts for a case: from summaryf (a .nxdtest's), or
    ERP5's, pytest's or unittest's summary when recognised, else 1 test.
    A case whose command failed is never ok: with no failure or error
    counted, it gets one error (as nxdtest)."""
    status = {'test_count': 1, 'error_count': 0, 'failure_count': 0, 'skip_count': 0}
    if summaryf is not None:
        try:
            status.update(summaryf(out, err))
        except Exception:  # the tested project's code: its error is the case's (as nxdtest)
            import traceback
            problem = traceback.format_exc()
            _buffer(sys.stderr).write(problem.encode('utf-8', 'replace'))
            status['error_count'] = 1
            status['summary_error'] = problem
    else:
        status.update(erp5_summary(out, err) or pytest_summary(out, err) or
                      unittest_summary(out, err))
    if returncode != 0 and not (status.get('error_count') or status.get('failure_count')):
        status['error_count'] = 1
    return status


def status_word(status):
    if status['error_count']:
        return 'error'
    return 'fail' if status['failure_count'] else 'ok'
