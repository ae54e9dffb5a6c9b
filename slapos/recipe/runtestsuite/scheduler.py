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
import signal
import subprocess
import sys
import tempfile
import time

from slapos.recipe import isolate_exec
from slapos.recipe.isolation.kernel import PR_SET_PDEATHSIG, prctl
from slapos.recipe.runtestsuite.counting import case_status, status_word
from slapos.recipe.runtestsuite.output import _buffer, emit

# How often the master is asked, during a case, whether the run was cancelled
# (as nxdtest: not too often, not to load it).
MASTER_POLL_INTERVAL = float(os.environ.get('RUNTESTSUITE_MASTER_POLL_INTERVAL', 300))
SIGNAL_NAMES = {signal.SIGINT: 'SIGINT', signal.SIGTERM: 'SIGTERM'}


# A case's output is spooled to a file, whatever its size; what is kept of
# it to count its tests and for the master is at most this many bytes per
# stream: its beginning and, mostly, its end (where the summaries are).
KEPT_OUTPUT = 8 << 20
KEPT_HEAD = 1 << 20


class Running(object):
    """A case being run through isolate-exec. Its output goes to unlinked
    files (the runner's memory does not grow with it) and its JSON report
    comes through an inherited descriptor of another unlinked file: no path
    a case could reach (replace with a directory or a FIFO), nothing left in
    TMPDIR if the runner is killed."""

    def __init__(self, case, line, isolate_exec, env, live):
        self.case, self.line, self.live = case, line, live
        self.start = time.time()
        self.report = tempfile.TemporaryFile()
        self.spools = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
        argv = isolate_exec + ['--report-fd', str(self.report.fileno()), '--'] + case.argv
        try:
            self.proc = spawn(argv, self.report.fileno(), env=env, cwd=case.cwd or None,
                              stdin=DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:
            self.close()
            raise
        self.open = {self.proc.stdout.fileno(): (self.spools[0], _buffer(sys.stdout)),
                     self.proc.stderr.fileno(): (self.spools[1], _buffer(sys.stderr))}

    def read(self, fd):
        data = os.read(fd, 65536)
        spool, stream = self.open[fd]
        if not data:
            del self.open[fd]
            return
        spool.write(data)
        if self.live:
            stream.write(data)
            stream.flush()

    def output(self):
        """-> (stdout, stderr) as kept: whole up to KEPT_OUTPUT bytes each,
        else their first KEPT_HEAD bytes, a line saying how much was left
        out, and their end"""
        kept = []
        for spool in self.spools:
            size = spool.tell()
            spool.seek(0)
            if size <= KEPT_OUTPUT:
                kept.append(spool.read())
                continue
            head = spool.read(KEPT_HEAD)
            tail_size = KEPT_OUTPUT - KEPT_HEAD
            spool.seek(size - tail_size)
            kept.append(head + b'\n[... %d bytes of output left out by runTestSuite ...]\n'
                        % (size - KEPT_HEAD - tail_size) + spool.read(tail_size))
        return kept

    def replay(self):
        """Print the whole output, from the spools (a case not shown live)."""
        for spool, stream in zip(self.spools, (sys.stdout, sys.stderr)):
            spool.seek(0)
            out = _buffer(stream)
            while True:
                chunk = spool.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
            out.flush()

    def read_report(self):
        """-> the JSON report isolate-exec wrote (text), or None"""
        self.report.seek(0)
        text = self.report.read()
        return text.decode('utf-8') if text else None

    def close(self):
        for f in [self.report] + self.spools:
            f.close()

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


def spawn(argv, keep_fd, **kw):
    """Popen argv with keep_fd, and no other descriptor of ours but the
    standard streams, in a process group of its own, to be killed
    (SIGKILL) when the runner dies: the ERP5 test node SIGKILLs it on
    cancellation and timeouts, and the master then hands the case out again:
    an orphaned run would go on beside its reissue. isolate-exec killed
    takes its run with it."""
    parent = os.getpid()

    def prepare():
        os.setpgrp()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the runner died before prctl
            os._exit(1)
    if sys.version_info[0] >= 3:
        return subprocess.Popen(argv, pass_fds=(keep_fd,), close_fds=True, preexec_fn=prepare,
                                **kw)
    # Python 2 has neither pass_fds nor a way to keep one descriptor
    # (close_fds closes all before preexec_fn): every other one is made
    # close-on-exec, keep_fd inheritable, for this Popen only.
    for name in os.listdir('/proc/self/fd'):
        fd = int(name)
        if fd > 2:
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
                cloexec = flags | fcntl.FD_CLOEXEC if fd != keep_fd else flags & ~fcntl.FD_CLOEXEC
                fcntl.fcntl(fd, fcntl.F_SETFD, cloexec)
            except (IOError, OSError):  # the listing's own descriptor
                pass
    try:
        return subprocess.Popen(argv, close_fds=False, preexec_fn=prepare, **kw)
    finally:
        fcntl.fcntl(keep_fd, fcntl.F_SETFD, fcntl.fcntl(keep_fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)


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

    def probe(self):
        """-> isolate-exec --probe's line, with the cases' options"""
        proc = subprocess.Popen(self.isolate_exec + ['--probe'], stdin=DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return proc.communicate()[0].decode('utf-8', 'replace').strip()

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

    def start_case(self, case, line, live):
        if live:  # one at a time: its output as it comes
            self.print_header(case)
        env = dict(case.env if case.env is not None else os.environ)
        env.update(self.environment)
        env.update(case.envadj)
        env['PYTHONUNBUFFERED'] = 'y'  # see output as it comes
        try:
            running = Running(case, line, self.isolate_exec, env, live)
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
        try:
            if not running.live:
                self.print_header(case)
                running.replay()
            out, err = running.output()
            report = self.keep_report(running.read_report(), case.name, log_directory)
        finally:
            running.close()
        status = case_status(running.proc.returncode, out, err, case.summaryf)
        problem = status.pop('summary_error', None)
        if problem:
            err += problem.encode('utf-8', 'replace')
        if report.get('timed_out'):
            status['error_count'] = status['error_count'] or 1
        if self.strict and report.get('leaked'):
            status['error_count'] += 1
        command = case.command()
        if report and not report.get('isolated'):
            # what the master shows of the case says so, and its output starts with it
            note = '# not isolated (%s)' % report.get('reason')
            command += ' ' + note
            out = note.encode('utf-8') + b'\n' + out
        status.update(command=command, duration=end - running.start, stdout=out,
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
    def keep_report(text, name, log_directory):
        """A case's JSON report: kept in log_directory if given. -> the report"""
        if not text:  # isolate-exec could not write it (a usage error...)
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
                        self.start_case(self.cases[line.name], line, live)
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
                running.close()
            signal.set_wakeup_fd(previous_wakeup)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)

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
