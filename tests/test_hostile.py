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

from conftest import (AS_NOBODY, CALLERS, ISOLATE_EXEC, MODES, PYTHON, command_line,
                      descendants, host_mounts, pid_alive, run, start, tmpfs_paths, wait_for)

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


def test_fake_proc_hides_nothing_as_nobody_with_strict(scratch):
    """As nobody too, a tmpfs over /proc with a copied mountinfo: --strict
    still exits 3 (the supervisor reads its own /proc)."""
    r = run(['--strict', '--kill-timeout', '0.5'] +
            sh('cp /proc/self/mountinfo /tmp/mi; mkdir /tmp/m; mount -t tmpfs hidden /tmp/m; '
               'mount -t tmpfs fake /proc; mkdir /proc/self; cp /tmp/mi /proc/self/mountinfo'),
            caller='nobody')
    assert r.returncode == 3, r
    assert [l for l in r.report if l.startswith('# leaked mount: hidden /tmp/m tmpfs')]


# -- 4. --report is written safely ------------------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_report_into_a_device_is_written_in_place(caller, scratch):
    """A character device (a private copy of /dev/null's node) stays one."""
    node = scratch + '/null'
    subprocess.check_call(['mknod', '-m', '666', node, 'c', '1', '3'])
    r = run(['--report', node] + sh('touch /tmp/x'), caller=caller)
    assert r.returncode == 0, r
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert os.listdir(scratch) == ['null']  # no temporary file left


@pytest.mark.parametrize('caller', CALLERS)
def test_report_to_dev_stdout(caller, scratch):
    """A symbolic link to /proc/self/fd/1 (what /dev/stdout is; a private
    one, so that a regression cannot replace the host's), a pipe of the
    caller's own: the report goes into the pipe, the link stays."""
    stdout = scratch + '/stdout'
    os.symlink('/proc/self/fd/1', stdout)
    argv = command_line(['--report', stdout] + sh('touch /tmp/x'), caller)
    if caller == 'nobody':  # a pipe of nobody's (the harness's is root's)
        argv = argv[:len(AS_NOBODY)] + ['sh', '-c', '"$@" | cat', '-'] + argv[len(AS_NOBODY):]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, cwd='/')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['leaked_files'] == ['/tmp/x']
    assert os.readlink(stdout) == '/proc/self/fd/1'


def test_report_does_not_follow_another_users_symlink_in_a_sticky_directory(scratch):
    shared = scratch + '/shared'
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    victim = scratch + '/root-only'
    with open(victim, 'w') as f:
        f.write('secret')
    os.chmod(victim, 0o600)
    subprocess.check_call(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
                           'ln', '-s', victim, shared + '/r.json'])
    r = run(['--report', shared + '/r.json'] + sh('touch /tmp/x'))
    assert r.returncode == 0, r
    assert ('isolate-exec: write report %s/r.json: a symbolic link of another user in a sticky '
            'world-writable directory: not followed' % shared) in r.stderr
    with open(victim) as f:
        assert f.read() == 'secret'
    assert os.listdir(shared) == ['r.json']


def test_report_directory_swapped_during_the_run(scratch):
    """The directory is opened before the run: a swap for a symbolic link to
    elsewhere does not move the report there."""
    directory, elsewhere = scratch + '/reports', scratch + '/elsewhere'
    os.mkdir(directory)
    os.mkdir(elsewhere)
    r = run(['--report', directory + '/r.json'] +
            sh('mv %s %s.moved && ln -s %s %s' % (directory, directory, elsewhere, directory)))
    assert r.returncode == 0, r
    assert os.listdir(elsewhere) == []
    assert os.listdir(directory + '.moved') == ['r.json']


# -- 5./6. fallback cleanup ------------------------------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_fallback_cleanup_does_not_follow_a_swapped_tmpdir(caller, scratch):
    victim = scratch + '/victim'
    os.mkdir(victim)
    open(victim + '/precious', 'w').close()
    os.chmod(victim, 0o777)
    r = run(['--userns', 'off'] + sh('touch $TMPDIR/own; mv "$TMPDIR" "$TMPDIR.x"; '
                                     'ln -s %s "$TMPDIR"; echo $TMPDIR' % victim), caller=caller)
    assert r.returncode == 0, r
    assert os.listdir(victim) == ['precious']
    private = r.stdout.strip()
    assert '# leaked %s/own' % private in r.report
    assert not os.path.exists(private + '.x/own')


def test_fallback_cleanup_does_not_cross_a_bind_mount(scratch):
    """A root test bind-mounts a directory of the same file system into its
    TMPDIR: its files are not deleted (run inside `unshare -m`)."""
    victim = scratch + '/victim'
    os.mkdir(victim)
    open(victim + '/precious', 'w').close()
    r = run_contained(['--userns', 'off'] +
                      sh('mkdir $TMPDIR/b && mount --bind %s $TMPDIR/b && echo $TMPDIR' % victim),
                      'root')
    assert r.returncode == 0, r
    assert os.listdir(victim) == ['precious']
    private = r.stdout.strip()
    assert '# could not remove %s/b/' % private in r.report  # a mount point
    os.rmdir(private + '/b')  # unmounted with the test's namespace
    os.rmdir(private)


@pytest.mark.parametrize('caller', CALLERS)
def test_fallback_read_only_subdirectory_is_reported_and_removed(caller, scratch):
    r = run(['--userns', 'off', '--strict', '--report', scratch + '/r.json'] +
            sh('mkdir $TMPDIR/d; touch $TMPDIR/d/f; chmod 500 $TMPDIR/d; echo $TMPDIR'),
            caller=caller)
    private = r.stdout.strip()
    assert r.returncode == 3, r
    assert not os.path.exists(private)
    with open(scratch + '/r.json') as f:
        report = json.load(f)
    assert report['leaked'] is True and report['complete'] is True
    assert report['leaked_files'] == [private + '/d/', private + '/d/f']


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('caller', CALLERS)
def test_test_deletes_its_tmpdir_or_runs_in_an_unreadable_directory(caller, mode, scratch):
    cwd = scratch + '/searchable'
    os.mkdir(cwd, 0o711)
    r = run(sh('rm -rf "${TMPDIR:-/tmp/none}"; pwd'), caller=caller,
            sandbox=mode == 'fallback', cwd=cwd)
    assert r.returncode == 0, r
    assert r.stdout == cwd + '\n'
    assert 'Traceback' not in r.stderr


# -- 7. processes that try to escape the process check -----------------------------------

THREAD_LEFT = ('import ctypes, os, threading, time\n'
               'if os.fork() == 0:\n'
               '    os.setsid()\n'
               '    threading.Thread(target=time.sleep, args=(1000,)).start()\n'
               '    open(%r, "w").write(str(os.getpid()))\n'
               '    ctypes.CDLL(None).pthread_exit(None)  # the main thread only\n'
               'while not os.path.exists(%r): time.sleep(0.01)\n'
               'time.sleep(0.2)\n')


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('caller', CALLERS)
def test_process_whose_main_thread_exited_is_a_leak(caller, mode, scratch):
    pidfile = scratch + '/pid'
    r = run(['--kill-timeout', '0.5', '--', PYTHON, '-c', THREAD_LEFT % (pidfile, pidfile)],
            caller=caller, sandbox=mode == 'fallback')
    assert r.returncode == 0, r
    assert [l for l in r.report if l.startswith('# leaked pid=') and "'python3'" in l], r
    if mode == 'fallback':  # the pid is the host's: it must be gone
        with open(pidfile) as f:
            assert not pid_alive(int(f.read()))


FORK_ON_TERM = ('import os, signal, time\n'
                'def again(*args):\n'
                '    if os.fork() == 0: time.sleep(1000)\n'
                'if os.fork() == 0:\n'
                '    os.setsid(); signal.signal(signal.SIGTERM, again)\n'
                '    open(%r, "w").close()\n'
                '    while True: time.sleep(1000)\n'
                'while not os.path.exists(%r): time.sleep(0.01)\n')


@pytest.mark.parametrize('mode', MODES)
def test_process_forking_on_each_sigterm_does_not_outlive_the_run(mode, scratch):
    ready = scratch + '/ready'
    before = set(int(p) for p in os.listdir('/proc') if p.isdigit())
    r = run(['--kill-timeout', '0.3', '--', PYTHON, '-c', FORK_ON_TERM % (ready, ready)],
            caller='nobody', sandbox=mode == 'fallback', timeout=60)
    assert r.returncode == 0, r
    assert [l for l in r.report if l.startswith('# killed pid=')]
    left = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in before and
            pid_alive(int(p)) and 'time.sleep(1000)' in open('/proc/%s/cmdline' % p).read()]
    assert left == []


def test_kill_0_from_a_fallback_test_does_not_kill_isolate_exec(scratch):
    r = run(sh('touch $TMPDIR/x; kill -9 0'), caller='nobody', sandbox=True)
    assert r.returncode == 137, r
    assert [l for l in r.report if l.startswith('# leaked ') and l.endswith('/x')]


# -- 8. closed standard streams -------------------------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_closed_stdout_and_stderr(caller, scratch):
    argv = command_line(['--report', scratch + '/r.json', '--', PYTHON, '-c',
                         'import os\n'
                         'def state(fd):\n'
                         '    try: return os.fstat(fd) and "open"\n'
                         '    except OSError: return "closed"\n'
                         'states = [state(fd) for fd in (1, 2)]  # before opening anything\n'
                         'open("/tmp/x", "w").close(); open(%r, "w").write(" ".join(states))'
                         % (scratch + '/fds')], caller)
    proc = subprocess.run(['sh', '-c', 'exec "$@" >&- 2>&-', '-'] + argv, timeout=60, cwd='/')
    assert proc.returncode == 0
    with open(scratch + '/r.json') as f:
        assert json.load(f)['leaked_files'] == ['/tmp/x']
    with open(scratch + '/fds') as f:
        assert f.read() == 'closed closed'  # the command gets them closed too
    proc = subprocess.run(['sh', '-c', 'exec "$@" >&-', '-'] + command_line(['--', 'true'], caller),
                          stderr=subprocess.PIPE, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, b'')


# -- 9. the report is bounded -----------------------------------------------------------------

def test_deep_tree_report_is_bounded(scratch):
    r = run(['--report', scratch + '/r.json', '--', PYTHON, '-c',
             'import os\nos.chdir("/tmp")\nfor i in range(20000):\n    os.mkdir("a"); os.chdir("a")\n'],
            caller='nobody', timeout=120)
    assert r.returncode == 0, r
    assert os.path.getsize(scratch + '/r.json') < 12 << 20
    assert len(r.err) < 200 << 10
    with open(scratch + '/r.json') as f:
        report = json.load(f)
    assert report['counts']['leaked_files'] == 20000
    assert 'leaked_files' in report['truncated'] and len(report['leaked_files']) < 20000
    assert r.report[-1].startswith('# ... and 19900 more leaked files (--report FILE lists the first ')


def test_huge_argv_and_many_mounts_are_bounded(scratch):
    script = ('import ctypes, os, subprocess, sys\n'
              'libc = ctypes.CDLL(None, use_errno=True)\n'
              'for i in range(300):\n'
              '    os.mkdir("/tmp/m%d" % i)\n'
              '    assert libc.mount(b"x", b"/tmp/m%d" % i, b"tmpfs", 0, None) == 0\n'
              'for i in range(50):  # 1 MB of argv each\n'
              '    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"] +\n'
              '                     ["y" * 1000] * 1000, start_new_session=True)\n'
              'import time; time.sleep(0.3)\n')
    r = run(['--kill-timeout', '0.5', '--report', scratch + '/r.json', '--', PYTHON, '-c', script],
            caller='nobody', timeout=120)
    assert r.returncode == 0, r
    assert len(r.err) < 400 << 10
    assert len([l for l in r.report if l.startswith('# leaked mount: ')]) == 100
    assert '# ... and 200 more leaked mounts' in r.report
    assert max(len(l) for l in r.err.splitlines()) <= 4096
    with open(scratch + '/r.json') as f:
        report = json.load(f)
    assert report['counts']['leaked_mounts'] == 300 and report['counts']['leaked_processes'] == 50
    assert all(p['argv'][-1] == '...' for p in report['leaked_processes'])


# -- 10. smaller ones ---------------------------------------------------------------------------

def test_terminal_escapes_and_bidi_overrides_are_escaped(scratch):
    r = run(sh('d=$(printf "/tmp/\\033[31mred"); mkdir "$d" && mount -t tmpfs x "$d"; '
               'touch "$(printf "/tmp/evil\\342\\200\\256txt.exe")"'), caller='nobody')
    assert r.returncode == 0, r
    assert '\x1b' not in r.stderr and '\u202e' not in r.stderr
    assert '# leaked mount: x /tmp/\\x1b[31mred tmpfs' in r.stderr
    assert '# leaked /tmp/evil\\u202etxt.exe' in r.report


def test_json_report_is_written_before_a_blocking_stderr(scratch):
    """More than a pipe buffer of report on a stderr nobody reads yet: the
    JSON report is already there."""
    long_dir = '/'.join(['d' * 250] * 4)  # 100 lines of ~1 KB: twice a pipe buffer
    script = 'mkdir -p /tmp/%s; ' % long_dir + ''.join(
        'touch /tmp/%s/%03d; ' % (long_dir, i) for i in range(100))
    argv = command_line(['--report', scratch + '/r.json'] + sh(script), 'nobody')
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd='/')
    try:
        wait_for(lambda: os.path.exists(scratch + '/r.json'), timeout=30, what='the JSON report')
    finally:
        err = proc.communicate(timeout=30)[1]
    assert len(err) > 64 << 10 and proc.returncode == 0


def test_sigkill_of_isolate_exec_in_fallback_cleans_up(scratch):
    """isolate-exec killed with SIGKILL in fallback mode: its supervisor
    stops the command (SIGTERM, then SIGKILL), kills what it left and removes
    the private TMPDIR."""
    out = scratch + '/out'
    p = start(['--kill-timeout', '0.5'] +
              sh('trap "" TERM; touch $TMPDIR/x; (setsid sleep 1000 &); echo $TMPDIR > %s; '
                 'sleep 1000' % out), caller='nobody', sandbox=True, stderr=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(out) and os.path.getsize(out), what='the run')
    run_pids = descendants(p.pid)
    p.kill()
    p.wait()
    with open(out) as f:
        private = f.read().strip()
    wait_for(lambda: not [pid for pid in run_pids if pid_alive(pid)], timeout=10,
             what='the run to end')
    assert not os.path.exists(private)


def test_user_name_from_the_environment_is_not_trusted(scratch):
    """A uid without a passwd entry gets one named after $USER only if that
    is a plain name: a ':' or a newline would add fields or users."""
    env = dict(os.environ, USER='evil:x:0:0::/:/bin/sh\nroot2', LOGNAME='')
    proc = subprocess.run(['setpriv', '--reuid=12345', '--regid=12345', '--clear-groups',
                           ISOLATE_EXEC, 'cat', '/etc/passwd'], env=env, cwd='/',
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr
    users = proc.stdout.decode().splitlines()
    assert [u.split(':')[0] for u in users] == ['user12345', 'root', 'nobody']
    assert users[0].split(':')[2] == '12345'
