# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""runTestSuite: run test cases one by one, each in its own isolated
environment (isolate-exec: private /tmp and /dev/shm, leak report), and
report them the way nxdtest does, locally or to an ERP5 test node's master.

The ERP5 test node runs `runTestSuite --help`, passes the optional options
listed there (`^  (--\\w+)`), and always passes --master_url --revision
--test_node_title --test_suite --test_suite_title. With --master_url, cases
are asked from and reported to the master with erp5.util.taskdistribution
(extra "testnode" of slapos.recipe.isolatedtest).

Python 2.7 and 3; run by the wrappers of the slapos.recipe.isolatedtest:suite
recipe through run_suite().
"""
import argparse
import errno
import fcntl
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

try:
    from shlex import quote
except ImportError:  # Python 2
    from pipes import quote

from slapos.recipe import isolate_exec

# How often the master is asked, during a case, whether the run was cancelled
# (as nxdtest: not too often, not to load it).
MASTER_POLL_INTERVAL = float(os.environ.get('RUNTESTSUITE_MASTER_POLL_INTERVAL', 300))
SIGNAL_NAMES = {signal.SIGINT: 'SIGINT', signal.SIGTERM: 'SIGTERM'}
EXIT_NO_CASE = 5  # -k matched nothing (as pytest's "no tests collected")
TESTNODE_OPTIONS = (
    # always passed by the test node
    ('--master_url', 'URL of the master collecting results (local run if not given)'),
    ('--revision', 'revision being tested'),
    ('--test_node_title', 'title of the test node'),
    ('--test_suite', 'name of the test suite'),
    ('--test_suite_title', 'title of the test suite'),
    # passed when listed here; accepted for compatibility, not used
    ('--project_title', 'title of the project'),
    ('--node_quantity', 'number of test cases run at once, each isolated (default 1; above 1, '
                        'the output of a case is printed whole when it ends)'),
    ('--frontend_url', 'frontend URL (accepted, not used)'),
    ('--firefox_bin', 'firefox binary (accepted, not used)'),
    ('--xvfb_bin', 'Xvfb binary (accepted, not used)'),
    ('--shared_part_list', 'shared parts (accepted, not used)'),
    ('--log_directory', 'directory where each case\'s JSON leak report is kept'),
)


def emit(line):
    """Print a line of our own on stdout, at once (UTF-8 whatever the locale)."""
    out = getattr(sys.stdout, 'buffer', sys.stdout)
    out.write(line.encode('utf-8') if not isinstance(line, bytes) else line)
    out.write(b'\n')
    out.flush()


# -- what the node is, for traceability (as nxdtest) ----------------------------

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


# -- counting tests in the output -------------------------------------------------
# Summaries compatible with nxdtest's PyTest.summary and UnitTest.summary (a
# .nxdtest file may name them): counts for the master's test_result_line.stop().

PYTEST_LAST_LINE = re.compile(
    br'^=+ .*\b(failed|passed|skipped|errors?|xfailed|xpassed|deselected|warnings?|'
    br'no tests ran)\b.* =+$')


def pytest_summary(out, err):
    """Counts from pytest's last line, e.g. '=== 1 failed, 2 passed, 1 xfailed,
    3 warnings in 0.1s ===' or '=== no tests ran in 0.01s ==='. xfailed
    counts as skipped, xpassed as passed (pytest's own verdict: a strict
    xfail that passed is reported "failed"); warnings are not tests."""
    for line in reversed(out.splitlines()):
        if PYTEST_LAST_LINE.match(line):
            break
    else:
        return {}

    def count(*words):
        return sum(int(m) for word in words
                   for m in re.findall(br'\b([0-9]+) ' + word + br'\b', line))
    summary = {'failure_count': count(b'failed'), 'error_count': count(b'errors?'),
               'skip_count': count(b'skipped', b'xfailed'),
               'expected_failures': count(b'xfailed'), 'unexpected_successes': count(b'xpassed')}
    summary['test_count'] = (summary['failure_count'] + summary['error_count'] +
                             count(b'skipped', b'xfailed', b'passed', b'xpassed'))
    return summary


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


# -- where cases come from: the master, or the local list --------------------------

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


# -- the test cases: the recipe's lines, or a .nxdtest file ---------------------------

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


# -- running the cases --------------------------------------------------------------------

class Running(object):
    """A case being run through isolate-exec, its output kept."""

    def __init__(self, case, line, argv, env, report, live):
        self.case, self.line, self.report, self.live = case, line, report, live
        self.start = time.time()
        self.out, self.err = [], []
        self.proc = subprocess.Popen(argv, env=env, cwd=case.cwd or None, stdin=DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=os.setpgrp, close_fds=True)
        self.open = {self.proc.stdout.fileno(): (self.out, _buffer(sys.stdout)),
                     self.proc.stderr.fileno(): (self.err, _buffer(sys.stderr))}

    def read(self, fd):
        data = os.read(fd, 65536)
        kept, stream = self.open[fd]
        if not data:
            del self.open[fd]
            return
        kept.append(data)
        if self.live:
            stream.write(data)
            stream.flush()

    def signal(self, signum):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signum)
            except OSError:
                pass


def _buffer(stream):
    return getattr(stream, 'buffer', stream)


try:
    DEVNULL = subprocess.DEVNULL
except AttributeError:  # Python 2
    DEVNULL = open(os.devnull, 'rb')


class Suite(object):
    """A run of test cases, each through isolate-exec, up to `quantity` at
    once (--node_quantity: isolation is what makes it safe, no shared /tmp)."""

    def __init__(self, cases, environment, tmpfs, userns, strict, kill_timeout,
                 timeout=None, ignore=(), subids='auto'):
        self.cases = dict((case.name, case) for case in cases)
        self.names = [case.name for case in cases]
        self.environment = environment
        self.strict = strict
        self.cancelled = None   # why the run stopped early
        self.running = []
        self.results = []       # status words
        # The runner's own interpreter, with the runtime's sys.path entry:
        # re-running sys.executable alone would lose buildout's sys.path (and
        # without site, as the wrapper: ~7 ms less per case).
        self.isolate_exec = isolate_exec.self_command()
        for path, options in tmpfs:
            self.isolate_exec += ['--tmpfs', '%s:%s' % (path, options)]
        self.isolate_exec += ['--userns', userns, '--kill-timeout', repr(kill_timeout),
                              '--stdout-report']
        if subids != 'auto':
            self.isolate_exec += ['--subids', subids]
        if timeout:
            self.isolate_exec += ['--timeout', repr(timeout)]
        for pattern in ignore:
            self.isolate_exec += ['--ignore', pattern]

    def on_signal(self, signum, frame):
        """SIGINT/SIGTERM: stop the running cases (their reports are still
        printed and they are reported), skip the rest."""
        self.cancelled = SIGNAL_NAMES.get(signum, 'signal %d' % signum)
        for running in self.running:
            running.signal(signum)

    def cancel_by_master(self):
        """The master says the run was cancelled: stop the running cases, skip
        the rest."""
        emit(u'# master asks to cancel test run')
        self.on_signal(signal.SIGTERM, None)
        self.cancelled = 'by the master'

    @staticmethod
    def print_header(case):
        emit(u'\n>>> %s' % case.name)
        emit(u'$ %s' % case.command())

    def start_case(self, case, line, report_dir, live):
        if live:  # one at a time: its output as it comes
            self.print_header(case)
        env = dict(case.env if case.env is not None else os.environ)
        env.update(self.environment)
        env.update(case.envadj)
        env['PYTHONUNBUFFERED'] = 'y'  # see output as it comes
        report = os.path.join(report_dir, '%d.json' % len(self.results + self.running))
        argv = self.isolate_exec + ['--report', report, '--'] + case.argv
        try:
            running = Running(case, line, argv, env, report, live)
        except OSError as e:  # e.g. its cwd does not exist
            running = None
            self.finish_failed_start(case, line, live, e)
        if running is not None:
            self.running.append(running)

    def finish_failed_start(self, case, line, live, error):
        message = ('%s: %s\n' % (case.cwd or case.argv[0], os.strerror(error.errno))).encode()
        if not live:
            self.print_header(case)
        _buffer(sys.stderr).write(message)
        status = {'test_count': 1, 'error_count': 1, 'failure_count': 0, 'skip_count': 0,
                  'command': case.command(), 'duration': 0.0, 'stdout': b'', 'stderr': message,
                  'date': time.strftime('%Y/%m/%d %H:%M:%S', time.gmtime())}
        self.report_case(case, line, status)

    def finish_case(self, running, log_directory):
        """A case ended: print it (whole, if it was not shown as it came),
        count it, tell the master."""
        running.proc.wait()
        end = time.time()
        case = running.case
        out, err = b''.join(running.out), b''.join(running.err)
        if not running.live:
            self.print_header(case)
            for stream, data in ((sys.stdout, out), (sys.stderr, err)):
                _buffer(stream).write(data)
                _buffer(stream).flush()
        status = case_status(running.proc.returncode, out, err, case.summaryf)
        problem = status.pop('summary_error', None)
        if problem:
            err += problem.encode('utf-8', 'replace')
        report = self.read_report(running.report, case.name, log_directory)
        if report.get('timed_out'):
            status['error_count'] = status['error_count'] or 1
        if self.strict and report.get('leaked'):
            status['error_count'] += 1
        status.update(command=case.command(), duration=end - running.start, stdout=out,
                      stderr=err, date=time.strftime('%Y/%m/%d %H:%M:%S', time.gmtime(end)))
        self.report_case(case, running.line, status)

    def report_case(self, case, line, status):
        word = status_word(status)
        self.results.append(word)
        emit(u'%s\t%s\t%.3fs\t# %st %se %sf %ss' % (
            word, case.name, status['duration'], status['test_count'], status['error_count'],
            status['failure_count'], status['skip_count']))
        line.stop(**status)

    @staticmethod
    def read_report(path, name, log_directory):
        try:
            with open(path) as f:
                text = f.read()
            os.unlink(path)
        except (IOError, OSError):
            return {}
        if log_directory:
            try:
                with open(os.path.join(log_directory, '%s.leaks.json'
                                       % name.replace('/', '_')), 'w') as f:
                    f.write(text)
            except (IOError, OSError) as e:
                emit(u'# cannot keep the leak report in %s: %s' % (log_directory, e.strerror))
        return json.loads(text)

    def run(self, test_result, log_directory=None, quantity=1):
        """Run what test_result hands out, up to quantity cases at once, until
        it is done or the run is cancelled. Wakes up on SIGCHLD, never waits
        for EOF of a case that exited (a leaked process could hold its
        pipes), and asks the master every MASTER_POLL_INTERVAL whether the
        run was cancelled."""
        report_dir = tempfile.mkdtemp(prefix='runTestSuite.')
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        live = quantity == 1
        more = True
        next_poll = time.time() + MASTER_POLL_INTERVAL
        try:
            while True:
                while more and self.cancelled is None and len(self.running) < quantity:
                    if self.results and not test_result.isAlive():
                        self.cancel_by_master()
                        break
                    line = test_result.start()
                    if not line:
                        more = False
                    elif line.name not in self.cases:
                        emit(u'# master asks for unknown test case %r' % line.name)
                        line.stop(test_count=1, error_count=1, failure_count=0, skip_count=0,
                                  command='', stdout=b'', stderr=b'unknown test case')
                    else:
                        self.start_case(self.cases[line.name], line, report_dir, live)
                if not self.running:
                    break
                fds = [fd for running in self.running for fd in running.open]
                exited = [r for r in self.running if r.proc.poll() is not None]
                timeout = 0 if exited else max(0, next_poll - time.time())
                try:
                    ready = select.select(fds + [wake_r], [], [], timeout)[0]
                except (select.error, OSError) as e:
                    if e.args[0] == errno.EINTR:
                        continue
                    raise
                if wake_r in ready:
                    _drain(wake_r)
                for running in self.running:
                    for fd in list(running.open):
                        if fd in ready:
                            running.read(fd)
                for running in exited:  # all it wrote before exiting has been read
                    if not [fd for fd in running.open if fd in ready]:
                        self.running.remove(running)
                        running.proc.stdout.close()
                        running.proc.stderr.close()
                        self.finish_case(running, log_directory)
                if time.time() >= next_poll:
                    next_poll = time.time() + MASTER_POLL_INTERVAL
                    if self.running and not test_result.isAlive():
                        self.cancel_by_master()
        finally:
            for running in self.running:
                running.signal(signal.SIGKILL)
            signal.set_wakeup_fd(previous_wakeup)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            shutil.rmtree(report_dir, ignore_errors=True)

    def summary(self):
        """nxdtest's line: '# ran 7 test cases:  5·ok  1·fail  1·error' (the
        counts that are not 0), '# ran 1 test case:  1·ok', '# ran 0 test cases.'"""
        text = u'# ran %d test case' % len(self.results)
        if not self.results:
            text += u's.'
        else:
            text += u's:' if len(self.results) > 1 else u':'
            for word in ('ok', 'fail', 'error'):
                if self.results.count(word):
                    text += u'  %d\u00b7%s' % (self.results.count(word), word)
        if self.cancelled:
            text += u' (run cancelled: %s)' % self.cancelled
        return text


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except OSError:
        pass


# -- command line ------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """One line, exit 2 (argparse would print the usage too)."""
        sys.stderr.write('%s: error: %s\n' % (self.prog, message))
        sys.exit(2)


def parse_args(argv, prog):
    parser = ArgumentParser(
        prog=prog, description='Run the test cases of this software release, each '
        'with its own private /tmp and /dev/shm, and report what they leaked.')
    for option, text in TESTNODE_OPTIONS:
        parser.add_argument(option, help=text)
    parser.add_argument('--timeout', metavar='SECONDS',
                        help='stop a case that runs longer (its leak report is printed, its '
                        'processes killed) and count it in error (default: the recipe\'s)')
    parser.add_argument('--verbose', action='store_true',
                        help='log the exchanges with the master (as nxdtest)')
    local = parser.add_argument_group('local run')
    local.add_argument('-l', '--list', action='store_true', help='list the test cases and exit')
    local.add_argument('-k', '--run', metavar='REGEX',
                       help='run only the test cases whose names match REGEX')
    args = parser.parse_args(argv)
    if args.master_url and (args.list or args.run):
        parser.error('-l/--list and -k/--run are for local runs, not with --master_url')
    if args.run:
        try:
            re.compile(args.run)
        except re.error as e:
            parser.error('-k/--run %r: %s' % (args.run, e))
    if args.log_directory and not os.path.isdir(args.log_directory):
        parser.error('--log_directory %s: not a directory' % args.log_directory)
    try:
        args.node_quantity = int(args.node_quantity or 1)
        assert args.node_quantity >= 1
    except (ValueError, AssertionError):
        parser.error('--node_quantity %r: must be a number >= 1' % args.node_quantity)
    if args.timeout is not None:
        try:
            args.timeout = isolate_exec.check_timeout(args.timeout, '--timeout')
        except isolate_exec.UsageError as e:
            parser.error(str(e))
    return args


def connect_master(args, names):
    """-> test result from the master for this revision, or None if it has
    nothing to run."""
    try:
        from erp5.util.taskdistribution import TaskDistributor
    except ImportError as e:
        emit(u'# --master_url needs erp5.util (extra "testnode" of '
             u'slapos.recipe.isolatedtest): %s' % e)
        sys.exit(isolate_exec.EXIT_FAILURE)
    tool = TaskDistributor(portal_url=args.master_url)
    return tool.createTestResult(
        revision=args.revision or 'dummy_revision', test_name_list=names,
        node_title=args.test_node_title,
        test_title=args.test_suite_title or args.test_suite,
        project_title=args.project_title)


def run_suite(cases=None, environment=None, tmpfs=(), userns='auto', strict=False,
              kill_timeout=5.0, nxdtest=None, timeout=None, ignore=(), subids='auto'):
    """Entry point of the runTestSuite wrappers generated by the
    slapos.recipe.isolatedtest:suite recipe. cases: [(name, argv)], or
    nxdtest: the path of a .nxdtest file, read when the runner starts
    (relative: to its working directory, as nxdtest reads ./.nxdtest).
    -> exit status: local run, 0 if every case is ok, else 1; 5 if -k
    matches nothing; 2 for a bad command line or .nxdtest file; master run,
    0 once results are delivered"""
    prog = os.path.basename(sys.argv[0])
    args = parse_args(sys.argv[1:], prog)
    if nxdtest is not None:
        try:
            cases = load_nxdtest(nxdtest)
        except Exception as e:  # the file is the tested project's: any error
            sys.stderr.write('%s: error: %s: %s: %s\n' % (prog, nxdtest, type(e).__name__, e))
            return 2
    else:
        cases = [Case(name, argv) for name, argv in cases]
    if args.verbose:
        import logging
        logging.basicConfig(level=logging.DEBUG,
                            format='%(asctime)s - %(levelname)s - %(message)s')
    suite = Suite(cases, environment or {}, tmpfs, userns, strict, kill_timeout,
                  args.timeout or timeout, ignore, subids)
    selected = [name for name in suite.names if not args.run or re.search(args.run, name)]
    if not selected:  # a typo must not pass: pytest exits 5 when it collects nothing
        sys.stderr.write('%s: error: -k/--run %r matches no test case (%s)\n'
                         % (prog, args.run, ', '.join(suite.names)))
        return EXIT_NO_CASE
    if args.list:
        for name in selected:
            emit(name)
        return 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, suite.on_signal)
    system_info()
    if args.master_url:
        test_result = connect_master(args, suite.names)
        if test_result is None:
            emit(u'# master says: nothing to run')
            return 0
        emit(u'# running for %s' % test_result.test_result_path)
    else:
        emit(u'# local mode')
        test_result = LocalTestResult(suite.names, args.run)
    try:
        suite.run(test_result, args.log_directory, args.node_quantity)
    finally:
        emit(suite.summary())  # right after the last status line, as nxdtest
    if args.master_url:
        return 0
    return 0 if not suite.cancelled and set(suite.results) <= set(['ok']) else 1
