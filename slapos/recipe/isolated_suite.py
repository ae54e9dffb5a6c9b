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
    ('--node_quantity', 'number of test nodes (accepted, cases run one at a time)'),
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

def pytest_summary(out, err):
    """Counts from pytest's last line: '=== 1 failed, 2 passed in 0.1s ==='."""
    for line in reversed(out.splitlines()):
        if re.match(br'^=+ .*\b(failed|passed|skipped|errors?|no tests ran)\b.* =+$', line):
            break
    else:
        return {}

    def count(word):
        m = re.search(br'\b([0-9]+) ' + word + br'\b', line)
        return int(m.group(1)) if m else 0
    summary = {'failure_count': count(b'failed'), 'skip_count': count(b'skipped'),
               'error_count': count(b'errors?')}
    summary['test_count'] = (sum(summary.values()) + count(b'passed') + count(b'xfailed') +
                             count(b'xpassed'))
    return summary


def unittest_summary(out, err):
    """Counts from unittest's 'Ran N tests' and 'FAILED (failures=1, ...)'."""
    text = err + b'\n' + out
    ran = re.findall(br'^Ran (\d+) tests? in ', text, re.M)
    if not ran:
        return {}
    summary = {'test_count': int(ran[-1]), 'failure_count': 0, 'error_count': 0,
               'skip_count': 0}
    status = re.findall(br'^(?:OK|FAILED)(?: \((.*)\))?$', text, re.M)
    for item in (status[-1] if status else b'').split(b','):
        key, _, value = item.strip().partition(b'=')
        key = {b'failures': 'failure_count', b'errors': 'error_count',
               b'skipped': 'skip_count'}.get(key)
        if key and value.isdigit():
            summary[key] = int(value)
    return summary


def case_status(returncode, out, err):
    """The testnode's counts for a case: pytest's or unittest's when they are
    recognised, else 1 test, in error if the command failed."""
    status = {'test_count': 1, 'error_count': int(returncode != 0), 'failure_count': 0,
              'skip_count': 0}
    status.update(pytest_summary(out, err) or unittest_summary(out, err))
    return status


def status_word(status):
    if status['error_count']:
        return 'error'
    return 'fail' if status['failure_count'] else 'ok'


# -- where cases come from: the master, or the local list --------------------------

class LocalTestResult(object):
    """Without --master_url: the cases in order, those matching --run."""

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


# -- running one case ------------------------------------------------------------------

class Suite(object):
    """A run of test cases, each through isolate-exec."""

    def __init__(self, cases, environment, tmpfs, userns, strict, kill_timeout):
        self.cases = dict(cases)
        self.names = [name for name, _ in cases]
        self.environment = environment
        self.strict = strict
        self.cancelled = None   # why the run stopped early
        self.current = None     # the isolate-exec process of the running case
        self.results = []       # status words
        # The runner's own interpreter, with the runtime's sys.path entry:
        # re-running sys.executable alone would lose buildout's sys.path (and
        # without site, as the wrapper: ~7 ms less per case).
        root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(isolate_exec.__file__))))
        self.isolate_exec = [sys.executable, '-S', '-c', 'import sys\nsys.path[0:0] = %r\n%s'
                             'from slapos.recipe.isolate_exec import console_main\nconsole_main()'
                             % ([root], isolate_exec.NAMESPACE_SETUP)]
        for path, options in tmpfs:
            self.isolate_exec += ['--tmpfs', '%s:%s' % (path, options)]
        self.isolate_exec += ['--userns', userns, '--kill-timeout', repr(kill_timeout)]

    def on_signal(self, signum, frame):
        """SIGINT/SIGTERM: stop the current case (its report is still printed),
        skip the rest."""
        self.cancelled = SIGNAL_NAMES.get(signum, 'signal %d' % signum)
        if self.current is not None and self.current.poll() is None:
            try:
                os.kill(self.current.pid, signum)
            except OSError:
                pass

    def cancel_by_master(self):
        """The master says the run was cancelled: stop the current case, if
        any, and skip the rest."""
        emit(u'# master asks to cancel test run')
        self.on_signal(signal.SIGTERM, None)
        self.cancelled = 'by the master'

    def run_case(self, name, test_result, report_dir, log_directory):
        """Run one case, tee its output, return what the master is told."""
        argv = self.cases[name]
        command = ' '.join(quote(a) for a in argv)
        emit(u'\n>>> %s' % name)
        emit(u'$ %s' % command)
        report = os.path.join(report_dir, 'report.json')
        env = dict(os.environ, PYTHONUNBUFFERED='y')  # see output as it comes
        env.update(self.environment)
        start = time.time()
        out, err, returncode = self.tee(self.isolate_exec + ['--report', report, '--'] + argv,
                                        env, test_result)
        end = time.time()
        status = case_status(returncode, out, err)
        leaked = self.read_report(report, name, log_directory)
        if self.strict and leaked:
            status['error_count'] += 1
        status.update(command=command, duration=end - start, stdout=out, stderr=err,
                      date=time.strftime('%Y/%m/%d %H:%M:%S', time.gmtime(end)))
        word = status_word(status)
        self.results.append(word)
        emit(u'%s\t%s\t%.3fs\t# %dt %de %df %ds' % (
            word, name, status['duration'], status['test_count'], status['error_count'],
            status['failure_count'], status['skip_count']))
        return status

    @staticmethod
    def read_report(path, name, log_directory):
        try:
            with open(path) as f:
                text = f.read()
            os.unlink(path)
        except (IOError, OSError):
            return False
        if log_directory:
            try:
                with open(os.path.join(log_directory, '%s.leaks.json' % name), 'w') as f:
                    f.write(text)
            except (IOError, OSError) as e:
                emit(u'# cannot keep the leak report in %s: %s' % (log_directory, e.strerror))
        return json.loads(text).get('leaked', False)

    def tee(self, argv, env, test_result):
        """Run argv, copying its stdout and stderr to ours as they come and
        keeping them. -> (stdout, stderr, exit status). Wakes up on SIGCHLD,
        never waits for EOF (a leaked process could hold the pipes), and asks
        the master every MASTER_POLL_INTERVAL whether the run was cancelled."""
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        devnull = open(os.devnull, 'rb')
        try:
            # own process group: a terminal's Ctrl-C reaches us only, and we
            # forward it once
            proc = subprocess.Popen(argv, env=env, stdin=devnull, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, preexec_fn=os.setpgrp,
                                    close_fds=True)
            self.current = proc
            if self.cancelled:
                self.on_signal(signal.SIGTERM, None)
            outputs = {proc.stdout.fileno(): (getattr(sys.stdout, 'buffer', sys.stdout), []),
                       proc.stderr.fileno(): (getattr(sys.stderr, 'buffer', sys.stderr), [])}
            open_fds = set(outputs)
            next_poll = time.time() + MASTER_POLL_INTERVAL
            while open_fds:
                exited = proc.poll() is not None
                timeout = 0 if exited else max(0, next_poll - time.time())
                try:
                    ready = select.select(list(open_fds) + [wake_r], [], [], timeout)[0]
                except (select.error, OSError) as e:
                    if e.args[0] == errno.EINTR:
                        continue
                    raise
                if wake_r in ready:
                    _drain(wake_r)
                for fd in ready:
                    if fd in open_fds:
                        data = os.read(fd, 65536)
                        if data:
                            stream, kept = outputs[fd]
                            stream.write(data)
                            stream.flush()
                            kept.append(data)
                        else:
                            open_fds.discard(fd)
                if exited and not [fd for fd in ready if fd in open_fds]:
                    break  # all that was written before exiting has been read
                if not exited and time.time() >= next_poll:
                    next_poll = time.time() + MASTER_POLL_INTERVAL
                    if not test_result.isAlive():
                        self.cancel_by_master()
            returncode = proc.wait()
            out = b''.join(outputs[proc.stdout.fileno()][1])
            err = b''.join(outputs[proc.stderr.fileno()][1])
            proc.stdout.close()
            proc.stderr.close()
            return out, err, returncode
        finally:
            self.current = None
            devnull.close()
            signal.set_wakeup_fd(previous_wakeup)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)

    def run(self, test_result, log_directory=None):
        """Run what test_result hands out until it is done or we are cancelled."""
        report_dir = tempfile.mkdtemp(prefix='runTestSuite.')
        try:
            while self.cancelled is None:
                if self.results and not test_result.isAlive():
                    self.cancel_by_master()
                    break
                line = test_result.start()
                if not line:
                    break
                if line.name not in self.cases:
                    emit(u'# master asks for unknown test case %r' % line.name)
                    line.stop(test_count=1, error_count=1, failure_count=0, skip_count=0,
                              command='', stdout=b'', stderr=b'unknown test case')
                    continue
                line.stop(**self.run_case(line.name, test_result, report_dir, log_directory))
        finally:
            shutil.rmtree(report_dir, ignore_errors=True)

    def summary(self):
        counts = dict((word, self.results.count(word)) for word in ('ok', 'fail', 'error'))
        text = u'# ran %d test case%s: %d\u00b7ok %d\u00b7fail %d\u00b7error' % (
            len(self.results), '' if len(self.results) == 1 else 's',
            counts['ok'], counts['fail'], counts['error'])
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


def run_suite(cases, environment=None, tmpfs=(), userns='auto', strict=False,
              kill_timeout=5.0):
    """Entry point of the runTestSuite wrappers generated by the
    slapos.recipe.isolatedtest:suite recipe. cases: [(name, argv)].
    -> exit status: local run, 0 if every case is ok, else 1; master run, 0
    once results are delivered"""
    prog = os.path.basename(sys.argv[0])
    args = parse_args(sys.argv[1:], prog)
    suite = Suite(cases, environment or {}, tmpfs, userns, strict, kill_timeout)
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
        suite.run(test_result, args.log_directory)
    finally:
        emit(u'\n' + suite.summary())
    if args.master_url:
        return 0
    return 0 if not suite.cancelled and set(suite.results) <= set(['ok']) else 1
