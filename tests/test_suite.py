"""The suite runner (issue: slapos.recipe.isolatedtest:suite), built with a
real offline buildout and run for real, as root and as nobody, locally and
against a local XML-RPC master played by the test, the client being the real
erp5.util."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

try:
    from xmlrpc.server import SimpleXMLRPCServer
except ImportError:  # pragma: no cover
    from SimpleXMLRPCServer import SimpleXMLRPCServer

from conftest import AS_NOBODY, CALLERS, PYTHON, Result, buildout, buildout_section, wait_for

SUITE = '''
[runTestSuite]
recipe = slapos.recipe.isolatedtest:suite
wrapper-path = ${{buildout:directory}}/bin/runTestSuite
private-tmpfs =
  4m /tmp
{extra}
test-cases =
{cases}
'''

PYTEST_OUTPUT = ('import sys; print("collected 5 items"); '
                 'print("==== 1 failed, 3 passed, 1 skipped in 0.05s ===="); sys.exit(1)')
UNITTEST_OUTPUT = ('import sys; sys.stderr.write("..E\\n----\\nRan 3 tests in 0.010s\\n\\n'
                   'FAILED (errors=1)\\n"); sys.exit(1)')
CASES = [
    ('write', "sh -c 'echo one > /tmp/same; echo one > /dev/shm/same'"),
    ('check', "sh -c 'test ! -e /tmp/same && test ! -e /dev/shm/same && echo clean'"),
    ('leak', "sh -c 'touch /tmp/leaked-by-this-case'"),
    ('pytest-like', "%s -c '%s'" % (PYTHON, PYTEST_OUTPUT)),
    ('unittest-like', "%s -c '%s'" % (PYTHON, UNITTEST_OUTPUT)),
    ('broken', "sh -c 'echo oops >&2; exit 5'"),
]


def make_suite(directory, src, cases=CASES, extra=''):
    config = buildout_section('runTestSuite', src, directory) + SUITE.format(
        extra=extra, cases='\n'.join('  %s %s' % case for case in cases))
    r = buildout(directory, config)
    assert r.returncode == 0, r
    return os.path.join(directory, 'bin', 'runTestSuite')


def run_suite(runner, args=(), caller='root', env=None):
    prefix = AS_NOBODY if caller == 'nobody' else []
    proc = subprocess.Popen(prefix + [runner] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd='/', env=env)
    out, _ = proc.communicate(timeout=300)
    return Result(proc, out, b'', 0)


def case_output(text, name):
    """The lines of one case: from '>>> name' to its status line."""
    lines = text.splitlines()
    start = lines.index('>>> ' + name)
    for i in range(start, len(lines)):
        if re.match(r'^(ok|fail|error)\t%s\t' % re.escape(name), lines[i]):
            return lines[start:i + 1]
    raise AssertionError('no status line for %s' % name)


@pytest.fixture(scope='module')
def runner(src, scratch_root):
    return make_suite(os.path.join(scratch_root, 'suite'), src)


@pytest.mark.parametrize('caller', CALLERS)
def test_local_run(caller, runner):
    r = run_suite(runner, caller=caller)
    text = r.stdout
    head = text.splitlines()[:6]
    assert [l.split('\t')[0] for l in head] == ['date:', 'xnode:', 'uname:', 'cpu:', 'isolation:',
                                                 '# local mode']
    assert head[1].startswith('xnode:\t%s@' % caller)
    assert head[4].startswith('isolation:\t%s' % ('+mountns' if caller == 'root' else '+userns'))
    assert case_output(text, 'write')[1] == "$ sh -c 'echo one > /tmp/same; echo one > /dev/shm/same'"
    # each case has its own /tmp and /dev/shm
    assert case_output(text, 'check')[2:] == ['clean', 'ok\tcheck\t' + case_output(
        text, 'check')[-1].split('\t', 2)[2]]
    # a leak is reported within its case, before its status line
    leak = case_output(text, 'leak')
    assert leak[2] == '# leaked /tmp/leaked-by-this-case'
    assert re.match(r'^ok\tleak\t\d+\.\d{3}s\t# 1t 0e 0f 0s$', leak[-1])
    assert case_output(text, 'pytest-like')[-1].endswith('\t# 5t 0e 1f 1s')
    assert case_output(text, 'pytest-like')[-1].startswith('fail\t')
    assert case_output(text, 'unittest-like')[-1].endswith('\t# 3t 1e 0f 0s')
    assert case_output(text, 'broken')[2:] == ['oops', case_output(text, 'broken')[-1]]
    assert case_output(text, 'broken')[-1].startswith('error\tbroken\t')
    assert text.endswith('\n# ran 6 test cases:  3\u00b7ok  1\u00b7fail  2\u00b7error\n')
    assert r.returncode == 1
    assert not os.path.exists('/tmp/same') and not os.path.exists('/tmp/leaked-by-this-case')


def test_list_and_run_filter(runner):
    r = run_suite(runner, ['-l'])
    assert (r.returncode, r.stdout) == (0, ''.join(name + '\n' for name, _ in CASES))
    r = run_suite(runner, ['-k', '^(write|check)$'], caller='nobody')
    assert r.returncode == 0, r
    assert re.findall(r'^>>> (.*)$', r.stdout, re.M) == ['write', 'check']
    assert r.stdout.endswith('# ran 2 test cases:  2\u00b7ok\n')
    r = run_suite(runner, ['-k', '('])
    assert r.returncode == 2 and r.stdout.count('\n') == 1
    assert r.stdout.startswith("runTestSuite: error: -k/--run '(': ")
    r = run_suite(runner, ['-l', '-k', '^(write|check)$'])
    assert (r.returncode, r.stdout) == (0, 'write\ncheck\n')
    r = run_suite(runner, ['-k', 'nomatch'])  # a typo must not pass
    assert r.returncode == 5
    assert r.stdout == ("runTestSuite: error: -k/--run 'nomatch' matches no test case (%s)\n"
                        % ', '.join(name for name, _ in CASES))


def test_help_lists_the_testnode_options(runner):
    r = run_suite(runner, ['--help'])
    assert r.returncode == 0
    # what the ERP5 test node looks for (erp5.util testnode ProcessManager):
    # only what this runner uses; a listed --firefox_bin or --xvfb_bin makes
    # it look for firefox and Xvfb builds, and fail without them
    advertised = re.findall(r'^  (--\w+)', r.stdout, re.M)
    testnode = set(['--firefox_bin', '--frontend_url', '--node_quantity', '--xvfb_bin',
                    '--project_title', '--shared_part_list', '--log_directory'])
    assert testnode & set(advertised) == set(['--project_title', '--node_quantity',
                                              '--log_directory'])
    assert set(advertised) >= set([
        '--master_url', '--revision', '--test_node_title', '--test_suite', '--test_suite_title'])
    assert 'exit status (local run): 0 when every case is ok, 1 when' in r.stdout
    # what it may pass all the same is accepted
    r = run_suite(runner, ['-k', 'check', '--firefox_bin', '/x', '--xvfb_bin', '/y',
                           '--frontend_url', 'http://f', '--shared_part_list', '/a:/b',
                           '--bt5_path', '/c'])
    assert r.returncode == 0 and re.search(r'^ok\tcheck\t', r.stdout, re.M), r
    r = run_suite(runner, ['--bogus'])
    assert (r.returncode, r.stdout) == (2, 'runTestSuite: error: unrecognized arguments: --bogus\n')


class Master(object):
    """A test node master (ERP5's portal_task_distribution), in memory."""

    def __init__(self, cancel_after=None):
        self.calls = []
        self.stopped = {}
        self.todo = []
        self.alive = True
        self.cancel_after = cancel_after
        self.server = SimpleXMLRPCServer(('127.0.0.1', 0), allow_none=True, logRequests=False)
        self.server.register_instance(self)
        self.url = 'http://127.0.0.1:%d/' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.daemon = True
        self.thread.start()

    def _dispatch(self, method, params):
        self.calls.append(method)
        return getattr(self, method)(*params)

    def getProtocolRevision(self):
        return 1

    def createTestResult(self, name, revision, test_name_list, allow_restart, test_title,
                         node_title, project_title):
        self.created = dict(revision=revision, names=test_name_list, test_title=test_title,
                            node_title=node_title, project_title=project_title)
        self.todo = list(test_name_list)
        return ['test_result_module/1', revision]

    def startUnitTest(self, test_result_path, exclude_list, node_title):
        if self.todo and self.alive:
            name = self.todo.pop(0)
            return ['test_result_module/1/%s' % name, name]
        return None

    def stopUnitTest(self, line_path, status, node_title):
        self.stopped[line_path.rsplit('/', 1)[1]] = dict(
            (k, getattr(v, 'data', v)) for k, v in status.items())
        if self.cancel_after is not None and len(self.stopped) >= self.cancel_after:
            self.alive = False

    def isTaskAlive(self, test_result_path):
        return int(self.alive)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize('caller', CALLERS)
def test_master_sees_a_run_that_was_not_isolated(caller, scratch, src):
    """userns = off (or a node without user namespaces): each case says so
    on the master, and the runner's header too."""
    runner = make_suite(scratch, src, [('fixed', "sh -c 'touch $TMPDIR/fixed-name'")],
                        extra='userns = off')
    master = Master()
    try:
        r = run_suite(runner, ['--master_url', master.url, '--revision', 'r'], caller)
    finally:
        master.stop()
    assert r.returncode == 0, r
    assert '\nisolation:\t-%s (disabled by --userns off)' % (
        'mountns' if caller == 'root' else 'userns') in r.stdout, r
    fixed = master.stopped['fixed']
    assert fixed['command'] == b"sh -c 'touch $TMPDIR/fixed-name' # not isolated (disabled " \
        b"by --userns off)", fixed
    assert fixed['stdout'].startswith(b'# not isolated (disabled by --userns off)\n'), fixed


@pytest.mark.parametrize('caller', CALLERS)
def test_master_run(caller, runner):
    master = Master()
    try:
        r = run_suite(runner, ['--master_url', master.url, '--revision', 'r1=abc',
                               '--test_node_title', 'node-1', '--test_suite', 'SUITE',
                               '--test_suite_title', 'Suite title', '--project_title', 'P',
                               '--node_quantity', '1'], caller)
    finally:
        master.stop()
    assert r.returncode == 0, r
    assert '# running for test_result_module/1\n' in r.stdout
    assert master.created == dict(revision='r1=abc', names=[n for n, _ in CASES],
                                  test_title='Suite title', node_title='node-1', project_title='P')
    assert sorted(master.stopped) == sorted(n for n, _ in CASES)
    leak = master.stopped['leak']
    assert (leak['test_count'], leak['error_count'], leak['failure_count']) == (1, 0, 0)
    assert leak['command'] == b"sh -c 'touch /tmp/leaked-by-this-case'"
    # on stdout, where nxdtest's trun printed it
    assert leak['stdout'] == b'# leaked /tmp/leaked-by-this-case\n' and leak['stderr'] == b''
    assert re.match(br'^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d$', leak['date'])
    assert 0 < leak['duration'] < 60
    assert master.stopped['pytest-like']['failure_count'] == 1
    assert master.stopped['broken']['error_count'] == 1
    assert master.stopped['broken']['stderr'] == b'oops\n'
    assert master.stopped['check']['stdout'] == b'clean\n'


def test_master_cancels_the_run(runner):
    master = Master(cancel_after=2)
    try:
        r = run_suite(runner, ['--master_url', master.url, '--revision', 'r',
                               '--test_node_title', 'n', '--test_suite', 'S',
                               '--test_suite_title', 'S'])
    finally:
        master.stop()
    assert r.returncode == 0, r
    assert sorted(master.stopped) == ['check', 'write']
    assert '# master asks to cancel test run\n' in r.stdout
    assert r.stdout.endswith(
        '# ran 2 test cases:  2\u00b7ok (run cancelled: by the master)\n')


def test_master_cancels_during_a_case(scratch, src):
    runner = make_suite(scratch, src, [('long', 'sleep 60'), ('next', 'true')])
    master = Master()
    env = dict(os.environ, RUNTESTSUITE_MASTER_POLL_INTERVAL='0.2')
    proc = subprocess.Popen([runner, '--master_url', master.url, '--test_node_title', 'n',
                             '--test_suite', 'S', '--test_suite_title', 'S'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: 'startUnitTest' in master.calls, what='the first case')
        t0 = time.time()
        master.alive = False
        out, _ = proc.communicate(timeout=60)
    finally:
        master.stop()
    assert time.time() - t0 < 10
    assert proc.returncode == 0
    assert list(master.stopped) == ['long']
    assert master.stopped['long']['error_count'] == 1  # terminated: sleep died of SIGTERM
    assert b'# master asks to cancel test run\n' in out


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_cancels_the_run(signum, scratch, src):
    ready = os.path.join(scratch, 'ready')
    runner = make_suite(scratch, src, [
        ('first', 'true'),
        ('long', "sh -c 'trap \"echo interrupted; exit 9\" INT TERM; touch /tmp/leak %s; "
                 "while :; do sleep 0.05; done'" % ready),  # the trap is set before ready
        ('never', 'true')])
    proc = subprocess.Popen([runner], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: os.path.exists(ready), what='the long case')
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    text = out.decode()
    assert proc.returncode == 1
    long = case_output(text, 'long')
    assert long[2:] == ['interrupted', '# leaked /tmp/leak', long[-1]]
    assert long[-1].startswith('error\tlong\t')
    assert '>>> never' not in text
    assert text.endswith('# ran 2 test cases:  1\u00b7ok  1\u00b7error (run cancelled: %s)\n'
                         % {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'SIGINT'}[signum])


def test_strict_makes_a_leak_an_error(scratch, src):
    runner = make_suite(scratch, src, [('leak', "sh -c 'touch /tmp/x'"), ('clean', 'true')],
                        extra='strict = true')
    r = run_suite(runner, caller='nobody')
    assert r.returncode == 1
    assert case_output(r.stdout, 'leak')[-1].startswith('error\tleak\t')
    assert case_output(r.stdout, 'clean')[-1].startswith('ok\tclean\t')


def test_log_directory_keeps_each_leak_report(scratch, runner):
    os.chmod(scratch, 0o777)
    r = run_suite(runner, ['-k', 'leak', '--log_directory', scratch], caller='nobody')
    assert r.returncode == 0, r
    import json
    with open(os.path.join(scratch, 'leak.leaks.json')) as f:
        assert json.load(f)['leaked_files'] == ['/tmp/leaked-by-this-case']


@pytest.mark.parametrize('cases, message', [
    ('', 'test-cases: missing (required, or nxdtest)'),
    ('  a/b true', "test-cases: invalid name 'a/b' (a word: letters, digits, _ . -)"),
    ('  a true\n  a false', "test-cases: name 'a' given twice"),
    ('  lonely', "test-cases: no command line for 'lonely'"),
    ("  q sh -c 'unbalanced", "test-cases: cannot split \"sh -c 'unbalanced\": No closing quotation"),
])
def test_bad_test_cases_stop_buildout(cases, message, scratch, src):
    config = buildout_section('runTestSuite', src, scratch) + SUITE.format(extra='', cases=cases)
    r = buildout(scratch, config)
    assert r.returncode != 0
    output = r.stdout + r.stderr
    assert 'Error: %s\n' % message in output, output
    assert 'Traceback' not in output
    assert not os.path.exists(os.path.join(scratch, 'bin', 'runTestSuite'))


# -- a drop-in for nxdtest ------------------------------------------------------------------

NXDTEST_FILE = r'''
import os
TestCase('unit/py', [%(python)r, '-c', 'import os; print(os.getcwd()); print("=== 2 passed, 1 skipped in 0.01s ===")'],
         cwd=%(cwd)r, summaryf=PyTest.summary)
TestCase('env/adj', ['sh', '-c', 'echo $NXD_ADJ; touch /tmp/left'], envadj={'NXD_ADJ': 'adjusted'})
def my_summary(out, err):
    return {'test_count': int(out.split()[0]), 'failure_count': 1}
TestCase('custom', ['sh', '-c', 'echo 9 tests'], summaryf=my_summary)
'''

NXDTEST_SUITE = '''
[runTestSuite]
recipe = slapos.recipe.isolatedtest:suite
wrapper-path = ${buildout:directory}/bin/runTestSuite
nxdtest = .nxdtest
'''


@pytest.fixture
def nxdtest_runner(scratch, src):
    """A runner of the recipe with `nxdtest = .nxdtest`, run in a directory
    holding a .nxdtest file, as nxdtest is."""
    workdir = os.path.join(scratch, 'project')
    os.makedirs(os.path.join(workdir, 'sub'))
    with open(os.path.join(workdir, '.nxdtest'), 'w') as f:
        f.write(NXDTEST_FILE % {'python': PYTHON, 'cwd': os.path.join(workdir, 'sub')})
    r = buildout(scratch, buildout_section('runTestSuite', src, scratch) + NXDTEST_SUITE)
    assert r.returncode == 0, r
    return os.path.join(scratch, 'bin', 'runTestSuite'), workdir


def run_in(workdir, argv, caller='root'):
    prefix = AS_NOBODY if caller == 'nobody' else []
    proc = subprocess.Popen(prefix + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=workdir)
    out, _ = proc.communicate(timeout=300)
    return Result(proc, out, b'', 0)


@pytest.mark.parametrize('caller', CALLERS)
def test_nxdtest_file(caller, nxdtest_runner):
    runner, workdir = nxdtest_runner
    r = run_in(workdir, [runner, '-l'], caller)
    assert (r.returncode, r.stdout) == (0, 'unit/py\nenv/adj\ncustom\n')  # nxdtest's names
    r = run_in(workdir, [runner, '--verbose', '-k', 'unit|env'], caller)
    text = r.stdout
    unit = case_output(text, 'unit/py')
    assert unit[2] == os.path.join(workdir, 'sub')  # cwd=
    assert re.match(r'^ok\tunit/py\t\d+\.\d{3}s\t# 3t 0e 0f 1s$', unit[-1])
    env = case_output(text, 'env/adj')
    assert env[1] == '$ sh -c echo $NXD_ADJ; touch /tmp/left # NXD_ADJ=adjusted'  # nxdtest's
    assert env[2:4] == ['adjusted', '# leaked /tmp/left']  # envadj=; the report on stdout
    assert text.endswith('\n# ran 2 test cases:  2\u00b7ok\n')
    r = run_in(workdir, [runner, '-k', 'custom'], caller)
    assert case_output(r.stdout, 'custom')[-1].endswith('\t# 9t 0e 1f 0s')  # summaryf=
    assert r.stdout.endswith('\n# ran 1 test case:  1\u00b7fail\n') and r.returncode == 1


def test_nxdtest_own_expectations(nxdtest_runner):
    """What nxdtest's own tests expect of it, of the runner."""
    runner, workdir = nxdtest_runner
    with open(os.path.join(workdir, '.nxdtest'), 'w') as f:
        f.write("TestCase('TESTNAME', ['echo', 'TEST OUPUT'])\n"
                "TestCase('BADSUMMARY', ['echo'], summaryf='error')\n")
    r = run_in(workdir, [runner, '-k', 'TESTNAME'])
    lines = r.stdout.splitlines()
    assert '>>> TESTNAME' in lines and '$ echo TEST OUPUT' in lines and 'TEST OUPUT' in lines
    assert re.match('ok\tTESTNAME\t.*s\t# 1t 0e 0f 0s', lines[-2])
    assert lines[-1] == '# ran 1 test case:  1\u00b7ok'
    r = run_in(workdir, [runner, '-k', 'BADSUMMARY'])  # a summaryf that fails: an error
    assert 'TypeError' in r.stdout and 'Traceback' in r.stdout
    assert r.stdout.endswith('# ran 1 test case:  1\u00b7error\n') and r.returncode == 1


def test_nxdtest_file_errors_are_one_line(nxdtest_runner):
    runner, workdir = nxdtest_runner
    with open(os.path.join(workdir, '.nxdtest'), 'w') as f:
        f.write("TestCase('a', ['true'])\nTestCase('a', ['false'])\n")
    r = run_in(workdir, [runner])
    assert (r.returncode, r.stdout) == (
        2, "runTestSuite: error: .nxdtest: ValueError: TestCase 'a' declared twice\n")
    os.unlink(os.path.join(workdir, '.nxdtest'))
    r = run_in(workdir, [runner, '-l'])
    assert r.returncode == 2 and r.stdout.startswith('runTestSuite: error: .nxdtest: ')
    assert r.stdout.count('\n') == 1


# -- cases in parallel, a per-case timeout, what --strict counts ----------------------------------

def test_node_quantity_runs_cases_at_once(scratch, src):
    """Cases 0 and 1, then 2 and 3, meet: each marks that it started and
    waits (20 s at most) for its partner's mark, which only a partner running
    at the same time can give (one at a time, case 0 would fail)."""
    os.chmod(scratch, 0o777)
    meet = ("sh -c 'echo start {i}; touch {d}/{i}; n=0; "
            "while [ ! -e {d}/{j} ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done; "
            "test -e {d}/{j} && echo end {i}'")
    cases = [('meet%d' % i, meet.format(i=i, j=i ^ 1, d=scratch)) for i in range(4)]
    runner = make_suite(scratch, src, cases)
    r = run_suite(runner, ['--node_quantity', '2'], caller='nobody')
    assert r.returncode == 0, r
    # each case's output whole, not interleaved
    for i in range(4):
        assert case_output(r.stdout, 'meet%d' % i)[2:4] == ['start %d' % i, 'end %d' % i]
    assert r.stdout.endswith('# ran 4 test cases:  4\u00b7ok\n')


def test_hung_case_is_stopped_by_the_timeout(scratch, src):
    runner = make_suite(scratch, src, [
        ('hung', "sh -c 'trap \"\" TERM; touch /tmp/before; (sleep 1000 &); sleep 1000'"),
        ('next', 'true')], extra='timeout = 1\nkill-timeout = 0.5')
    start = time.time()
    r = run_suite(runner, caller='nobody')
    assert time.time() - start < 60
    hung = case_output(r.stdout, 'hung')
    assert '# timed out after 1 s: stopped with SIGTERM, then SIGKILL' in hung
    assert '# leaked /tmp/before' in hung and [l for l in hung if l.startswith('# leaked pid=')]
    assert hung[-1].startswith('error\thung\t')
    assert r.stdout.endswith('# ran 2 test cases:  1\u00b7ok  1\u00b7error\n')
    r = run_suite(runner, ['--timeout', '0.5', '-k', 'next'])
    assert r.returncode == 0


def test_strict_ignores_what_the_runner_leaves_by_design(scratch, src):
    """pytest always leaves /tmp/pytest-of-USER (tmp_path): leak-ignore names it."""
    with open(os.path.join(scratch, 'test_tmp.py'), 'w') as f:
        f.write('def test_tmp(tmp_path):\n    (tmp_path / "f").write_text("x")\n')
    os.chmod(scratch, 0o777)
    case = ('pytest', '%s -m pytest -p no:cacheprovider -q %s/test_tmp.py'
            % (sys.executable, scratch))  # the tests' virtualenv, which nobody can run
    runner = make_suite(scratch, src, [case], extra='strict = true\nleak-ignore = /tmp/pytest-of-*')
    r = run_suite(runner, caller='nobody')
    assert r.returncode == 0, r
    assert '# leaked' not in r.stdout


def test_multiprocessing_resource_tracker_is_not_a_leak():
    """It exits a fraction of a millisecond after its parent."""
    from conftest import run as isolate
    for _ in range(5):
        r = isolate(['--strict', '--', PYTHON, '-c', 'from multiprocessing import '
                     'resource_tracker as r; r.ensure_running()'], caller='nobody')
        assert (r.returncode, r.report) == (0, []), r


def test_a_big_output_reaches_the_master_bounded(scratch, src):
    """A case's output is spooled to a file; the master gets its first MiB,
    a line saying how much was left out, and its last 7 MiB (the summaries
    are at the end)."""
    runner = make_suite(scratch, src, [
        ('loud', "sh -c 'echo first; head -c 20000000 /dev/zero | tr \"\\\\0\" x; echo; "
                 "echo \"==== 1 passed in 0.01s ====\"'")])
    master = Master()
    try:
        r = run_suite(runner, ['--master_url', master.url, '--revision', 'r'])
    finally:
        master.stop()
    assert r.returncode == 0
    out = master.stopped['loud']['stdout']
    assert out.startswith(b'first\nxxx') and out.endswith(b'x\n==== 1 passed in 0.01s ====\n')
    assert b'\n[... 11611427 bytes of output left out by runTestSuite ...]\n' in out
    assert len(out) < 8.1 * 2 ** 20
    assert master.stopped['loud']['test_count'] == 1
