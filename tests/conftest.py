"""Shared fixtures: run isolate-exec for real, as root and as nobody, isolated
and in the real "no user namespaces" sandbox.

The tests run from a virtualenv made from /usr/bin/python3 with the project
installed (not from the checkout: CI may clone it where nobody cannot read),
in a world-readable folder outside /tmp (anything under /tmp is invisible
inside a run). `.ci/run` prepares all of that.
"""
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
ISOLATE_EXEC = os.path.join(BIN, 'isolate-exec')
# Everything the tests use or leave is in PREFIX-* folders (.ci/setup makes
# them; `.ci/clean` removes them): world-readable, outside /tmp.
PREFIX = os.environ.get('ISOLATEDTEST_PREFIX', '/var/tmp/isolatedtest')
SCRATCH_ROOT = PREFIX + '-tests'
PY27 = PREFIX + '-py27/bin/python2.7'
if not os.access(PY27, os.X_OK):
    PY27 = None
PY27_MISSING = ('Python 2.7 tests not run: no %s-py27 (.ci/setup copies a pyenv 2.7 there; '
                'any CPython 2.7 prefix nobody can run will do)' % PREFIX)


def need(available, reason, requirement):
    """A test needing something this machine may lack: where CI asked for
    it (ISOLATEDTEST_REQUIRE=py27,slapos), its absence fails the test;
    elsewhere the test is not run, and says why."""
    if available:
        return
    if requirement in os.environ.get('ISOLATEDTEST_REQUIRE', '').split(','):
        pytest.fail(reason + ' (required here by ISOLATEDTEST_REQUIRE)')
    pytest.skip(reason)
# Payloads that run as nobody need an interpreter nobody can execute
# (pyenv's live under /root, mode 0700).
PYTHON = '/usr/bin/python3'

NOBODY_UID = 65534
AS_NOBODY = ['setpriv', '--reuid=%d' % NOBODY_UID, '--regid=%d' % NOBODY_UID, '--clear-groups']
# A real "user namespaces unavailable" machine without touching the host: in a
# user namespace of its own (same uid), max_user_namespaces is set to 0, then
# every capability is dropped (the bounding set too, or root would get them
# back at exec): creating a user namespace fails with ENOSPC, and a mount
# namespace, for root, with EPERM (as in a container without CAP_SYS_ADMIN).
NO_USERNS = ['unshare', '-Uc', '--keep-caps', 'sh', '-c',
             'echo 0 > /proc/sys/user/max_user_namespaces && '
             'exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all "$@"', '-']
NO_USERNS_REASON = {
    'nobody': 'create user namespace: No space left on device',
    'root': 'create mount namespace: Operation not permitted',
}

CALLERS = ('root', 'nobody')
MODES = ('isolated', 'fallback')  # fallback: in the real no-userns sandbox


def pytest_configure(config):
    if not os.access(ISOLATE_EXEC, os.X_OK):
        raise pytest.UsageError(
            '%s not found: run the tests with the python of a virtualenv where the '
            'project is installed (see README, "Tests")' % ISOLATE_EXEC)
    if os.getuid() != 0:
        raise pytest.UsageError('the tests need root (they also run things as nobody)')
    # The tests send SIGHUP, SIGINT and SIGTERM and expect their default
    # disposition in what they start, however this session was started (nohup
    # ignores SIGHUP, a background job of a non-interactive shell SIGINT): an
    # ignored signal stays ignored through fork and exec (signal(7)), a handled
    # one is reset to its default at exec. So an ignored one gets a handler
    # that does nothing: this process still ignores it, its children do not.
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, lambda signum, frame: None)
    # Two sessions on one PREFIX remove each other's scratch folders (and
    # .ci/setup reinstalls the virtualenv under a running session): the
    # second one stops here. The lock is held until this process exits.
    config._prefix_lock = open(PREFIX + '-lock', 'a')
    try:
        fcntl.flock(config._prefix_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (IOError, OSError):
        raise pytest.UsageError(
            'another test session or .ci/setup uses %s-*: wait for it, or give this one '
            'its own ISOLATEDTEST_PREFIX' % PREFIX)


class Result(object):
    def __init__(self, proc, out, err, duration):
        self.returncode = proc.returncode
        self.pid = proc.pid
        self.out = out
        self.err = err
        self.duration = duration
        self.stdout = out.decode('utf-8', 'replace')
        self.stderr = err.decode('utf-8', 'replace')

    @property
    def report(self):
        """The '# ...' lines isolate-exec printed on stderr."""
        return [l for l in self.stderr.splitlines() if l.startswith('# ')]

    def __repr__(self):
        return '<Result rc=%s\n--- stdout\n%s\n--- stderr\n%s>' % (
            self.returncode, self.stdout, self.stderr)


def command_line(args, caller='root', sandbox=False, python=None):
    """argv running isolate-exec with args, as caller, optionally in the
    no-userns sandbox, with python 'py3' (the console script) or 'py27'."""
    if python == 'py27':
        need(PY27, PY27_MISSING, 'py27')
        tool = [PY27, '-m', 'slapos.recipe.isolate_exec']
    else:
        tool = [ISOLATE_EXEC]
    prefix = AS_NOBODY if caller == 'nobody' else []
    if sandbox:
        prefix = prefix + NO_USERNS
    return prefix + tool + list(args)


def py27_env(env):
    env = dict(os.environ if env is None else env)
    env['PYTHONPATH'] = os.path.join(SCRATCH_ROOT, 'py27lib')
    return env


def run(args, caller='root', sandbox=False, python=None, input=None, timeout=60,
        env=None, cwd=None):
    """Run isolate-exec to completion. -> Result"""
    argv = command_line(args, caller, sandbox, python)
    if python == 'py27':
        env = py27_env(env)
    start = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=cwd or SCRATCH_ROOT)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError('timeout: %r\n%s\n%s' % (argv, out, err))
    return Result(proc, out, err, time.time() - start)


def start(args, caller='root', sandbox=False, python=None, env=None, **kw):
    """Start isolate-exec in the background. -> Popen"""
    argv = command_line(args, caller, sandbox, python)
    if python == 'py27':
        env = py27_env(env)
    kw.setdefault('cwd', SCRATCH_ROOT)
    return subprocess.Popen(argv, env=env, **kw)


def wait_for(predicate, timeout=10, what='condition'):
    """Poll predicate until it is true; fail after timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError('timeout waiting for %s' % what)


def _stat(pid, path='/proc/%d/stat'):
    """The fields of /proc/PID/stat after the name (state first), or None."""
    try:
        with open(path % pid) as f:
            return f.read().rpartition(') ')[2].split()
    except (IOError, OSError):
        return None


def process(pid):
    """(pid, start time): names one process even after its pid is reused
    (pid_max is 32768 here, and a CI run starts tens of thousands)."""
    fields = _stat(pid)
    return pid, fields and fields[19]


def pid_alive(pid):
    """pid: a pid, or process(pid) to ignore a later process with the same pid."""
    pid, started = pid if isinstance(pid, tuple) else (pid, None)
    fields = _stat(pid)
    if not fields or started not in (None, fields[19]):
        return False
    try:
        tasks = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return False
    return any(_running(_stat(pid, '/proc/%%d/task/%s/stat' % tid)) for tid in tasks)


def _running(fields):
    """A task that can still run code: not a zombie, not dead, and not
    exiting (PF_EXITING, 0x4 in the flags: set from the start of exit(), as
    isolate-exec counts it; isolate-exec leaves the last of a SIGKILLed
    process's exit to the kernel and does not wait for it). A process is alive
    while any of its threads is (its main thread may have exited before)."""
    return bool(fields) and fields[0] not in ('Z', 'X') and not int(fields[6]) & 0x4


def descendants(pid):
    """Host pids of the processes below pid (a run's own pids differ)."""
    children = {}
    for line in subprocess.check_output(['ps', '-e', '-o', 'pid=,ppid=']).splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def own_children():
    """This session's running children, each as process(pid)."""
    own = os.getpid()
    found = set()
    for name in os.listdir('/proc'):
        fields = name.isdigit() and _stat(int(name))
        if fields and fields[0] != 'Z' and int(fields[1]) == own:
            found.add((int(name), fields[19]))
    return found


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A test that fails half-way (a timeout, an assertion) may leave what it
    started running: stop it (SIGTERM, then SIGKILL after 10 s) and say so
    in a warning, so that one failure does not leave a test node busy."""
    before = own_children()
    yield
    stray = sorted(own_children() - before)
    if not stray:
        return
    warnings.warn('the test left running: %s (stopped)' % ', '.join(
        '%d %r' % (pid, _cmdline(pid)) for pid, _ in stray))
    signal_all(stray, signal.SIGTERM)
    left, deadline = set(stray), time.time() + 10
    while left and time.time() < deadline:
        for child in list(left):
            try:
                os.waitpid(child[0], os.WNOHANG)  # a zombie until its Popen waits
            except OSError:
                pass
            if not pid_alive(child):
                left.discard(child)
        time.sleep(0.02)
    signal_all(left, signal.SIGKILL)
    for pid, _ in left:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass


def signal_all(processes, signum):
    for pid, _ in processes:
        try:
            os.kill(pid, signum)
        except OSError:  # it ended meanwhile
            pass


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()[:200]
    except (IOError, OSError):
        return '?'


def run_leftovers(names=()):
    """What a run could have left in the host's /tmp and /dev/shm: fallback
    private directories, and the given names (not the whole listing: other
    processes of the machine use /tmp too)."""
    return sorted(os.path.join(d, n) for d in ('/tmp', '/dev/shm') for n in os.listdir(d)
                  if n.startswith('isolate-exec.') or n in names)


def host_sysvipc():
    """The host's System V IPC objects: (kind, key, id) of each."""
    found = set()
    for kind in ('shm', 'sem', 'msg'):
        with open('/proc/sysvipc/' + kind) as f:
            for line in f.read().splitlines()[1:]:
                found.add((kind,) + tuple(line.split()[:2]))
    return found


def host_mounts():
    with open('/proc/self/mountinfo') as f:
        return [' '.join(l.split()[3:]) for l in f.read().splitlines()]


@pytest.fixture(scope='session', autouse=True)
def scratch_root():
    """A world-readable scratch folder outside /tmp; at the end, check that the
    whole session left nothing on the host: no mounts, no private dirs."""
    if os.path.exists(SCRATCH_ROOT):
        shutil.rmtree(SCRATCH_ROOT)
    os.makedirs(SCRATCH_ROOT)
    os.chmod(SCRATCH_ROOT, 0o777)
    if PY27:  # Python 2 has no namespace packages without __init__.py: a source copy
        shutil.copytree(os.path.join(CHECKOUT, 'slapos'),
                        os.path.join(SCRATCH_ROOT, 'py27lib', 'slapos'))
        subprocess.check_call(['chmod', '-R', 'a+rX', os.path.join(SCRATCH_ROOT, 'py27lib')])
    mounts = host_mounts()
    yield SCRATCH_ROOT
    assert host_mounts() == mounts
    assert run_leftovers() == []
    shutil.rmtree(SCRATCH_ROOT)


@pytest.fixture
def scratch(request):
    """A fresh folder nobody can write to, outside /tmp."""
    name = request.node.name
    for c in '[]/ ':
        name = name.replace(c, '_')
    path = os.path.join(SCRATCH_ROOT, name)
    os.makedirs(path)
    os.chmod(path, 0o777)
    yield path
    subprocess.call(['chmod', '-R', 'u+rwx', path])
    shutil.rmtree(path)


@pytest.fixture
def reaper():
    """Processes started by a test; killed at the end if still running."""
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def tmpfs_paths():
    from slapos.recipe.isolation.mounts import PRIVATE_TMPFS
    return [path for path, _ in PRIVATE_TMPFS]


# -- buildout -------------------------------------------------------------------

BUILDOUT = {
    'py3': PREFIX + '-buildout/bin/buildout',  # zc.buildout 3.0.1
    'py27': PREFIX + '-py27/bin/buildout',     # zc.buildout 2.13.8
}
EGGS = PREFIX + '-eggs'  # erp5.util, slapos.recipe.template...: .ci/setup
PROJECT_FILES = ('setup.py', 'pyproject.toml', 'README.md', 'CHANGES.txt', 'slapos', 'scripts')


@pytest.fixture(scope='session')
def src(scratch_root):
    """A world-readable copy of the project, for buildout's develop option
    (as SlapOS's [slapos-cookbook-develop]); the wrappers import from it."""
    path = os.path.join(scratch_root, 'src')
    os.makedirs(path)
    for name in PROJECT_FILES:
        source = os.path.join(CHECKOUT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(path, name),
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copy(source, path)
    subprocess.check_call(['chmod', '-R', 'a+rX', path])
    return path


def buildout_section(part, src, directory):
    """The [buildout] section of the tests' buildouts: offline, the project as
    a develop egg, the eggs .ci/setup installed (as SlapOS's shared eggs)."""
    return ('[buildout]\nparts = %s\noffline = true\ndevelop = %s\neggs-directory = %s\n'
            'develop-eggs-directory = %s/develop-eggs\n' % (part, src, EGGS, directory))


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return path


# slapos.core 1.26's node commands need Python >= 3.12 (.ci/setup copies pyenv's)
PYTHON312 = PREFIX + '-py312/bin/python3.12'


@pytest.fixture(scope='session')
def release_index():
    """The index the release is built from, as PyPI will serve it, made by
    make-index for the node's Python (downloads kept between runs in
    INDEX.cache; a clean cache downloads)."""
    need(os.access(PYTHON312, os.X_OK), 'no %s (.ci/setup copies a pyenv 3.12 there)'
         % PYTHON312, 'slapos')
    path = PREFIX + '-release-index'
    subprocess.run([os.path.join(CHECKOUT, 'software', 'test-isolation', 'make-index'),
                    '--python', PYTHON312, path], check=True, stdout=subprocess.PIPE,
                   timeout=600)
    return path


def buildout(directory, config, python='py3', args=()):
    """Write directory/buildout.cfg and run buildout there. -> Result"""
    if python == 'py27':
        need(PY27, PY27_MISSING, 'py27')
    if not os.path.exists(directory):
        os.makedirs(directory)
    write(os.path.join(directory, 'buildout.cfg'), config)
    start = time.time()
    proc = subprocess.Popen([BUILDOUT[python], '-c', 'buildout.cfg'] + list(args),
                            cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    return Result(proc, out, err, time.time() - start)
