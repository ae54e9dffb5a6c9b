"""Private System V IPC and POSIX message queues (issue: the other half of
shared memory): each isolated run has an IPC namespace of its own and an
mqueue mount of it on /dev/mqueue; what the command leaves there is
reported, then freed with the namespace. Real objects, real namespaces, as
root and as nobody; the host's objects are compared before and after."""
import json
import os
import re
import subprocess

import pytest

from conftest import (AS_NOBODY, CALLERS, ISOLATE_EXEC, PYTHON, buildout, buildout_section,
                      host_sysvipc, run, start, write)

# A payload making IPC objects through libc, as C programs and sysv_ipc do:
# python3 IPC.py shm|sem|msg|mq|attach|fixed|many ... (prints what it made)
IPC_PY = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_EXCL = 0o1000, 0o2000
def check(value, what):
    if value == -1:
        sys.exit('%s: %s' % (what, os.strerror(ctypes.get_errno())))
    return value
what, args = sys.argv[1], sys.argv[2:]
if what == 'all':
    check(libc.shmget(0x51cd3d6d, 4096, IPC_CREAT | 0o600), 'shmget')
    check(libc.semget(0x1599b0f4, 1, IPC_CREAT | 0o600), 'semget')
    check(libc.msgget(0x45450384, IPC_CREAT | 0o600), 'msgget')
    libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    check(libc.mq_open(b'/name', os.O_CREAT | os.O_RDWR, 0o600, None), 'mq_open')
elif what == 'shm':
    check(libc.shmget(int(args[0], 0), 4096, IPC_CREAT | 0o600), 'shmget')
elif what == 'fixed':  # the key must be free here, as on a machine of its own
    key, ready, other = int(args[0], 0), args[1], args[2]
    check(libc.shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0o600), 'shmget')
    open(ready, 'w').close()
    deadline = time.time() + 20
    while not os.path.exists(other):  # both runs hold their segment at once
        if time.time() > deadline:
            sys.exit('the other run never came')
        time.sleep(0.01)
elif what == 'attach':  # a segment attached by the process, which then waits
    libc.shmat.restype = ctypes.c_void_p
    shmid = check(libc.shmget(int(args[0], 0), 4096, IPC_CREAT | 0o600), 'shmget')
    check(libc.shmat(shmid, None, 0) or 0, 'shmat')
    print('attached', flush=True)
    if args[1:] == ['kill']:
        os.kill(os.getpid(), 9)
    time.sleep(600)
elif what == 'many':  # semaphore arrays: 32000 fit kernel.sem's default semmni
    for i in range(int(args[0])):
        check(libc.semget(0x10000 + i, 1, IPC_CREAT | 0o600), 'semget %d' % i)
'''

LINES = [
    '# leaked ipc shm key=0x51cd3d6d id=0 bytes=4096 owner=%d nattch=0',
    '# leaked ipc sem key=0x1599b0f4 id=0 nsems=1 owner=%d',
    '# leaked ipc msg key=0x45450384 id=0 messages=0 bytes=0 owner=%d',
    '# leaked mqueue /name',
]
UID = {'root': 0, 'nobody': 65534}


@pytest.fixture
def ipc_py(scratch):
    return write(os.path.join(scratch, 'ipc.py'), IPC_PY)


def host_mqueues(scratch):
    """The host's POSIX message queues, from an mqueue mount in a private
    mount namespace (the host's IPC namespace, its mounts unchanged)."""
    point = os.path.join(scratch, 'host-mqueue')
    os.makedirs(point, exist_ok=True)
    return subprocess.check_output(
        ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
         'mount -t mqueue none "$1" && ls -A "$1"', '-', point], timeout=30).split()


def host_segment(ipc_py, key):
    """Make a segment with key in the host's IPC namespace. -> its id"""
    before = host_sysvipc()
    subprocess.check_call([PYTHON, ipc_py, 'shm', hex(key)], timeout=30)
    made, = [ident for _, k, ident in host_sysvipc() - before if k == str(key)]
    return made


def remove_host_objects(before):
    """Remove what a test made in the host's IPC namespace (--ipc host, fallback)."""
    for kind, _, ident in host_sysvipc() - before:
        subprocess.call(['ipcrm', {'shm': '-m', 'sem': '-s', 'msg': '-q'}[kind], ident])


@pytest.mark.parametrize('caller', CALLERS)
def test_every_kind_is_private_reported_and_freed(caller, ipc_py, scratch):
    before, mqueues = host_sysvipc(), host_mqueues(scratch)
    report = os.path.join(scratch, 'report.json')
    r = run(['--report', report, '--', PYTHON, ipc_py, 'all'], caller=caller)
    assert r.returncode == 0, r
    uid = UID[caller]
    assert r.report == [line % uid if '%' in line else line for line in LINES], r
    assert host_sysvipc() == before
    assert host_mqueues(scratch) == mqueues
    with open(report) as f:
        data = json.load(f)
    assert data['leaked'] is True
    assert data['leaked_ipc'] == [
        {'kind': 'shm', 'key': 0x51cd3d6d, 'id': 0, 'bytes': 4096, 'owner': uid, 'nattch': 0},
        {'kind': 'sem', 'key': 0x1599b0f4, 'id': 0, 'nsems': 1, 'owner': uid},
        {'kind': 'msg', 'key': 0x45450384, 'id': 0, 'messages': 0, 'bytes': 0, 'owner': uid}]
    assert data['leaked_mqueues'] == ['/name']
    assert data['counts']['leaked_ipc'] == 3 and data['counts']['leaked_mqueues'] == 1
    assert data['truncated'] == []


@pytest.mark.parametrize('caller', CALLERS)
def test_the_command_sees_its_own_mqueue_mount(caller, ipc_py):
    r = run(['--', 'sh', '-c', '%s %s all && ls -A /dev/mqueue && '
             'grep -c " /dev/mqueue .* - mqueue " /proc/self/mountinfo' % (PYTHON, ipc_py)],
            caller=caller)
    # /dev/mqueue exists here once a root run made it (it does on systemd
    # and docker systems): as root, the first run creates it
    if caller == 'root' or os.path.isdir('/dev/mqueue'):
        assert r.returncode == 0, r
        assert r.stdout.split() == ['name', '1'], r
    assert '# leaked mqueue /name' in r.report


@pytest.mark.parametrize('caller', CALLERS)
def test_strict_fails_a_run_whose_only_leak_is_a_segment(caller, ipc_py):
    r = run(['--strict', '--', PYTHON, ipc_py, 'shm', '0x1234'], caller=caller)
    assert r.returncode == 3, r
    assert r.report == ['# leaked ipc shm key=0x00001234 id=0 bytes=4096 owner=%d nattch=0'
                        % UID[caller], '# --strict: the run leaked: exit status 3'], r


@pytest.mark.parametrize('caller', CALLERS)
def test_a_fixed_key_is_free_in_each_run_while_the_host_holds_it(caller, ipc_py, scratch,
                                                                 reaper):
    """The host holds a segment with the key; two runs at once each create
    theirs with IPC_CREAT|IPC_EXCL (EEXIST on a shared IPC namespace), and
    wait until both hold it."""
    key = 0x5eed0001
    host = host_segment(ipc_py, key)
    try:
        runs = []
        for me, other in (('a', 'b'), ('b', 'a')):
            p = start(['--', PYTHON, ipc_py, 'fixed', hex(key), os.path.join(scratch, me),
                       os.path.join(scratch, other)], caller=caller,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            reaper.append(p)
            runs.append(p)
        for p in runs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            assert err.decode().splitlines() == [
                '# leaked ipc shm key=0x%08x id=0 bytes=4096 owner=%d nattch=0'
                % (key, UID[caller])], err
        # the host's segment was never seen nor touched
        assert ('shm', str(key), host) in host_sysvipc()
    finally:
        subprocess.call(['ipcrm', '-m', host])


@pytest.mark.parametrize('caller', CALLERS)
def test_a_nested_run_has_its_own_namespace(caller, ipc_py):
    inner = [ISOLATE_EXEC, '--', 'sh', '-c', '%s %s shm 0x22; ipcs -m | grep -c 0x' %
             (PYTHON, ipc_py)]
    r = run(['--', 'sh', '-c', '%s %s shm 0x11; "$@"; echo outer sees $(ipcs -m | grep -c 0x)'
             % (PYTHON, ipc_py), '-'] + inner, caller=caller)
    assert r.returncode == 0, r
    # inside the inner run: its own segment only; after it: the outer's only
    assert r.stdout.split() == ['1', 'outer', 'sees', '1'], r
    uid = UID[caller]
    assert r.report == [
        '# leaked ipc shm key=0x00000022 id=0 bytes=4096 owner=%d nattch=0' % uid,
        '# leaked ipc shm key=0x00000011 id=0 bytes=4096 owner=%d nattch=0' % uid], r


@pytest.mark.parametrize('caller', CALLERS)
def test_ipc_host_shares_the_hosts_and_reports_what_it_made(caller, ipc_py, scratch):
    key = 0x5eed0002
    before = host_sysvipc()
    host = host_segment(ipc_py, key)
    try:
        r = run(['--ipc', 'host', '--', 'sh', '-c', 'ipcs -m | grep -c 0x5eed0002; %s %s shm 0x33'
                 % (PYTHON, ipc_py)], caller=caller)
        assert r.returncode == 0, r
        assert r.stdout.split() == ['1'], r  # the host's segment is visible
        # the run's segment is left on the host (only the run's is reported)
        made, = [ident for kind, k, ident in host_sysvipc() - before if k == str(0x33)]
        assert r.report == ['# leaked ipc shm key=0x00000033 id=%s bytes=4096 owner=%d '
                            'nattch=0' % (made, UID[caller])], r
    finally:
        subprocess.call(['ipcrm', '-m', host])
        remove_host_objects(before)
    r = run(['--ipc', 'host', '--probe'], caller=caller)
    assert '-ipc (disabled by --ipc host)' in r.stdout, r


@pytest.mark.parametrize('caller', CALLERS)
def test_fallback_reports_what_the_command_made_and_leaves_it(caller, ipc_py):
    before = host_sysvipc()
    try:
        r = run(['--', PYTHON, ipc_py, 'shm', '0x44'], caller=caller, sandbox=True)
        assert r.returncode == 0, r
        made = host_sysvipc() - before
        assert [kind for kind, _, _ in made] == ['shm']
        assert r.report[0].startswith('# user namespaces not available'), r
        assert r.report[1:] == [
            '# leaked ipc shm key=0x00000044 id=%s bytes=4096 owner=%d nattch=0'
            % (list(made)[0][2], UID[caller])], r
    finally:
        remove_host_objects(before)
    r = run(['--probe'], caller=caller, sandbox=True)
    assert re.search(r' -ipc \(no (userns|mountns)\) ', r.stdout), r


@pytest.mark.parametrize('caller', CALLERS)
def test_probe_says_ipc(caller):
    r = run(['--probe'], caller=caller)
    assert r.returncode == 0, r
    assert '+ipc' in r.stdout.split(), r


# -- fault matrix -------------------------------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_a_segment_attached_by_a_leaked_process(caller, ipc_py):
    before = host_sysvipc()
    r = run(['--', 'sh', '-c', '%s %s attach 0x55 > /tmp/out & until grep -qs attached /tmp/out;'
             ' do sleep 0.01; done' % (PYTHON, ipc_py)], caller=caller)
    assert r.returncode == 0, r
    ipc = [l for l in r.report if l.startswith('# leaked ipc ')]
    # listed while the process still held it, then killed with it
    assert ipc == ['# leaked ipc shm key=0x00000055 id=0 bytes=4096 owner=%d nattch=1'
                   % UID[caller]], r
    assert any(l.startswith('# leaked pid=') and 'attach' in l for l in r.report), r
    assert host_sysvipc() == before


@pytest.mark.parametrize('caller', CALLERS)
def test_a_sigkilled_test_holding_a_segment(caller, ipc_py):
    before = host_sysvipc()
    r = run(['--', PYTHON, ipc_py, 'attach', '0x66', 'kill'], caller=caller)
    assert r.returncode == 137, r
    assert r.report == ['# leaked ipc shm key=0x00000066 id=0 bytes=4096 owner=%d nattch=0'
                        % UID[caller]], r
    assert host_sysvipc() == before


@pytest.mark.parametrize('caller', CALLERS)
def test_32000_objects_keep_the_report_bounded(caller, ipc_py, scratch):
    report = os.path.join(scratch, 'report.json')
    r = run(['--report', report, '--', PYTHON, ipc_py, 'many', '32000'], caller=caller,
            timeout=120)
    assert r.returncode == 0, r
    lines = [l for l in r.report if l.startswith('# leaked ipc ')]
    assert len(lines) == 100 and lines[0].startswith('# leaked ipc sem key=0x00010000 id=0 '), r
    assert r.report[-1] == '# ... and 31900 more leaked ipc objects', r
    with open(report) as f:
        data = json.load(f)
    assert data['counts']['leaked_ipc'] == 32000 and len(data['leaked_ipc']) == 1000
    assert data['truncated'] == ['leaked_ipc']


RECIPES = """
[private]
recipe = slapos.recipe.isolatedtest
command-line = {python} {ipc_py} shm 0x77
wrapper-path = ${{buildout:directory}}/private

[host]
<= private
ipc = host
wrapper-path = ${{buildout:directory}}/host

[suite-host]
recipe = slapos.recipe.isolatedtest:suite
ipc = host
test-cases =
  segment {python} {ipc_py} shm 0x88
wrapper-path = ${{buildout:directory}}/suite-host
"""


@pytest.mark.parametrize('caller', CALLERS)
def test_recipe_option(caller, ipc_py, scratch, src):
    """ipc = host in the wrapper and suite recipes (private by default)."""
    r = buildout(scratch, buildout_section('private host suite-host', src, scratch) +
                 RECIPES.format(python=PYTHON, ipc_py=ipc_py))
    assert r.returncode == 0, r
    with open(os.path.join(scratch, 'private')) as f:
        assert "'host'" not in f.read()  # a default wrapper is written as before
    prefix = AS_NOBODY if caller == 'nobody' else []
    before = host_sysvipc()
    try:
        for name, key, on_host in (('private', 0x77, False), ('host', 0x77, True),
                                   ('suite-host', 0x88, True)):
            proc = subprocess.run(prefix + [os.path.join(scratch, name)], cwd='/', timeout=120,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert proc.returncode == 0, proc.stdout
            assert b'# leaked ipc shm key=0x%08x ' % key in proc.stdout, proc.stdout
            assert any(k == str(key) for _, k, _ in host_sysvipc() - before) == on_host, name
            remove_host_objects(before)
    finally:
        remove_host_objects(before)
