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
import os
import re
import signal
import sys

from slapos.recipe import isolate_exec
from slapos.recipe.runtestsuite.cases import Case, load_nxdtest
from slapos.recipe.runtestsuite.output import emit, system_info
from slapos.recipe.runtestsuite.results import LocalTestResult, connect_master
from slapos.recipe.runtestsuite.scheduler import Suite

EXIT_NO_CASE = 5  # -k matched nothing (as pytest's "no tests collected")
TESTNODE_OPTIONS = (
    # always passed by the test node
    ('--master_url', 'URL of the master collecting results (local run if not given)'),
    ('--revision', 'revision being tested'),
    ('--test_node_title', 'title of the test node'),
    ('--test_suite', 'name of the test suite'),
    ('--test_suite_title', 'title of the test suite'),
    # passed when listed by --help (erp5.util's UnitTestRunner: '^  (--\\w+)')
    ('--project_title', 'title of the project'),
    ('--node_quantity', 'number of test cases run at once, each isolated (default 1; above 1, '
                        'the output of a case is printed whole when it ends)'),
    ('--log_directory', 'directory where each case\'s JSON leak report is kept'),
    # accepted, not listed: they mean nothing here, and the test node looks
    # up what a listed one names before running anything (--firefox_bin and
    # --xvfb_bin: firefox and Xvfb builds in its software list, or it stops)
    ('--frontend_url', None),
    ('--firefox_bin', None),
    ('--xvfb_bin', None),
    ('--shared_part_list', None),
    ('--bt5_path', None),  # passed whatever --help says, with a bt5 repository
)
EXIT_STATUSES = """\
exit status (local run): 0 when every case is ok, 1 when one is not or the
run was cancelled, 2 for a bad command line or .nxdtest file, 5 when -k
matches no case; with --master_url, 0 once the results are delivered.
"""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """One line, exit 2 (argparse would print the usage too)."""
        sys.stderr.write('%s: error: %s\n' % (self.prog, message))
        sys.exit(2)


def parse_args(argv, prog):
    parser = ArgumentParser(
        prog=prog, description='Run the test cases of this software release, each '
        'with its own private /tmp and /dev/shm, and report what they leaked.',
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    for option, text in TESTNODE_OPTIONS:
        parser.add_argument(option, help=text if text else argparse.SUPPRESS)
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


def run_suite(cases=None, environment=None, tmpfs=(), userns='auto', strict=False,
              kill_timeout=5.0, nxdtest=None, timeout=None, ignore=(), subids='auto',
              ipc='private'):
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
                  args.timeout or timeout, ignore, subids, ipc)
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
    emit(u'isolation:\t%s' % suite.probe())  # what each case gets here
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
