# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Running the cases: each through isolate-exec (with the runner's own
interpreter), up to --node_quantity at once; their output shown as it comes
(one at a time) or whole at their end; SIGINT/SIGTERM and the master's
cancellation stop them; their JSON leak reports read (and kept in
--log_directory); each result counted and told to the master; nxdtest's
summary line.

Knows a case only through the Case object it is given, and the runtime only
through isolate-exec's command line; imports counting, output and
isolate_exec (self_command).
"""
import errno
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from slapos.recipe import isolate_exec
from slapos.recipe.runtestsuite.counting import case_status, status_word
from slapos.recipe.runtestsuite.output import _buffer, emit

# How often the master is asked, during a case, whether the run was cancelled
# (as nxdtest: not too often, not to load it).
MASTER_POLL_INTERVAL = float(os.environ.get('RUNTESTSUITE_MASTER_POLL_INTERVAL', 300))
SIGNAL_NAMES = {signal.SIGINT: 'SIGINT', signal.SIGTERM: 'SIGTERM'}


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


try:
    DEVNULL = subprocess.DEVNULL
except AttributeError:  # Python 2
    DEVNULL = open(os.devnull, 'rb')


class Suite(object):
    """A run of test cases, each through isolate-exec, up to `quantity` at
    once (--node_quantity: isolation is what makes it safe, no shared /tmp)."""

    def __init__(self, cases, environment, tmpfs, userns, strict, kill_timeout,
                 timeout=None, ignore=(), subids='auto', ipc='private'):
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
        if ipc != 'private':
            self.isolate_exec += ['--ipc', ipc]
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
