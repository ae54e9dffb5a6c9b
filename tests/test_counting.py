"""How the runner counts a case's tests (issue: exact counts): real pytest
and unittest runs of every kind of outcome, parsed as the runner parses
them; ERP5's `SUB RESULT:` lines; and a case whose command failed is never
ok."""
import os
import subprocess
import sys

import pytest

from conftest import PREFIX, need

from slapos.recipe.runtestsuite.counting import (case_status, erp5_summary, pytest_summary,
                                                 status_word, unittest_summary)

SUITES_PYTHON = PREFIX + '-suites/bin/python'

PYTEST_FILE = '''
import warnings, pytest
def test_pass(): pass
def test_pass2(): warnings.warn("careful")
def test_fail(): assert 0
@pytest.fixture
def broken(): raise RuntimeError
def test_error(broken): pass
@pytest.mark.skip
def test_skip(): pass
@pytest.mark.xfail
def test_xfail(): assert 0
@pytest.mark.xfail
def test_xpass(): pass
'''

UNITTEST_FILE = '''
import unittest
class T(unittest.TestCase):
    def test_pass(self): pass
    def test_fail(self): self.fail()
    def test_error(self): raise RuntimeError
    @unittest.skip("no")
    def test_skip(self): pass
    @unittest.expectedFailure
    def test_xfail(self): self.fail()
    @unittest.expectedFailure
    def test_xpass(self): pass
unittest.main()
'''


def run(argv, cwd):
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_pytest_every_outcome(scratch):
    with open(os.path.join(scratch, 'test_x.py'), 'w') as f:
        f.write(PYTEST_FILE)
    code, out, err = run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider',
                          'test_x.py'], scratch)
    assert code == 1
    summary = pytest_summary(out, err)
    assert summary == {'test_count': 7, 'failure_count': 1, 'error_count': 1, 'skip_count': 2,
                       'expected_failures': 1, 'unexpected_successes': 1}, out[-300:]
    assert status_word(case_status(code, out, err)) == 'error'


@pytest.mark.parametrize('options', [['-q'], ['-qq'], ['-q', '--tb=no'], ['-rN', '-q'],
                                     ['-qqq'], ['-v', '-n', '2']])
def test_pytest_quiet_and_xdist_count_the_same(options, scratch):
    """-q drops the '=' of the last line, -qq the line itself (its progress
    line is counted), xdist prints [gw0] lines: the counts are the same."""
    python = sys.executable
    if '-n' in options:  # pytest-xdist: in the real suites' virtualenv (.ci/setup)
        python = SUITES_PYTHON
        need(os.access(python, os.X_OK), 'no %s (.ci/setup makes it)' % python, 'suites')
    with open(os.path.join(scratch, 'test_x.py'), 'w') as f:
        f.write(PYTEST_FILE)
    code, out, err = run([python, '-m', 'pytest', '-p', 'no:cacheprovider'] + options +
                         ['test_x.py'], scratch)
    assert code == 1, out
    if '-n' in options:
        assert b'[gw0]' in out or b'[gw1]' in out, out
    assert pytest_summary(out, err) == {
        'test_count': 7, 'failure_count': 1, 'error_count': 1, 'skip_count': 2,
        'expected_failures': 1, 'unexpected_successes': 1}, out[-500:]
    assert status_word(case_status(code, out, err)) == 'error'


def test_pytest_old_last_line():
    """pytest < 5 said 'seconds'."""
    out = b'=========== 1 failed, 2 passed in 0.12 seconds ===========\n'
    assert pytest_summary(out, b'')['test_count'] == 3


def test_pytest_no_tests_ran(scratch):
    code, out, err = run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '.'], scratch)
    assert code == 5  # pytest: no tests collected
    assert pytest_summary(out, err)['test_count'] == 0
    status = case_status(code, out, err)
    assert status_word(status) == 'error' and status['error_count'] == 1


def test_unittest_every_outcome(scratch):
    code, out, err = run([sys.executable, '-c', UNITTEST_FILE], scratch)
    assert code == 1
    assert b'FAILED (failures=1, errors=1, skipped=1, expected failures=1, ' \
        b'unexpected successes=1)' in err
    summary = unittest_summary(out, err)
    # as nxdtest and erp5.util: an unexpected success fails, an expected failure skips
    assert (summary['test_count'], summary['failure_count'], summary['error_count'],
            summary['skip_count']) == (6, 2, 1, 2)


def test_unittest_only_an_unexpected_success_is_not_ok(scratch):
    code, out, err = run([sys.executable, '-c', 'import unittest\n'
                          'class T(unittest.TestCase):\n'
                          '    @unittest.expectedFailure\n'
                          '    def test(self): pass\n'
                          'unittest.main()\n'], scratch)
    assert code == 1 and b'FAILED (unexpected successes=1)' in err
    assert status_word(case_status(code, out, err)) == 'fail'


def test_unittest_ok_with_skips(scratch):
    code, out, err = run([sys.executable, '-c', 'import unittest\n'
                          'class T(unittest.TestCase):\n'
                          '    def test(self): pass\n'
                          '    @unittest.skip("x")\n'
                          '    def test2(self): pass\n'
                          'unittest.main()\n'], scratch)
    assert code == 0
    status = case_status(code, out, err)
    assert (status_word(status), status['test_count'], status['skip_count']) == ('ok', 2, 1)


@pytest.mark.parametrize('text, counts', [
    (b'Ran 1 test in 12.3s\n\nOK\nSUB RESULT: 150 Tests, 2 Failures (skipped=3, expected '
     b'failures=1, unexpected successes=1)\n', (150, 3, 0, 4)),
    (b'Ran 1 test in 12.3s\n\nFAILED (failures=1)\nSUB RESULT: 20 Tests, 1 Failures\n',
     (20, 1, 0, 0)),
])
def test_erp5_sub_result(text, counts):
    summary = erp5_summary(b'', text)
    assert (summary['test_count'], summary['failure_count'], summary['error_count'],
            summary['skip_count']) == counts


def test_failed_command_without_a_summary_is_an_error():
    assert case_status(1, b'', b'boom\n') == {'test_count': 1, 'error_count': 1,
                                              'failure_count': 0, 'skip_count': 0}
    assert status_word(case_status(0, b'', b'')) == 'ok'


def test_failed_command_whose_summary_says_ok_is_an_error():
    """e.g. a crash after pytest printed its summary: the exit status wins."""
    out = b'==================== 3 passed in 0.1s ====================\n'
    status = case_status(139, out, b'')
    assert status_word(status) == 'error' and status['test_count'] == 3
