"""Real suites nobody here wrote (issue 13), installed by .ci/setup in
PREFIX-suites: filelock's pytest suite, simplejson's unittest suite, and
pygolang's own .nxdtest file run by nxdtest 0.0.1 and by the runner. Each is
run plainly (or by nxdtest + trun) and through the suite runner, isolated:
isolation changes no count, and the runner's lines are nxdtest's."""
import os
import re
import subprocess

import pytest

from conftest import AS_NOBODY, CALLERS, PREFIX, Result, buildout, buildout_section
from test_suite import case_output

from slapos.recipe.runtestsuite.counting import case_status

SUITES = PREFIX + '-suites'
BIN = SUITES + '/bin'
FILELOCK = SUITES + '/src/filelock-3.16.1'
PYGOLANG = SUITES + '/src/pygolang-0.1'
PATH = BIN + ':/usr/bin:/bin'

CASES = [
    ('filelock', '%s/python -m pytest -p no:cacheprovider tests' % BIN, FILELOCK),
    ('simplejson', '%s/python -m unittest simplejson.tests.all_tests_suite' % BIN, '/'),
]
RUNNER = '''
[runTestSuite]
recipe = slapos.recipe.isolatedtest:suite
wrapper-path = ${buildout:directory}/bin/runTestSuite
private-tmpfs =
  256m /tmp
%s
'''


@pytest.fixture(scope='module', autouse=True)
def installed():
    for path in (BIN + '/nxdtest', FILELOCK, PYGOLANG + '/.nxdtest'):
        assert os.path.exists(path), '%s missing: .ci/setup installs the real suites' % path


def as_caller(caller, argv, cwd, home, env=None, timeout=300):
    """Run argv as caller, HOME a scratch folder (virtualenv's tests write
    their app data there)."""
    prefix = AS_NOBODY if caller == 'nobody' else []
    env = dict(env or {}, PATH=PATH, HOME=home, LANG='C.UTF-8')
    proc = subprocess.Popen(prefix + argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=timeout)
    return Result(proc, out, err, 0)


def counts(status):
    return '# %(test_count)dt %(error_count)de %(failure_count)df %(skip_count)ds' % status


@pytest.fixture(scope='module')
def suite_runner(src, scratch_root):
    directory = os.path.join(scratch_root, 'real-suites')
    cases = ''.join("  %s env -C %s %s\n" % (name, cwd, command) for name, command, cwd in CASES)
    config = buildout_section('runTestSuite', src, directory) + RUNNER % (
        'strict = true\nleak-ignore = /tmp/pytest-of-*\ntest-cases =\n' + cases)
    r = buildout(directory, config)
    assert r.returncode == 0, r
    return os.path.join(directory, 'bin', 'runTestSuite')


@pytest.mark.parametrize('caller', CALLERS)
def test_pytest_and_unittest_suites_count_as_without_isolation(caller, suite_runner, scratch):
    expected = {}
    tmp = os.path.join(scratch, 'tmp')  # the plain runs' TMPDIR: not the host's /tmp
    os.makedirs(tmp)
    os.chmod(tmp, 0o777)
    for name, command, cwd in CASES:
        r = as_caller(caller, command.split(), cwd, scratch, {'TMPDIR': tmp})
        status = case_status(r.returncode, r.out, r.err)
        assert r.returncode == 0 and status['test_count'] > 100, r
        expected[name] = counts(status)
    # pytest's base directory is what strict must not count (leak-ignore)
    assert os.listdir(tmp) == ['pytest-of-%s' % caller]
    host = '/tmp/pytest-of-%s' % caller
    before = os.path.exists(host) and os.stat(host).st_mtime  # other pytest runs' leftovers
    r = as_caller(caller, [suite_runner], '/', scratch)
    text = r.stdout
    for name, _, _ in CASES:
        line = case_output(text, name)[-1]
        assert re.match(r'^ok\t%s\t\d+\.\d{3}s\t%s$' % (name, expected[name]), line), text
    assert '# leaked' not in text, text
    assert text.endswith('\n# ran 2 test cases:  2\u00b7ok\n') and r.returncode == 0, text
    assert (os.path.exists(host) and os.stat(host).st_mtime) == before


def status_lines(text):
    return [re.sub(r'\t\d+\.\d{3}s\t', '\tTIME\t', l)
            for l in text.splitlines() if re.match(r'^(ok|fail|error)\t', l)]


def test_pygolang_nxdtest_file_as_nxdtest_runs_it(src, scratch):
    """pygolang's own .nxdtest, unchanged: the runner lists the same cases
    and counts them as nxdtest 0.0.1 (with trun) does, as a non-root slapuser
    would run them; both report what pytest leaves in /tmp."""
    r = buildout(scratch, buildout_section('runTestSuite', src, scratch) + RUNNER % (
        'nxdtest = .nxdtest'))
    assert r.returncode == 0, r
    runner = os.path.join(scratch, 'bin', 'runTestSuite')
    nxdtest = as_caller('nobody', [BIN + '/nxdtest', '-l'], PYGOLANG, scratch)
    ours = as_caller('nobody', [runner, '-l'], PYGOLANG, scratch)
    assert ours.stdout == nxdtest.stdout == 'thread\ngevent\n', (ours, nxdtest)
    nxdtest = as_caller('nobody', [BIN + '/nxdtest'], PYGOLANG, scratch, timeout=600)
    ours = as_caller('nobody', [runner], PYGOLANG, scratch, timeout=600)
    expected = status_lines(nxdtest.stdout)
    assert [l.split('\t')[1] for l in expected] == ['thread', 'gevent'], nxdtest
    assert status_lines(ours.stdout) == expected, (ours.stdout[-3000:], expected)
    for r in (nxdtest, ours):
        assert '# leaked /tmp/pytest-of-nobody/' in r.stdout.splitlines(), r.stdout[-3000:]
        assert r.stdout.splitlines()[-1] == nxdtest.stdout.splitlines()[-1]
    assert ours.stdout.splitlines()[-1].startswith('# ran 2 test cases:')
    # (nxdtest exits 0 whatever the cases gave; the runner exits 1 when one
    # failed, so that a local run can fail a CI job)
    assert (nxdtest.returncode, ours.returncode) == (0, 1 if 'fail' in expected[0] + expected[1]
                                                     else 0)
