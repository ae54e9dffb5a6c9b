# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""zc.buildout recipes generating isolated test runners (see README).

The recipes only read and check options and write thin wrapper scripts: all
behaviour lives in slapos.recipe.isolate_exec, which the wrappers call with
literal arguments.
"""
import glob
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import zc.buildout
import zc.buildout.easy_install

from slapos.recipe import isolate_exec
from slapos.recipe.isolation.mounts import TMPFS_OPTIONS

DIST = 'slapos.recipe.isolatedtest'


def _split_lines(value):
    return [line.strip() for line in (value or '').splitlines() if line.strip()]


def option_error(option, message):
    return zc.buildout.UserError('%s: %s' % (option, message))


def checked(check, *args):
    """Run one of isolate_exec's checks of a value; the UsageError it raises,
    which names the option, becomes buildout's UserError."""
    try:
        return check(*args)
    except isolate_exec.UsageError as e:
        raise zc.buildout.UserError(str(e))


def read_absolute_path(options, option, required=False):
    """An option holding an absolute path. -> normalized path, or None"""
    value = options.get(option, '').strip()
    if not value:
        if required:
            raise option_error(option, 'missing (required)')
        return None
    if not os.path.isabs(value):
        raise option_error(option, 'path %r must be absolute' % value)
    return os.path.normpath(value)


def read_choice(options, option, choices, default):
    value = options.get(option, default).strip()
    if value not in choices:
        raise option_error(option, 'invalid value %r (%s)' % (value, ' or '.join(choices)))
    return value


def write_file(path, text, mode, logger):
    """Write text to path atomically, only if its content or mode changed
    (no IO for buildout's updates). -> True if it was written"""
    try:
        with open(path) as f:
            changed = f.read() != text or os.stat(path).st_mode & 0o7777 != mode
    except (IOError, OSError):
        changed = True
    if changed:
        tmp = '%s.%d.tmp' % (path, os.getpid())
        with open(tmp, 'w') as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        logger.info('Generated %r.', path)
    return changed


def working_set(buildout, requirements):
    """The eggs of requirements, as zc.recipe.egg gets them: offline (as
    slapgrid runs instance buildouts, and SlapOS's testnode too), only what
    is installed in the eggs and develop-eggs directories, never asking an
    index; otherwise installed into the eggs directory if missing."""
    options = buildout['buildout']
    if options.get('offline') == 'true':
        eggs = options['eggs-directory']
        # zc.buildout >= 3 installs what it built from an sdist (through
        # pip) as an .egg directory holding a .dist-info, not an EGG-INFO:
        # pkg_resources finds such a distribution only when that directory
        # itself is on the path, as zc.buildout's own installer puts it.
        built = sorted(set(os.path.dirname(info) for info in
                           glob.glob(os.path.join(eggs, '*.egg', '*.dist-info'))))
        return zc.buildout.easy_install.working_set(
            requirements, sys.executable,
            [options['develop-eggs-directory'], eggs] + built)
    # eggs-directory as destination (zc.buildout 3 finds its pip-made eggs there only)
    return zc.buildout.easy_install.install(
        requirements, options['eggs-directory'],
        links=options.get('find-links', '').split(), index=options.get('index'),
        path=[options['develop-eggs-directory']],
        newest=options.get('newest') == 'true',
        allow_hosts=tuple(options.get('allow-hosts', '*').split()))


class BaseRecipe(object):
    """Options shared by the wrapper and the suite recipes; each is read and
    checked once, here, and bad input raises UserError naming the option.

    :param str wrapper-path: absolute path of the script to write (required)
    :param lines environment: ``KEY = VALUE`` lines added to the environment
    :param lines private-tmpfs: ``<size> <path>`` lines (the syntax of
        slapos.cookbook's wrapper); /tmp and /dev/shm are always private, a
        line for one of them sets its size, other paths get their own tmpfs
    :param str userns: auto (default), require or off, as isolate-exec --userns
    :param str subids: auto (default) or off, as isolate-exec --subids: map
        the test user's subordinate ids (/etc/subuid) where the node has them
    :param str ipc: private (default) or host, as isolate-exec --ipc: System V
        IPC and POSIX message queues of the run's own, or the host's
    :param bool strict: true or false (default): exit non-zero on leaks
    :param float kill-timeout: seconds between SIGTERM and SIGKILL for leaked
        processes (default 5)
    :param float timeout: stop the command (a case) after this many seconds,
        as isolate-exec --timeout (default: none)
    :param lines leak-ignore: absolute glob patterns of leaked paths not to
        report, e.g. /tmp/pytest-of-*, as isolate-exec --ignore
    :param str leak-report: absolute path of the JSON report to write
    :param str python: interpreter of the wrapper (default: buildout's own)
    """

    def __init__(self, buildout, name, options):
        self.buildout, self.name, self.options = buildout, name, options
        self.logger = logging.getLogger(name)
        self.wrapper_path = read_absolute_path(options, 'wrapper-path', required=True)
        self.environment = self._environment()
        self.tmpfs = self._private_tmpfs()
        self.userns = read_choice(options, 'userns', ('auto', 'require', 'off'), 'auto')
        self.subids = read_choice(options, 'subids', ('auto', 'off'), 'auto')
        self.ipc = read_choice(options, 'ipc', ('private', 'host'), 'private')
        self.strict = read_choice(options, 'strict', ('false', 'true'), 'false') == 'true'
        self.kill_timeout = self._kill_timeout()
        self.timeout = self._timeout()
        self.ignore = self._leak_ignore()
        self.leak_report = read_absolute_path(options, 'leak-report')
        self.python = read_absolute_path(options, 'python') or sys.executable

    _error = staticmethod(option_error)

    def _environment(self):
        environment = {}
        for line in _split_lines(self.options.get('environment')):
            key, eq, value = line.partition('=')
            key = key.strip()
            if not eq or not key or any(c in key for c in ' \t\0'):
                raise self._error('environment', 'invalid line %r (expected KEY = VALUE)' % line)
            environment[key] = value.strip()
        return environment

    def _private_tmpfs(self):
        specs = []
        for line in _split_lines(self.options.get('private-tmpfs')):
            try:
                size, path = line.split(None, 1)
            except ValueError:
                raise self._error('private-tmpfs', 'failed to split %r into size and path' % line)
            if not TMPFS_OPTIONS['size'](size):
                raise self._error('private-tmpfs', 'invalid size %r' % size)
            if not size.strip('0kKmMgGtTpPeE%'):  # tmpfs: size=0 is no limit at all
                raise self._error('private-tmpfs', 'size %r for %s: no limit; give a size'
                                  % (size, path))
            specs.append((path, 'size=' + size))
        checked(isolate_exec.make_tmpfs_table, specs, 'private-tmpfs')
        return specs

    def _timeout(self):
        value = self.options.get('timeout', '').strip()
        if not value:
            return None
        return checked(isolate_exec.check_timeout, value, 'timeout')

    def _leak_ignore(self):
        return [checked(isolate_exec.check_ignore, p, 'leak-ignore')
                for p in _split_lines(self.options.get('leak-ignore'))]

    def _optional(self):
        """The last arguments, subids and ipc, when not their defaults
        (wrappers written without them stay as they were)"""
        if self.ipc != 'private':
            return self.subids, self.ipc
        return (self.subids,) if self.subids != 'auto' else ()

    def _kill_timeout(self):
        value = self.options.get('kill-timeout', '5').strip()
        return checked(isolate_exec.check_kill_timeout, value, 'kill-timeout')

    def _command_line(self, option, value):
        try:
            argv = shlex.split(value)
        except ValueError as e:
            raise self._error(option, 'cannot split %r: %s' % (value, e))
        if not argv:
            raise self._error(option, 'missing (required)')
        return argv

    def write_wrapper(self, function, *args):
        """Write wrapper-path: a script that calls isolate_exec's function with
        literal arguments, with sys.path holding exactly the eggs it needs
        (zc.buildout's working set and script template). It is rewritten only
        if its content changed. -> [path]"""
        directory, name = os.path.split(self.wrapper_path)
        if not os.path.isdir(directory):
            # as buildout's bin-directory: a missing directory is created,
            # if its parent exists (a partition's bin/, next to slapgrid's sbin/)
            if not os.path.isdir(os.path.dirname(directory)):
                raise self._error('wrapper-path', 'directory %s does not exist' % directory)
            os.mkdir(directory)
        if not os.path.exists(self.python):
            raise self._error('python', '%s does not exist' % self.python)
        text = self._script_text(name, function, args,
                                 working_set(self.buildout, [self.requirement]))
        self._import_runtime(text)
        write_file(self.wrapper_path, text, 0o755, self.logger)
        return [self.wrapper_path]

    def _import_runtime(self, text):
        """Run the wrapper's text up to its call (its interpreter, -S, as a
        module not named __main__): this checks that it imports the runtime,
        and writes the runtime's byte-code, which the test user may not be
        allowed to write later (a develop egg is not byte-compiled, and the
        software's files are not the instance user's): without it every start
        would compile the module again (~14 ms)."""
        env = dict(os.environ)
        env.pop('PYTHONDONTWRITEBYTECODE', None)
        proc = subprocess.Popen(
            [self.python, '-S', '-c', '__name__ = "isolatedtest-check"\n' + text],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        _, err = proc.communicate()
        if proc.returncode:
            reason = (err.decode('utf-8', 'replace').strip().splitlines() or ['exit status %d'
                      % proc.returncode])[-1]
            raise self._error('python', '%s cannot import %s: %s'
                              % (self.python, self.module, reason))

    def _script_text(self, name, function, args, working_set):
        # zc.buildout writes scripts for its own interpreter only (it asserts
        # so): let it write one in a scratch directory, then set the shebang.
        # It is "PYTHON -S" (two words, as the ERP5 test node splits it):
        # the script sets sys.path itself, and site's work at start (a
        # virtualenv's .pth files...) would cost ~7 ms per run.
        arguments = ''.join('\n        %r,' % (a,) for a in args)
        scratch = tempfile.mkdtemp(prefix='isolatedtest-')
        buildout_logger = logging.getLogger('zc.buildout.easy_install')
        level = buildout_logger.level
        buildout_logger.setLevel(logging.WARNING)  # no "Generated" line for the scratch copy
        try:
            path, = zc.buildout.easy_install.scripts(
                [(name, self.module, function)], working_set,
                sys.executable, scratch, arguments=arguments,
                initialization=self._initialization())
            with open(path) as f:
                text = f.read()
        finally:
            buildout_logger.setLevel(level)
            shutil.rmtree(scratch)
        return '#!%s -S\n%s' % (self.python, text.split('\n', 1)[1])

    def _initialization(self):
        return ('# Kept minimal: all behaviour lives in %s.\n'
                '# slapos and slapos.recipe without pkg_resources (see NAMESPACE_SETUP):\n'
                '%s' % (self.module, isolate_exec.NAMESPACE_SETUP))

    def install(self):
        return self.write_wrapper(*self.wrapper_arguments())

    update = install


class Recipe(BaseRecipe):
    """Write wrapper-path, a script running command-line isolated: private
    /tmp and /dev/shm, leak report (slapos.recipe.isolate_exec.run_wrapper).

    :param str command-line: the command, shell-split; the wrapper's own
        arguments are appended (required)
    """ + BaseRecipe.__doc__.split('\n', 2)[2]

    requirement = DIST
    module = 'slapos.recipe.isolate_exec'

    def __init__(self, buildout, name, options):
        BaseRecipe.__init__(self, buildout, name, options)
        self.command = self._command_line('command-line', options.get('command-line', ''))

    def wrapper_arguments(self):
        return ('run_wrapper', self.command, self.environment, self.tmpfs, self.userns,
                self.strict, self.kill_timeout, self.leak_report, self.ignore,
                self.timeout) + self._optional()


class Suite(BaseRecipe):
    """Write wrapper-path, a runTestSuite that runs each test case in its own
    isolated environment and speaks the ERP5 test node's protocol
    (slapos.recipe.isolated_suite.run_suite; erp5.util comes with it).

    :param lines test-cases: ``NAME COMMAND-LINE`` lines, run in this order;
        names are unique words (letters, digits, ``_ . -``)
    :param str nxdtest: instead of test-cases, a .nxdtest file (nxdtest's
        format), read when the runner starts; relative to its working
        directory (``.nxdtest``, as nxdtest)
    """ + BaseRecipe.__doc__.split('\n', 2)[2].replace(
        '    :param str leak-report: absolute path of the JSON report to write\n', '')

    requirement = DIST + '[testnode]'
    module = 'slapos.recipe.isolated_suite'
    _name = re.compile(r'^[\w][\w.-]*$')

    def __init__(self, buildout, name, options):
        BaseRecipe.__init__(self, buildout, name, options)
        if self.leak_report:
            raise self._error('leak-report', 'not an option of the suite recipe (each '
                              'case has its own report: see --log_directory)')
        self.nxdtest = options.get('nxdtest', '').strip() or None
        self.cases = []
        for line in _split_lines(options.get('test-cases')):
            case, _, command_line = line.partition(' ')
            if not self._name.match(case):
                raise self._error('test-cases', 'invalid name %r (a word: letters, digits, '
                                  '_ . -)' % case)
            if case in dict(self.cases):
                raise self._error('test-cases', 'name %r given twice' % case)
            if not command_line.strip():
                raise self._error('test-cases', 'no command line for %r' % case)
            self.cases.append((case, self._command_line('test-cases', command_line)))
        if self.nxdtest and self.cases:
            raise self._error('nxdtest', 'give test-cases or nxdtest, not both')
        if not self.cases and not self.nxdtest:
            raise self._error('test-cases', 'missing (required, or nxdtest)')

    def wrapper_arguments(self):
        return ('run_suite', self.cases or None, self.environment, self.tmpfs, self.userns,
                self.strict, self.kill_timeout, self.nxdtest, self.timeout,
                self.ignore) + self._optional()


class Eggs(object):
    """Install eggs into the eggs directory, for an instance buildout that
    runs offline (slapgrid's do): a software release lists there what its
    instance's recipes need, e.g. ``slapos.recipe.isolatedtest[testnode]``
    (the suite recipe's erp5.util). Offline, it only checks they are there.

    :param lines eggs: requirements, one per line (required)
    """

    def __init__(self, buildout, name, options):
        self.requirements = _split_lines(options.get('eggs'))
        if not self.requirements:
            raise option_error('eggs', 'missing (required)')
        try:
            self.working_set = working_set(buildout, self.requirements)
        except zc.buildout.UserError as e:
            raise option_error('eggs', str(e).strip())
        options['locations'] = '\n'.join(dist.location for dist in self.working_set)

    def install(self):
        return []

    update = install


class Checkout(object):
    """The revision of this egg a software release is to test, as a develop
    egg its instance uses (the runtime, the runner, the instance's recipes).

    An ERP5 test node gives, in the profile it writes over the release's,
    ``repository`` (its own clone of the repository under test) and
    ``branch`` (and ``revision``, ``develop``, ``shared``, which change
    nothing here): this section is then named in the test suite's
    ``vcs_repository_list`` as its ``buildout_section_id``. The repository
    is cloned at that branch. Without ``repository``, ``source`` (a local
    directory, e.g. the checkout holding the profile) is copied, .git,
    builds and caches left out.

    The copy is the software's: its egg-info is made here (setup.py
    develop) and its modules byte-compiled, as the software's user, so that
    the instance's user, who may not write there, only reads it. The
    develop egg link goes into the eggs directory, not the develop-eggs
    one: the instance buildout is bootstrapped (``buildout bootstrap``,
    which empties its develop-eggs directory) and finds its eggs in the
    software's eggs directory; zc.buildout takes a develop egg before any
    other distribution of the same name (easy_install's Installer).

    :param str repository: git URL or path to clone (the test node's)
    :param str branch: branch to clone (default: the repository's HEAD)
    :param str source: local directory to copy when there is no repository
    :param str git-executable: git (default ``git``, on PATH)
    """

    def __init__(self, buildout, name, options):
        self.buildout, self.name, self.options = buildout, name, options
        self.logger = logging.getLogger(name)
        self.repository = options.get('repository', '').strip()
        self.branch = options.get('branch', '').strip()
        self.source = options.get('source', '').strip()
        if not self.repository:
            if not self.source:
                raise option_error('source', 'missing (required without repository)')
            if '://' in self.source:
                raise option_error('source', '%s: not a local directory (give repository: the '
                                   'profile was not read from a checkout)' % self.source)
            if not os.path.isfile(os.path.join(self.source, 'setup.py')):
                raise option_error('source', '%s: no setup.py there' % self.source)
        self.git = options.get('git-executable', '').strip() or 'git'
        for unused in ('revision', 'develop', 'shared'):  # the test node's: read, not used
            options.get(unused)
        self.location = options['location'] = os.path.join(
            buildout['buildout']['parts-directory'], name)
        self.eggs = buildout['buildout']['eggs-directory']

    def install(self):
        if os.path.exists(self.location):
            shutil.rmtree(self.location)
        if self.repository:
            argv = [self.git, 'clone', '--quiet']
            if self.branch:
                argv += ['--branch', self.branch]
            argv += [self.repository, self.location]
            self._run(argv, 'repository', 'git clone %s' % self.repository)
        else:
            shutil.copytree(self.source, self.location, symlinks=True,
                            ignore=shutil.ignore_patterns('.git', 'build', 'dist', '*.egg-info',
                                                          '__pycache__', '*.pyc'))
        link = zc.buildout.easy_install.develop(self.location, self.eggs)
        self._run([sys.executable, '-m', 'compileall', '-q', os.path.join(self.location, 'slapos')],
                  'source', 'byte-compile %s' % self.location)
        return [self.location, link]

    def _run(self, argv, option, what):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = proc.communicate()[0].decode('utf-8', 'replace').strip()
        if proc.returncode:
            raise option_error(option, '%s failed (exit status %d): %s' % (
                what, proc.returncode, out.splitlines()[-1] if out else 'no output'))

    # again at each run: the test node runs the same profile for each revision
    update = install


def profile_base_location(buildout):
    """zc.buildout extension (``extensions = slapos.recipe.isolatedtest``):
    give every section ``${:_profile_base_location_}``, the directory (or URL)
    of the profile that defines it, as SlapOS's zc.buildout does, so that a
    software release profile finds the files next to it (``url =
    ${:_profile_base_location_}/instance.cfg.in``) with upstream zc.buildout
    too. Where the option exists already (SlapOS's zc.buildout), nothing is
    changed. It reads what ``buildout annotate`` shows: the file each option
    comes from (zc.buildout 2 and 3)."""
    raw = getattr(buildout, '_raw', {})
    for name, section in getattr(buildout, '_annotated', {}).items():
        if name not in raw or '_profile_base_location_' in raw[name]:
            continue
        # only where it is used: buildout warns about unused options of parts
        if not any('_profile_base_location_' in str(value) for value in raw[name].values()):
            continue
        for key in section.values():
            source = getattr(key, 'source', '')
            if os.path.isabs(source) or '://' in source:
                raw[name]['_profile_base_location_'] = source.rsplit('/', 1)[0]
                break
