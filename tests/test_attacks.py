"""The second attack round (issue: pid hoppers, planted FIFOs, a runner its
cases can reach, a runner killed mid-case): each attack for real, as root
and as nobody, isolated and in the real no-userns sandbox where it applies.
A fallback attack that could outlive the run is contained in an outer pid
namespace (the sandbox's own), so that a failure cannot leak onto the
machine."""
import json
import os
import re
import subprocess

import pytest

from conftest import (AS_NOBODY, CALLERS, ISOLATE_EXEC, NO_USERNS, NOBODY_UID, PYTHON,
                      buildout, buildout_section, pid_alive, process, run, wait_for, write)

# The no-userns sandbox of conftest, in a pid namespace of its own (and the
# mount namespace its /proc needs): whatever the run leaves dies with it.
CONTAINED_NO_USERNS = ['unshare', '-Umpfc', '--keep-caps', '--mount-proc'] + NO_USERNS[3:]

# setsid(), then fork and let the parent exit, forever: never twice the same
# pid. Each generation appends a byte to MARKS (if given): it is alive as
# long as MARKS grows. IGNORE: SIGTERM ignored.
HOPPER = r'''
import os, signal, sys
if 'IGNORE' in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
marks = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666) if sys.argv[1:2] != ['-'] else None
os.setsid()
while True:
    if os.fork() > 0:
        os._exit(0)
    if marks is not None:
        os.write(marks, b'.')
'''


@pytest.fixture
def hopper(scratch):
    return write(os.path.join(scratch, 'hopper.py'), HOPPER)


def leaked_pids(report):
    return [p for p in report if p.startswith('# leaked pid=')]


# -- 1. pid hoppers -------------------------------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_a_pid_hopper_is_reported_and_killed(caller, hopper, scratch):
    report = os.path.join(scratch, 'report.json')
    r = run(['--strict', '--kill-timeout', '1', '--report', report, '--', 'sh', '-c',
             '%s %s - & sleep 0.2' % (PYTHON, hopper)], caller=caller, timeout=30)
    assert r.returncode == 3, r
    assert leaked_pids(r.report) and all('hopper.py' in line for line in leaked_pids(r.report)), r
    with open(report) as f:
        assert json.load(f)['leaked_processes'], r


@pytest.mark.parametrize('caller', CALLERS)
def test_a_pid_hopper_ignoring_sigterm_is_killed(caller, hopper):
    r = run(['--strict', '--kill-timeout', '0.5', '--', 'sh', '-c',
             '%s %s - IGNORE & sleep 0.2' % (PYTHON, hopper)], caller=caller, timeout=30)
    assert r.returncode == 3, r
    assert leaked_pids(r.report), r
    assert any(line.startswith('# killed pid=') for line in r.report), r


@pytest.mark.parametrize('ignore', ['', 'IGNORE'])
@pytest.mark.parametrize('caller', CALLERS)
def test_a_pid_hopper_does_not_outlive_a_fallback_run(caller, ignore, hopper, scratch):
    """In fallback there is no pid namespace of the run's: the hopper must be
    stopped by isolate-exec itself (its process group, as subreaper)."""
    marks = os.path.join(scratch, 'marks')
    script = ('"$1" --strict --kill-timeout 0.5 -- sh -c "%s %s %s %s & sleep 0.2"; '
              'echo status $?; a=$(stat -c %%s %s); sleep 0.5; b=$(stat -c %%s %s); '
              'echo sizes $a $b' % (PYTHON, hopper, marks, ignore, marks, marks))
    argv = (AS_NOBODY if caller == 'nobody' else []) + CONTAINED_NO_USERNS + [
        'sh', '-c', script, '-', ISOLATE_EXEC]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                          cwd='/')
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert '# user namespaces not available' in err, err
    assert 'status 3' in out, (out, err)
    sizes = re.search(r'sizes (\d+) (\d+)', out).groups()
    assert int(sizes[0]) > 0 and sizes[0] == sizes[1], (out, err)  # it ran, then stopped
    assert re.search(r"^# leaked pid=\d+ 'python3'", err, re.M), err


@pytest.mark.parametrize('mode', ['isolated', 'fallback'])
def test_a_fork_bomb_and_a_hopper_end_within_the_kill_timeout(mode, hopper):
    """As nobody under ulimit -u (root is not bound by it): a fork bomb and
    a hopper ignoring SIGTERM, both stopped within --kill-timeout + 5 s."""
    bomb = "b() { b & b & wait; }; b"
    script = ('ulimit -u 200 || exit 9; %s %s - IGNORE & (trap "" TERM; %s) 2>/dev/null & '
              'sleep 0.3' % (PYTHON, hopper, bomb))
    args = ['--kill-timeout', '1', '--', 'bash', '-c', script]
    if mode == 'isolated':
        r = run(args, caller='nobody', timeout=1 + 5)
        assert leaked_pids(r.report), r
        return
    argv = AS_NOBODY + CONTAINED_NO_USERNS + [ISOLATE_EXEC] + args
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1 + 5,
                          cwd='/')
    assert re.search(rb"^# leaked pid=", proc.stderr, re.M), proc.stderr


@pytest.mark.parametrize('caller', CALLERS)
def test_leaked_processes_are_named_after_what_they_run(caller):
    """The README's example: the leaked sleep is read after it exec'd (the
    freeze), not as the shell it was forked from."""
    for _ in range(10):
        r = run(['--', 'sh', '-c', 'echo data > /tmp/leak; sleep 600 & ls /tmp'], caller=caller)
        assert r.returncode == 0, r
        leaked = leaked_pids(r.report)
        assert len(leaked) == 1, r
        assert re.match(r"^# leaked pid=\d+ 'sleep' \['sleep', '600'\]$", leaked[0]), r


# -- 2. FIFOs and devices at the --report path ---------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_another_users_fifo_in_tmp_is_not_written(caller):
    path = '/tmp/isolatedtest-fifo-%d' % os.getpid()
    os.mkfifo(path, 0o666)
    os.chmod(path, 0o666)
    os.chown(path, 1000, 1000)
    try:
        r = run(['--report', path, '--', 'sh', '-c', 'echo x > /tmp/leak; exit 4'],
                caller=caller, timeout=30)
    finally:
        os.unlink(path)
    assert r.returncode == 4, r
    assert ('isolate-exec: write report %s: a FIFO of another user in a sticky world-writable '
            'directory: not written' % path) in r.stderr.splitlines(), r
    assert '# leaked /tmp/leak' in r.report  # the text report still comes


@pytest.mark.parametrize('sandbox', [False, True])
@pytest.mark.parametrize('caller', CALLERS)
def test_a_fifo_nobody_reads_is_an_error_not_a_hang(caller, sandbox, scratch):
    path = os.path.join(scratch, 'fifo')
    os.mkfifo(path, 0o666)
    os.chmod(path, 0o666)
    r = run(['--report', path, '--', 'true'], caller=caller, sandbox=sandbox, timeout=30)
    assert r.returncode == 0, r
    assert r.stderr.splitlines()[-1] == (
        'isolate-exec: write report %s: a FIFO that nobody reads' % path), r


# Opens the FIFO without waiting for a writer, says so, then reads what the
# first writer writes, to its end (at most 60 s).
FIFO_READER = r'''
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
open(sys.argv[2], 'w').close()
data, deadline = b'', time.time() + 60
while time.time() < deadline:
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        chunk = None
    if chunk:
        data += chunk
    elif chunk == b'' and data:
        break
    else:
        time.sleep(0.01)
sys.stdout.buffer.write(data)
'''


@pytest.mark.parametrize('caller', CALLERS)
def test_a_fifo_with_a_reader_gets_the_report(caller, scratch):
    path = os.path.join(scratch, 'fifo')
    os.mkfifo(path, 0o666)
    os.chmod(path, 0o666)
    ready = os.path.join(scratch, 'ready')
    reader = subprocess.Popen([PYTHON, '-c', FIFO_READER, path, ready], stdout=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(ready), what='the reader to open the FIFO')
        r = run(['--report', path, '--', 'true'], caller=caller, timeout=30)
        out, _ = reader.communicate(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert r.returncode == 0 and r.stderr == '', r
    assert json.loads(out)['exit_code'] == 0


@pytest.mark.parametrize('caller', CALLERS)
def test_report_fd(caller, scratch):
    """--report-fd: an inherited descriptor, which COMMAND does not get."""
    path = os.path.join(scratch, 'out')
    script = ('exec 7<> %s; %s --report-fd 7 -- sh -c "ls /proc/self/fd; touch /tmp/leak"; '
              'echo status $?' % (path, ISOLATE_EXEC))
    argv = (AS_NOBODY if caller == 'nobody' else []) + ['sh', '-c', script]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                          cwd='/')
    out = proc.stdout.decode().split()
    assert out[-2:] == ['status', '0'] and '7' not in out, proc
    with open(path) as f:
        assert json.load(f)['leaked_files'] == ['/tmp/leak']
    r = run(['--report-fd', '9', '--', 'true'], caller=caller)
    assert (r.returncode, r.stderr) == (2, 'isolate-exec: --report-fd 9: Bad file descriptor\n')
    r = run(['--report-fd', '1', '--', 'true'], caller=caller)
    assert r.stderr == "isolate-exec: --report-fd '1': must be a file descriptor >= 3\n", r


# -- 6. fallback: a TMPDIR made mode 000 ----------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_fallback_tmpdir_made_mode_000_is_still_removed(caller):
    r = run(['--', 'sh', '-c', 'echo x > $TMPDIR/f; mkdir $TMPDIR/d; echo $TMPDIR; '
             'chmod 0 $TMPDIR'], caller=caller, sandbox=True)
    assert r.returncode == 0, r
    private = r.stdout.strip()
    assert r.report[1:] == ['# leaked %s/f' % private, '# leaked %s/d/' % private], r
    assert not os.path.exists(private)


# -- 7. SIGALRM from the test ------------------------------------------------------------

@pytest.mark.parametrize('sandbox', [False, True])
@pytest.mark.parametrize('caller', CALLERS)
def test_sigalrm_from_the_test_does_not_end_the_run(caller, sandbox):
    # isolated, the supervisor is pid 1; in fallback, the command's parent
    target = '$(ps -o ppid= -p $$)' if sandbox else '1'
    r = run(['--timeout', '100', '--', 'sh', '-c', 'for i in 1 2 3; do kill -ALRM %s; '
             'sleep 0.1; done; echo survived' % target], caller=caller, sandbox=sandbox)
    assert r.returncode == 0, r
    assert r.stdout == 'survived\n', r
    assert not any('timed out' in line for line in r.report), r


# -- 9. a root test and the supervisor's records ----------------------------------------

FORGE = r'''
import ctypes, marshal, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
reopened = []
for name in os.listdir('/proc/1/fd'):
    try:
        fd = os.open('/proc/1/fd/' + name, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        continue
    if stat.S_ISSOCK(os.fstat(fd).st_mode) or stat.S_ISFIFO(os.fstat(fd).st_mode):
        reopened.append(name)
print('reopened', reopened)
# a root test can still take the descriptor itself (pidfd_getfd, Linux 5.6)
pidfd = libc.syscall(434, 1, 0)
for n in range(3, 64):
    fd = libc.syscall(438, pidfd, n, 0)
    if fd >= 0 and stat.S_ISSOCK(os.fstat(fd).st_mode):
        record = marshal.dumps({'status': 0, 'done': True})
        os.write(fd, b'%d\n' % len(record) + record)
        print('wrote into', n)
open('/tmp/leak', 'w').close()
sys.exit(1)
'''


def test_a_root_test_cannot_forge_the_report(scratch):
    path = os.path.join(scratch, 'forge.py')
    with open(path, 'w') as f:
        f.write(FORGE)
    r = run(['--strict', '--', PYTHON, path], timeout=30)
    # the lifeline is a socket: not reopened through /proc; the bytes written
    # through a stolen descriptor lack the secret: refused, never a pass
    assert r.stdout.splitlines()[0] == "reopened ['0', '1', '2']", r  # the caller's stdio
    assert 'wrote into' in r.stdout, r
    assert r.returncode == 125, r
    assert ("isolate-exec: read the supervisor's records: bytes that are not its own (written "
            "into its socket by a test?); the leak report is incomplete") in r.stderr, r


def test_a_non_root_test_cannot_reach_the_supervisor(scratch):
    """The supervisor is not dumpable: its /proc/1/fd and memory are out of a
    non-root command's reach."""
    r = run(['--', 'sh', '-c', 'ls /proc/1/fd; cat /proc/1/mem; touch /tmp/leak; exit 2'],
            caller='nobody')
    assert r.returncode == 2, r
    assert "ls: cannot open directory '/proc/1/fd': Permission denied" in r.stderr, r
    assert '# leaked /tmp/leak' in r.report, r


# -- 3, 4, 5. the suite runner -----------------------------------------------------------

SUITE = '''
[runTestSuite]
recipe = slapos.recipe.isolatedtest:suite
wrapper-path = ${{buildout:directory}}/bin/runTestSuite
strict = true
environment =
  TMPDIR = {tmpdir}
test-cases =
{cases}
'''


def make_suite(directory, src, cases):
    tmpdir = os.path.join(directory, 'tmp')
    os.makedirs(tmpdir)
    os.chmod(tmpdir, 0o777)
    r = buildout(directory, buildout_section('runTestSuite', src, directory) + SUITE.format(
        tmpdir=tmpdir, cases='\n'.join('  %s %s' % case for case in cases)))
    assert r.returncode == 0, r
    return os.path.join(directory, 'bin', 'runTestSuite'), tmpdir


@pytest.mark.parametrize('caller', CALLERS)
def test_cases_cannot_reach_the_runners_reports(caller, scratch, src):
    """TMPDIR outside /tmp, as SlapOS partitions have it: a case that plants
    directories and FIFOs there under every name it can think of still has
    its leak counted (strict), and the next case runs."""
    plant = ("sh -c 'echo seen $(ls -A {t} | wc -l); for n in 0 1 2 runTestSuite.x 0.json 1.json; "
             "do mkdir {t}/d$n; mkfifo {t}/f$n; done; touch /tmp/leak'"
             .format(t=os.path.join(scratch, 'tmp')))
    runner, tmpdir = make_suite(scratch, src, [('plant', plant), ('next', 'true')])
    proc = subprocess.run((AS_NOBODY if caller == 'nobody' else []) + [runner],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, cwd='/')
    out = proc.stdout.decode()
    assert proc.returncode == 1, out
    assert re.search(r'^error\tplant\t', out, re.M), out  # the leak was counted
    assert re.search(r'^ok\tnext\t', out, re.M), out
    assert '# leaked /tmp/leak' in out and 'seen 0' in out, out
    # the runner kept nothing in TMPDIR; the case saw nothing of it there
    planted = sorted(os.listdir(tmpdir))
    assert all(name[0] in 'df' for name in planted), planted


@pytest.mark.parametrize('caller', CALLERS)
def test_a_case_with_a_huge_output_does_not_grow_the_runner(caller, scratch, src):
    """400 MB of output: the runner's memory does not follow (it was 1.18 GB)."""
    runner, _ = make_suite(scratch, src, [('loud', "sh -c 'head -c 400000000 /dev/zero | tr "
                                           "\"\\\\0\" x; echo; echo done'")])
    argv = (AS_NOBODY if caller == 'nobody' else []) + [runner]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd='/')
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert usage.ru_maxrss < 100 * 1024, usage.ru_maxrss  # KiB, the whole tree's peak


@pytest.mark.parametrize('caller', CALLERS)
def test_a_case_dies_with_its_sigkilled_runner(caller, scratch, src):
    ready = os.path.join(scratch, 'ready')
    runner, tmpdir = make_suite(scratch, src, [
        ('long', "sh -c 'echo $$ > %s; sleep 600'" % ready)])
    proc = subprocess.Popen((AS_NOBODY if caller == 'nobody' else []) + [runner],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd='/')
    wait_for(lambda: os.path.exists(ready) and open(ready).read().strip(), what='the case')
    tree = [process(int(pid)) for pid in subprocess.check_output(
        ['pgrep', '-P', str(proc.pid)]).split()]
    assert tree  # isolate-exec
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(pid_alive(p) for p in tree), what='the case to die')
    assert os.listdir(tmpdir) == []  # no scratch folder outlives the runner


# -- 10. subordinate ids -------------------------------------------------------------------

def test_a_setuid_file_of_a_subordinate_id_gives_nothing(scratch):
    from test_subids import run_with_subids
    # made outside the run, as the caller's own rootless namespace could
    setuid_id = os.path.join(scratch, 'id')
    subprocess.check_call(['cp', '/usr/bin/id', setuid_id])
    os.chown(setuid_id, 200000, 200000)  # uid 0 of the run: mapped to 200000
    os.chmod(setuid_id, 0o4755)
    r = run_with_subids(['--', setuid_id, '-u'])
    assert r.returncode == 0, r
    assert r.stdout == '%d\n' % NOBODY_UID, r  # not 0: no new privileges


def test_a_subordinate_range_holding_host_root_is_refused():
    from test_subids import run_with_subids
    r = run_with_subids(['--', 'cat', '/proc/self/uid_map'], subuid='nobody:0:65536')
    assert r.returncode == 0, r
    assert r.report[0] == ('# subordinate ids not mapped (the subordinate uid range of nobody '
                           'in /etc/subuid contains host uid 0)'), r
    assert r.stdout.split() == [str(NOBODY_UID), str(NOBODY_UID), '1'], r


def test_records_whose_secret_starts_with_the_alive_byte():
    """The alive byte b'+' is the stream's first byte only: a secret that
    starts with it (1 run in 256) is not taken for it (a run hung so)."""
    import marshal
    import socket
    from slapos.recipe.isolation.supervisor import ForgedRecord, _read_records
    secret = b'+' + os.urandom(15)
    for forged in (False, True):
        ours, theirs = socket.socketpair()
        record = marshal.dumps({'status': 0})
        ours.sendall(b'+' + (b'x' * 16 if forged else secret) + b'%d\n' % len(record) + record)
        ours.close()
        records = _read_records(theirs.fileno(), secret)
        if forged:
            with pytest.raises(ForgedRecord):
                list(records)
        else:
            assert list(records) == [{'status': 0}]
        theirs.close()
