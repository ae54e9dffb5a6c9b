"""isolate-exec against hostile and broken tests (issue: never run a command
twice, never fail open, never touch what is not the run's). Each test is a
payload a real test could run, for real, as root and as nobody, isolated and
in the real no-userns sandbox where it applies. Root payloads that could
touch the host run inside `unshare -m` (a private mount namespace of the
test's own), so that a regression cannot change the machine."""
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from conftest import (CALLERS, ISOLATE_EXEC, NO_USERNS_REASON, PYTHON, command_line,
                      descendants, host_mounts, pid_alive, run, start, tmpfs_paths, wait_for)

MODES = ('isolated', 'fallback')
CONTAINED = ['unshare', '-m', '--propagation', 'private']


def sh(script):
    return ['--', 'sh', '-c', script]


def contained(caller):
    """Root runs hostile payloads in a mount namespace of the test's own."""
    return CONTAINED if caller == 'root' else []


def run_contained(args, caller, **kw):
    argv = contained(caller) + command_line(args, caller, kw.pop('sandbox', False))
    start_time = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=kw.pop('cwd', '/'), **kw)
    out, err = proc.communicate(timeout=120)
    from conftest import Result
    return Result(proc, out, err, time.time() - start_time)


def runs(r):
    """How many times the payload printed RUN (on stderr)."""
    return r.stderr.splitlines().count('RUN')


# -- 1. the command never runs a second time -----------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_leaked_mount_with_carriage_return_in_its_path(caller, scratch):
    r = run_contained(['--strict', '--report', scratch + '/r.json'] +
                      sh('echo RUN >&2; d=$(printf "/tmp/a\\rb"); mkdir "$d" && '
                         'mount -t tmpfs x "$d"; exit 1'), caller)
    assert runs(r) == 1, r
    assert r.returncode == 1  # the command's own status, kept by --strict
    assert '# leaked mount: x /tmp/a\\rb tmpfs rw,nosuid,nodev,relatime' in ' '.join(r.report) \
        or [l for l in r.report if l.startswith('# leaked mount: x /tmp/a\\rb tmpfs')], r
    assert "# --strict: the run leaked; the command's own exit status 1 is kept" in r.report
    with open(scratch + '/r.json') as f:
        report = json.load(f)
    assert report['isolated'] is True and report['complete'] is True
    assert [m.split(' ')[1] for m in report['leaked_mounts']] == ['/tmp/a\rb']


@pytest.mark.parametrize('caller', CALLERS)
def test_tmpfs_mounted_over_proc(caller, scratch):
    """The supervisor reads processes and mounts through the /proc it opened
    before the command: a tmpfs over /proc hides nothing."""
    before = host_mounts()
    r = run_contained(['--strict', '--kill-timeout', '0.5', '--report', scratch + '/r.json'] +
                      sh('echo RUN >&2; (setsid sleep 1000 &); until pgrep -x sleep >/dev/null; '
                         'do :; done; mount -t tmpfs fake /proc'), caller)
    assert runs(r) == 1, r
    assert r.returncode == 3, r
    assert [l for l in r.report if l.startswith('# leaked mount: fake /proc tmpfs')]
    assert [l for l in r.report if l.endswith("'sleep' ['sleep', '1000']")]
    assert host_mounts() == before


@pytest.mark.parametrize('caller', CALLERS)
def test_fake_proc_with_a_copied_mountinfo(caller, scratch):
    """A fake /proc holding a copy of self/mountinfo made before the test's
    own mount and daemon: --strict still sees both."""
    script = ('echo RUN >&2; cp /proc/self/mountinfo /tmp/mi; mkdir /tmp/m; '
              'mount -t tmpfs hidden /tmp/m; (setsid sleep 1000 &); '
              'until pgrep -x sleep >/dev/null; do :; done; '
              'mount -t tmpfs fake /proc; mkdir /proc/self; cp /tmp/mi /proc/self/mountinfo')
    r = run_contained(['--strict', '--kill-timeout', '0.5'] + sh(script), caller)
    assert runs(r) == 1 and r.returncode == 3, r
    assert [l for l in r.report if l.startswith('# leaked mount: hidden /tmp/m tmpfs')]
    assert [l for l in r.report if l.endswith("'sleep' ['sleep', '1000']")]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('caller', CALLERS)
def test_caller_ignores_sigchld(caller, mode):
    """SIG_IGN for SIGCHLD is inherited through exec: the kernel would reap
    isolate-exec's children itself (waitpid: ECHILD)."""
    ignore = [PYTHON, '-c', 'import os, signal, sys\n'
              'signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n'
              'os.execvp(sys.argv[1], sys.argv[1:])']
    argv = command_line(sh('echo RUN >&2; touch ${TMPDIR:-/tmp}/x; exit 4'), caller,
                        sandbox=mode == 'fallback')
    i = argv.index(ISOLATE_EXEC)
    proc = subprocess.Popen(argv[:i] + ignore + argv[i:], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd='/')
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert err.splitlines().count('RUN') == 1, err
    assert proc.returncode == 4, err
    assert [l for l in err.splitlines() if l.startswith('# leaked /') and l.endswith('/x')]


@pytest.mark.parametrize('caller', CALLERS)
def test_empty_command_name(caller, scratch):
    r = run(['--', '', 'x'], caller=caller)
    assert (r.returncode, r.stderr) == (2, 'isolate-exec: empty command name\n')


@pytest.mark.parametrize('options', ['/tmp:ro', '/tmp:nr_inodes=1'])
def test_private_tmp_options_do_not_cause_a_fallback(options, scratch):
    """The user database is written on a scratch tmpfs of isolate-exec's own,
    not in the private /tmp: whatever its options, the run is isolated."""
    r = run(['--tmpfs', options, '--report', scratch + '/r.json'] +
            sh('echo RUN >&2; touch /tmp/x 2>/dev/null; id -un'), caller='nobody')
    assert runs(r) == 1 and r.returncode == 0, r
    assert r.stdout == 'nobody\n'
    assert not [l for l in r.report if 'not available' in l]
    with open(scratch + '/r.json') as f:
        assert json.load(f)['isolated'] is True


@pytest.mark.parametrize('caller', CALLERS)
def test_supervisor_dying_after_the_command_is_not_a_fallback(caller, scratch):
    """The supervisor is killed while it waits for a leaked daemon: the
    command ran once, isolate-exec says the report is incomplete and exits
    125 (the command succeeded, nothing proves the run clean)."""
    ready = scratch + '/ready'
    daemon = ('import os, signal, time\n'
              'if os.fork() == 0:\n'
              '    os.setsid(); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
              '    open(%r, "w").close(); time.sleep(1000)\n'
              'while not os.path.exists(%r): time.sleep(0.01)\n' % (ready, ready))
    p = start(['--kill-timeout', '30', '--', 'sh', '-c', 'echo RUN >&2; exec "$@"', '-',
               PYTHON, '-c', daemon], caller=caller, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(ready), what='daemon')
        supervisor = descendants(p.pid)[0]
        wait_for(lambda: len(descendants(supervisor)) == 1, what='the command to exit')
        time.sleep(0.3)  # the supervisor is now waiting for the daemon to end
        os.kill(supervisor, signal.SIGKILL)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode()
    assert err.splitlines().count('RUN') == 1, err
    assert p.returncode == 125, err
    assert 'isolate-exec: the supervisor died (signal 9); the leak report is incomplete' in err
    assert 'not available' not in err


@pytest.mark.parametrize('caller', CALLERS)
def test_userns_require_is_not_defeated_by_a_failing_check(caller, scratch):
    r = run_contained(['--userns', 'require', '--strict'] +
                      sh('echo RUN >&2; d=$(printf "/tmp/a\\rb"); mkdir "$d" && '
                         'mount -t tmpfs x "$d"'), caller)
    assert runs(r) == 1 and r.returncode == 3, r


# -- 2. the command cannot leave its private mounts ------------------------------------

PRIVATE = tmpfs_paths() + ['/proc', '/etc/passwd', '/etc/group']


@pytest.mark.parametrize('path', PRIVATE)
def test_private_mounts_are_locked_for_a_non_root_command(path, scratch):
    """Mounts made by isolate-exec are locked in the command's less
    privileged user namespace (Linux 3.12, commit 5ff9d8a65ce8): it can
    neither unmount them nor bind-mount what is beneath them."""
    marker = 'isolatedtest-escape-%d' % os.getpid()
    target = path if os.path.isdir(path) or path == '/proc' else os.path.dirname(path)
    script = ('umount %s; echo umount=$?; umount -l %s; echo umount-l=$?; '
              'mkdir -p /tmp/b; mount --bind / /tmp/b; echo bind=$?; '
              'touch %s/%s 2>/dev/null; true' % (path, path, target, marker))
    r = run(sh(script), caller='nobody')
    assert r.returncode == 0, r
    codes = dict(l.split('=') for l in r.stdout.split())
    assert codes == {'umount': '32', 'umount-l': '32', 'bind': '32'}, r
    assert not os.path.exists(os.path.join(target, marker))
    if path in tmpfs_paths():
        assert '# leaked %s/%s' % (path, marker) in r.report


def test_root_command_can_unmount_inside_its_own_namespace_only(scratch):
    """A root command keeps root's powers: it may unmount its private /tmp,
    in its own mount namespace; the host's mount table is not changed (here
    everything runs inside `unshare -m`, so the host's /tmp is not touched)."""
    before = host_mounts()
    r = run_contained(sh('umount -l /tmp && echo UNMOUNTED'), 'root')
    assert r.stdout == 'UNMOUNTED\n' and r.returncode == 0, r
    assert host_mounts() == before


# -- 3. the supervisor does not trust the command's /proc -------------------------------

def test_root_command_unmounting_proc_does_not_expose_host_processes(scratch):
    r = run_contained(['--report', scratch + '/r.json'] + sh('umount -l /proc; ls /proc | head -1'),
                      'root')
    assert r.returncode == 0, r
    with open(scratch + '/r.json') as f:
        report = json.load(f)
    assert report['leaked_processes'] == []
    assert [m for m in report['gone_mounts'] if m.startswith('proc /proc proc')]
