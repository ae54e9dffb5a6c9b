"""Subordinate ids (issue 13, item 2): a non-root caller with ranges in
/etc/subuid and /etc/subgid gets them mapped (newuidmap/newgidmap), so that
"another user" is a mapped id and the kernel answers EPERM as on the host,
not EINVAL; without them, only the caller is mapped, as before.

The host has no such ranges and the tests do not give it any: each run is
made in a mount namespace of its own where /etc is a copy with them (and,
for the failure case, /usr/bin/newuidmap a copy without its setuid bit).
newuidmap is setuid root and reads /etc/subuid from its caller's mount
namespace, as isolate-exec does."""
import os
import re
import subprocess
import time

import pytest

from conftest import (AS_NOBODY, CHECKOUT, ISOLATE_EXEC, NOBODY_UID, SCRATCH_ROOT, Result, buildout,
                      buildout_section, command_line, py27_env, run)

RANGE = 'nobody:200000:65536'
# a private /etc giving subordinate ids (the host's is not changed)
WITH_SUBIDS = os.path.join(CHECKOUT, '.ci', 'with-subids')


def newuidmap_installed():
    for tool in ('/usr/bin/newuidmap', '/usr/bin/newgidmap'):
        assert os.path.exists(tool), '%s missing: .ci/setup installs Debian\'s uidmap' % tool


def run_with_subids(args, subuid=RANGE, subgid=RANGE, variant='', python='py3', timeout=60,
                    tool=None):
    """Run isolate-exec args (or the tool argv) as nobody, where /etc/subuid
    and /etc/subgid hold subuid and subgid. -> Result"""
    newuidmap_installed()
    env = dict(os.environ, SCRATCH=SCRATCH_ROOT)
    if python == 'py27':
        env = py27_env(env)
    argv = (['unshare', '--mount', WITH_SUBIDS, subuid, subgid, variant] +
            (AS_NOBODY + tool + list(args) if tool else
             command_line(args, caller='nobody', python=python)))
    start = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=SCRATCH_ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError('timeout: %r\n%s\n%s' % (argv, out, err))
    return Result(proc, out, err, time.time() - start)


def sh(script):
    return ['--', 'sh', '-c', script]


ID_CHECKS = ('cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; '
             'touch /tmp/f "$OUT/f"; chown 0 /tmp/f 2>&1; chgrp 0 /tmp/f 2>&1; '
             'python3 -c "import os; os.setuid(0)" 2>&1 | tail -n 1; true')


def map_lines(text):
    return [tuple(int(n) for n in line.split()) for line in text.splitlines()
            if len(line.split()) == 3 and line.split()[0].isdigit()]


def test_probe():
    r = run_with_subids(['--probe'])
    assert r.returncode == 0, r
    assert r.stdout.split()[:2] == ['+userns', '+subids'], r
    r = run_with_subids(['--subids', 'off', '--probe'])
    assert r.stdout.startswith('+userns -subids (disabled by --subids off) '), r
    r = run_with_subids(['--probe'], subgid='')
    assert r.stdout.startswith('+userns -subids (no subordinate gids for nobody in '
                               '/etc/subgid) '), r
    # this machine: none for nobody (the tests never give it any)
    r = run(['--probe'], caller='nobody')
    assert r.stdout.startswith('+userns -subids (no subordinate uids for nobody in '
                               '/etc/subuid) '), r
    r = run(['--probe'])
    assert 'subids' not in r.stdout, r  # root maps nothing


@pytest.mark.parametrize('python', ('py3', 'py27'))
def test_other_ids_are_mapped_and_refused_with_eperm(python, scratch):
    os.environ['OUT'] = scratch
    try:
        r = run_with_subids(sh(ID_CHECKS), python=python)
    finally:
        del os.environ['OUT']
    assert r.returncode == 0, r
    # the caller is itself, ids below 65536 are the others; identity in the
    # command's namespace (the supervisor's maps them to 200000...)
    own = (NOBODY_UID, NOBODY_UID, 1)
    assert map_lines(r.stdout) == [own, (0, 0, NOBODY_UID), (65535, 65535, 1)] * 2, r
    lines = r.stdout.splitlines()
    assert lines[6:8] == [str(NOBODY_UID)] * 2, r
    assert "chown: changing ownership of '/tmp/f': Operation not permitted" in lines, r
    assert "chgrp: changing group of '/tmp/f': Operation not permitted" in lines, r
    assert lines[-1] == 'PermissionError: [Errno 1] Operation not permitted', r
    st = os.stat(os.path.join(scratch, 'f'))  # the host sees the caller's own ids
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, NOBODY_UID)
    assert r.report == ['# leaked /tmp/f'], r


def test_without_subids_other_ids_are_unmapped(scratch):
    os.environ['OUT'] = scratch
    try:
        r = run_with_subids(['--subids', 'off'] + sh(ID_CHECKS))
    finally:
        del os.environ['OUT']
    assert map_lines(r.stdout) == [(NOBODY_UID, NOBODY_UID, 1)] * 2, r
    assert "chown: changing ownership of '/tmp/f': Invalid argument" in r.stdout, r
    assert r.stdout.splitlines()[-1] == 'OSError: [Errno 22] Invalid argument', r


def test_a_failing_newuidmap_maps_the_caller_only(scratch):
    r = run_with_subids(sh('cat /proc/self/uid_map; touch /tmp/f'), variant='broken-newuidmap')
    assert r.returncode == 0, r
    assert map_lines(r.stdout) == [(NOBODY_UID, NOBODY_UID, 1)], r
    assert r.report[0].startswith('# subordinate ids not mapped (newuidmap: '), r
    assert r.report[1:] == ['# leaked /tmp/f'], r  # still isolated and checked
    r = run_with_subids(['--probe'], variant='broken-newuidmap')
    assert r.returncode == 0 and r.stdout.startswith('+userns -subids (newuidmap: '), r


def test_a_nested_run_maps_the_caller_only():
    # inside, the host's root is unmapped: newuidmap's setuid bit is void
    r = run_with_subids(['--', ISOLATE_EXEC, '--probe'])
    assert r.returncode == 0, r
    assert r.stdout.startswith('+userns -subids (/usr/bin/newuidmap is not owned by root '
                               'here) '), r
    assert r.stderr == '', r


CPYTHON_TESTS = ['/usr/bin/python3', '-m', 'test', '-v', 'test_os', 'test_subprocess']
EINVAL_ERRORS = [
    'ERROR: test_chown_without_permission (test.test_os.ChownFileTests.'
    'test_chown_without_permission)',
    'ERROR: test_group (test.test_subprocess.POSIXProcessTestCase.test_group) '
    '(group=65533, close_fds=False)',
    'ERROR: test_group (test.test_subprocess.POSIXProcessTestCase.test_group) '
    '(group=65533, close_fds=True)',
    'ERROR: test_user (test.test_subprocess.POSIXProcessTestCase.test_user) '
    '(user=65533, close_fds=False)',
    'ERROR: test_user (test.test_subprocess.POSIXProcessTestCase.test_user) '
    '(user=65533, close_fds=True)',
]


def test_cpython_test_os_and_test_subprocess_pass_as_nobody():
    """CPython's own tests of os and subprocess (Debian's
    libpython3.11-testsuite, which .ci/setup installs) as a non-root caller:
    all pass with subordinate ids, as they do without isolate-exec; with
    the caller mapped alone, five fail with EINVAL."""
    assert subprocess.call(['/usr/bin/python3', '-c', 'import test.test_os, test.test_subprocess'
                            ]) == 0, 'CPython tests missing: .ci/setup installs them'
    r = run_with_subids(['--'] + CPYTHON_TESTS, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '\nTests result: SUCCESS\n' in r.stdout, r.stdout[-3000:]
    r = run_with_subids(['--subids', 'off', '--'] + CPYTHON_TESTS, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = sorted(set(l for l in r.stdout.splitlines() if l.startswith(('ERROR:', 'FAIL:'))))
    assert errors == EINVAL_ERRORS, r.stdout[-3000:]


RECIPES = '''
[auto]
recipe = slapos.recipe.isolatedtest
command-line = cat /proc/self/uid_map
wrapper-path = ${buildout:directory}/auto

[off]
<= auto
subids = off
wrapper-path = ${buildout:directory}/off

[suite-off]
recipe = slapos.recipe.isolatedtest:suite
subids = off
test-cases =
  uid-map cat /proc/self/uid_map
wrapper-path = ${buildout:directory}/suite-off
'''


def test_recipe_option(scratch, src):
    """subids = off in the wrapper and suite recipes (auto by default)."""
    r = buildout(scratch, buildout_section('auto off suite-off', src, scratch) + RECIPES)
    assert r.returncode == 0, r
    with open(os.path.join(scratch, 'auto')) as f:
        auto = f.read()
    with open(os.path.join(scratch, 'off')) as f:  # a default wrapper is written as before
        assert re.sub(r"\n *'off',", '', f.read()) == auto
    r = run_with_subids([], tool=[os.path.join(scratch, 'auto')])
    assert map_lines(r.stdout) == [(NOBODY_UID, NOBODY_UID, 1), (0, 0, NOBODY_UID),
                                   (65535, 65535, 1)], r
    r = run_with_subids([], tool=[os.path.join(scratch, 'off')])
    assert map_lines(r.stdout) == [(NOBODY_UID, NOBODY_UID, 1)], r
    r = run_with_subids([], tool=[os.path.join(scratch, 'suite-off')])
    assert map_lines(r.stdout) == [(NOBODY_UID, NOBODY_UID, 1)], r
    assert r.stdout.endswith('# ran 1 test case:  1\u00b7ok\n'), r
