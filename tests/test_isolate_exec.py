"""isolate-exec, behaviour by behaviour (issue: the runtime), for real: real
namespaces, mounts and processes, as root and as nobody, isolated and in the
real no-userns sandbox, under Python 3 and 2.7."""
import glob
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import (CALLERS, ISOLATE_EXEC, MODES, NOBODY_UID, NO_USERNS_REASON, PYTHON,
                      descendants, host_mounts, need, pid_alive, process, run, start, _stat,
                      tmpfs_paths, wait_for)

PYTHONS = ('py3', 'py27')


def sh(script):
    return ['--', 'sh', '-c', script]


# -- 1. isolation -----------------------------------------------------------------

@pytest.mark.parametrize('python', PYTHONS)
@pytest.mark.parametrize('caller', CALLERS)
def test_private_tmpfs_fresh_and_invisible_outside(caller, python, scratch):
    paths = tmpfs_paths() + [scratch + '/db']
    host_files = []
    for path in tmpfs_paths():  # the host's files must not be visible inside
        host_file = os.path.join(path, 'isolatedtest-host-%d' % os.getpid())
        open(host_file, 'w').close()
        host_files.append(host_file)
    try:
        script = ''.join(
            'test -z "$(ls -A %s)" || { echo %s not empty; ls -A %s; exit 1; }; '
            'stat -f -c %%T %s; echo x > %s/inside; ' % (p, p, p, p, p) for p in paths)
        r = run(['--tmpfs', scratch + '/db:size=1m'] + sh(script), caller=caller, python=python)
    finally:
        for f in host_files:
            os.unlink(f)
    assert r.returncode == 0, r
    assert r.stdout.split() == ['tmpfs'] * len(paths)
    for p in paths:
        assert not os.path.exists(p + '/inside')
        assert '# leaked %s/inside' % p in r.report
    assert os.listdir(scratch + '/db') == []  # created as a mount point, left empty


@pytest.mark.parametrize('caller', CALLERS)
def test_nothing_visible_outside_during_the_run(caller, scratch):
    """Files and mounts made inside never show on the host, even while running."""
    ready = os.path.join(scratch, 'ready')
    before = host_mounts()
    p = start(sh('echo x > /tmp/during; mkdir /tmp/m; mount -t tmpfs inside /tmp/m; '
                 'mount -t tmpfs inside2 %s/mnt 2>/dev/null || mkdir %s/mnt2; '
                 'touch %s; sleep 30' % (scratch, scratch, ready)),
              caller=caller, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(ready), what='ready file')
        assert not os.path.exists('/tmp/during')
        assert not os.path.exists('/tmp/m')
        assert host_mounts() == before
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert host_mounts() == before


def test_concurrent_runs_do_not_see_each_other(scratch):
    procs = [start(sh('echo %d > /tmp/same; echo %d > /dev/shm/same; sleep 0.3; '
                      'cat /tmp/same /dev/shm/same' % (i, i)),
                   caller=CALLERS[i % 2], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(8)]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.split() == [str(i).encode()] * 2


@pytest.mark.parametrize('caller', CALLERS)
def test_working_directory_looked_up_again_after_mounting(caller):
    r = run(sh('pwd; echo x > here; ls /tmp'), caller=caller, cwd='/tmp')
    assert r.returncode == 0, r
    assert r.stdout.split() == ['/tmp', 'here']
    assert not os.path.exists('/tmp/here')


def test_working_directory_hidden_by_private_tmpfs(scratch):
    os.makedirs('/tmp/isolatedtest-cwd')
    try:
        r = run(sh('echo should not run'), cwd='/tmp/isolatedtest-cwd')
    finally:
        os.rmdir('/tmp/isolatedtest-cwd')
    assert r.returncode == 125
    assert r.stdout == ''
    assert r.stderr.splitlines() == [
        'isolate-exec: working directory /tmp/isolatedtest-cwd: No such file or directory '
        '(hidden by a private tmpfs)']


def test_working_directory_the_caller_cannot_look_up(scratch):
    """nobody inheriting root's working directory in /root: left as it is."""
    r = run(sh('pwd'), caller='nobody', cwd='/root')
    assert (r.returncode, r.stdout, r.stderr) == (0, '/root\n', '')


def test_tmpfs_options_are_applied(scratch):
    r = run(['--tmpfs', '/tmp:size=2m,mode=1700', '--tmpfs', scratch + '/ro:ro,size=1m',
             '--tmpfs', '/tmp/nested:size=3m'] +
            sh('df -k /tmp /tmp/nested /dev/shm | tail -n 3; stat -c %%a /tmp; '
               'grep -E " %s/ro " /proc/self/mountinfo' % scratch), caller='nobody')
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].split()[1] == '2048'
    assert lines[1].split()[1] == '3072'
    assert int(lines[2].split()[1]) > 3072  # /dev/shm: the kernel's default size
    assert lines[3] == '1700'
    assert ' ro,nosuid,nodev' in lines[4]
    assert r.report == []  # the nested mount point is not a leak


@pytest.mark.parametrize('caller', CALLERS)
def test_tmp_dir_variables_point_into_private_mounts(caller, scratch):
    env = dict(os.environ, TMPDIR=scratch, TMP='/tmp/x', TEMP=scratch + '/db')
    r = run(['--tmpfs', scratch + '/db'] + sh('echo $TMPDIR $TMP $TEMP'), caller=caller, env=env)
    # /tmp/x does not exist in the fresh /tmp: a temporary file there would fail
    assert r.stdout.split() == ['/tmp', '/tmp', scratch + '/db']


# -- 2./3. identity and capabilities ------------------------------------------------

def status_fields(text):
    return dict(l.split(':\t') for l in text.splitlines() if ':\t' in l)


def test_nobody_keeps_uid_and_gets_only_cap_sys_admin(scratch):
    own = os.path.join(scratch, 'own-readonly')
    with open(own, 'w') as f:
        f.write('x')
    os.chown(own, NOBODY_UID, NOBODY_UID)
    os.chmod(own, 0o444)
    r = run(sh('id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; '
               'cat /proc/self/status; mkdir /tmp/m && mount -t tmpfs none /tmp/m && echo MOUNTED; '
               'echo y >> %s || echo DENIED' % own), caller='nobody')
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[:2] == ['65534', '65534']
    assert lines[2].split() == ['65534', '65534', '1']
    assert lines[3].split() == ['65534', '65534', '1']
    caps = status_fields(r.stdout)
    for name in ('CapInh', 'CapPrm', 'CapEff', 'CapAmb'):
        assert caps[name] == '0000000000200000', name
    assert 'MOUNTED' in lines and 'DENIED' in lines
    with open(own) as f:
        assert f.read() == 'x'


def test_root_keeps_root_powers_without_user_namespace(scratch):
    other = os.path.join(scratch, 'secret')
    with open(other, 'w') as f:
        f.write('s3cret')
    os.chown(other, 1000, 1000)
    os.chmod(other, 0o600)
    r = run(sh('cat /proc/self/uid_map; grep CapEff /proc/self/status; cat %s' % other))
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].split() == ['0', '0', '4294967295']  # the initial user namespace
    with open('/proc/self/status') as f:
        assert lines[1] == [l for l in f.read().splitlines() if l.startswith('CapEff')][0]
    assert lines[2] == 's3cret'


def test_pid_namespace(scratch):
    r = run(sh('echo $$; ls /proc | grep "^[0-9]"'), caller='nobody')
    pids = [int(x) for x in r.stdout.split()]
    assert pids[0] == 2  # the supervisor is 1
    assert pids[1:3] == [1, 2] and max(pids) < 10


# -- 4. user database ----------------------------------------------------------------

def test_minimal_user_database_in_user_namespace():
    with open('/etc/passwd', 'rb') as f:
        passwd = f.read()
    with open('/etc/group', 'rb') as f:
        group = f.read()
    r = run(sh('cat /etc/passwd; echo ---; cat /etc/group; echo ---; '
               'touch /tmp/f && chgrp disk /tmp/f 2>&1; id -un; id -gn'), caller='nobody')
    assert r.returncode == 0, r
    users, groups, rest = r.stdout.split('---\n')
    assert [l.split(':')[0] for l in users.splitlines()] == ['nobody', 'root']
    assert [l.split(':')[0] for l in groups.splitlines()] == ['nogroup', 'root', 'disk']
    assert rest.splitlines()[-2:] == ['nobody', 'nogroup']
    with open('/etc/passwd', 'rb') as f:
        assert f.read() == passwd
    with open('/etc/group', 'rb') as f:
        assert f.read() == group


def test_root_sees_the_host_user_database():
    r = run(sh('cat /etc/passwd'))
    with open('/etc/passwd') as f:
        assert r.stdout == f.read()


# -- 5. probe and fallback -------------------------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_probe(caller):
    r = run(['--probe'], caller=caller)
    assert r.returncode == 0, r
    words = r.stdout.split()
    assert words[0] == ('+mountns' if caller == 'root' else '+userns')
    # FUSE: as /dev/fuse allows (0600 root here, 0666 with udev's rules)
    mode = os.stat('/dev/fuse').st_mode if os.path.exists('/dev/fuse') else 0
    if caller == 'root' or mode & 0o006 == 0o006:
        assert words[-1] == '+fuse', r
    else:
        assert r.stdout.endswith('-fuse (open /dev/fuse: Permission denied)\n'), r


@pytest.mark.parametrize('caller', CALLERS)
def test_probe_without_user_namespaces(caller):
    r = run(['--probe'], caller=caller, sandbox=True)
    assert r.returncode == 1, r
    name = 'mountns' if caller == 'root' else 'userns'
    assert r.stdout.startswith('-%s (%s) ' % (name, NO_USERNS_REASON[caller]))
    assert r.stderr == ''


@pytest.mark.parametrize('python', PYTHONS)
@pytest.mark.parametrize('caller', CALLERS)
def test_fallback_runs_with_private_tmpdir(caller, python, scratch):
    out = os.path.join(scratch, 'tmpdir')
    r = run(['--report', scratch + '/r.json'] +
            sh('echo $TMPDIR > %s; test "$TMPDIR" = "$TMP" -a "$TMP" = "$TEMP" || exit 9; '
               'touch $TMPDIR/leak; mkdir $TMPDIR/d; touch $TMPDIR/d/f; exit 4' % out),
            caller=caller, sandbox=True, python=python)
    assert r.returncode == 4, r
    with open(out) as f:
        private = f.read().strip()
    assert os.path.dirname(private) == '/tmp'
    assert os.path.basename(private).startswith('isolate-exec.')
    assert not os.path.exists(private)
    assert r.report == [
        '# user namespaces not available (%s)' % NO_USERNS_REASON[caller],
        '# leaked %s/leak' % private, '# leaked %s/d/' % private, '# leaked %s/d/f' % private]
    with open(scratch + '/r.json') as f:
        report = json.load(f)
    assert report['isolated'] is False
    assert report['reason'] == NO_USERNS_REASON[caller]
    assert report['leaked_files'] == [private + '/leak', private + '/d/', private + '/d/f']


@pytest.mark.parametrize('caller', CALLERS)
def test_fallback_kills_leaked_processes(caller, scratch):
    pidfile = os.path.join(scratch, 'pid')
    r = run(['--kill-timeout', '0.5'] +
            sh('(setsid sh -c "echo \\$\\$ > %s; exec sleep 1000" &); '
               'while ! test -s %s; do sleep 0.01; done' % (pidfile, pidfile)),
            caller=caller, sandbox=True)
    assert r.returncode == 0, r
    with open(pidfile) as f:
        pid = int(f.read())
    assert not pid_alive(pid)
    assert "# leaked pid=%d 'sleep' ['sleep', '1000']" % pid in r.report


def test_userns_off_is_fallback_on_purpose(scratch):
    r = run(['--userns', 'off', '--report', scratch + '/r.json'] + sh('echo $TMPDIR'),
            caller='nobody')
    assert r.returncode == 0
    assert r.stdout.startswith('/tmp/isolate-exec.')
    assert r.stderr == ''
    with open(scratch + '/r.json') as f:
        assert json.load(f)['reason'] == 'disabled by --userns off'


@pytest.mark.parametrize('caller', CALLERS)
def test_userns_require_refuses_to_run(caller, scratch):
    r = run(['--userns', 'require'] + sh('touch %s/ran' % scratch), caller=caller, sandbox=True)
    assert r.returncode == 125
    assert not os.path.exists(scratch + '/ran')
    assert r.stderr == (
        'isolate-exec: user namespaces not available (%s); not running sh '
        '(--userns require)\n' % NO_USERNS_REASON[caller])


# -- 6. leak report ---------------------------------------------------------------------

@pytest.mark.parametrize('python', PYTHONS)
@pytest.mark.parametrize('caller', CALLERS)
def test_leak_report(caller, python, scratch):
    r = run(['--report', scratch + '/r.json'] +
            sh('echo output; touch /tmp/a /dev/shm/seg; mkdir -p /tmp/d/e; touch /tmp/d/e/f; '
               'mkdir /tmp/sticky; chmod 1777 /tmp/sticky; touch /tmp/sticky/s; '
               'mkdir /tmp/m; mount -t tmpfs leak /tmp/m; umount /dev/shm 2>/dev/null; '
               '(setsid sh -c "echo \\$\\$ > /tmp/pid; exec sleep 1000" &); '
               'until test -s /tmp/pid && grep -q sleep /proc/$(cat /tmp/pid)/comm; do sleep 0.01; '
               'done; rm /tmp/pid; echo done'),
            caller=caller, python=python)
    assert r.returncode == 0, r
    assert r.stdout == 'output\ndone\n'
    report = r.report
    procs = [l for l in report if l.startswith('# leaked pid=')]
    assert len(procs) == 1 and procs[0].endswith(" 'sleep' ['sleep', '1000']")
    files = [l for l in report if l.startswith(('# leaked /', '# found'))]
    # the walk starts from the private tmpfs' roots: /dev/shm unmounted by
    # the command still is the run's own, and reported
    assert files == ['# leaked /tmp/a', '# leaked /tmp/d/', '# leaked /tmp/d/e/',
                     '# leaked /tmp/d/e/f', '# leaked /tmp/m/', '# found sticky /tmp/sticky/',
                     '# leaked /tmp/sticky/s', '# leaked /dev/shm/seg']
    mounts = [l for l in report if 'mount:' in l]
    assert mounts[0].startswith('# leaked mount: leak /tmp/m tmpfs rw,')
    if caller == 'root':  # a non-root command cannot unmount what isolate-exec mounted
        assert mounts[1].startswith('# gone mount: tmpfs /dev/shm tmpfs rw,nosuid,nodev')
    assert len(mounts) == (2 if caller == 'root' else 1)
    with open(scratch + '/r.json') as f:
        j = json.load(f)
    assert j['isolated'] is True and j['reason'] is None
    assert j['command'] == ['sh', '-c', r.stdout and j['command'][2]]
    assert j['exit_code'] == 0 and j['leaked'] is True
    assert 0 < j['duration_s'] < 30
    assert j['leaked_files'] == ['/tmp/a', '/tmp/d/', '/tmp/d/e/', '/tmp/d/e/f', '/tmp/m/',
                                 '/tmp/sticky/s', '/dev/shm/seg']
    assert j['sticky_dirs'] == ['/tmp/sticky/']
    assert j['leaked_mounts'][0].startswith('leak /tmp/m tmpfs rw,')
    assert [p['argv'] for p in j['leaked_processes']] == [['sleep', '1000']]
    assert [p['name'] for p in j['leaked_processes']] == ['sleep']


def test_report_comes_after_the_command_output(scratch):
    r = run(sh('touch /tmp/x; echo out; echo err >&2'), caller='nobody')
    assert r.stderr == 'err\n# leaked /tmp/x\n'


def test_clean_run_prints_nothing(scratch):
    r = run(sh('echo hi; touch /tmp/x; rm /tmp/x'), caller='nobody')
    assert (r.returncode, r.stdout, r.stderr) == (0, 'hi\n', '')


@pytest.mark.parametrize('caller', CALLERS)
def test_double_fork_daemon_ignoring_sigterm(caller, scratch):
    pidfile = os.path.join(scratch, 'pid')
    daemon = ('import os, signal, time\n'
              'signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
              'child = os.fork()\n'
              'if child == 0:\n'
              '    os.setsid()\n'
              '    if os.fork() == 0:\n'
              '        open(%r, "w").write(str(os.getpid()))\n'
              '        time.sleep(1000)\n'
              '    os._exit(0)\n'
              'os.waitpid(child, 0)\n' % pidfile)

    def find_daemon():  # as seen from the host: the pid it wrote is its pid in the run
        with open(pidfile) as f:
            own = f.read()
        for pid in descendants(p.pid):
            try:
                with open('/proc/%d/status' % pid) as f:
                    if re.search(r'^NSpid:.*\s%s$' % own, f.read(), re.M):
                        return process(pid)
            except (IOError, OSError):
                pass
    t0 = time.time()
    p = start(['--kill-timeout', '1', '--', PYTHON, '-c', daemon], caller=caller,
              stderr=subprocess.PIPE)
    hostpid = wait_for(lambda: os.path.exists(pidfile) and os.path.getsize(pidfile)
                       and find_daemon(),
                       what='daemon')
    assert pid_alive(hostpid)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0
    assert time.time() - t0 >= 1  # the grace period, at least (a lower bound only)
    assert not pid_alive(hostpid), (hostpid, _stat(hostpid[0]), err)
    lines = err.decode().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith('# leaked pid=') and "'python3'" in lines[0]
    assert lines[1].startswith('# killed pid=') and 'SIGKILL' in lines[1]


@pytest.mark.parametrize('caller', CALLERS)
def test_strict(caller, scratch):
    assert run(['--strict'] + sh('true'), caller=caller).returncode == 0
    r = run(['--strict'] + sh('touch /tmp/x'), caller=caller)
    assert r.returncode == 3
    assert r.report == ['# leaked /tmp/x', '# --strict: the run leaked: exit status 3']
    r = run(['--strict'] + sh('touch /tmp/x; exit 5'), caller=caller)
    assert r.returncode == 5
    assert r.report == ['# leaked /tmp/x',
                        "# --strict: the run leaked; the command's own exit status 5 is kept"]


# -- 7. exit status --------------------------------------------------------------------

@pytest.mark.parametrize('python', PYTHONS)
@pytest.mark.parametrize('caller', CALLERS)
def test_exit_status(caller, python, scratch):
    assert run(sh('exit 42'), caller=caller, python=python).returncode == 42
    r = run(sh('touch /tmp/x; kill -KILL $$'), caller=caller, python=python)
    assert r.returncode == 137 and r.report == ['# leaked /tmp/x']
    assert run(sh('kill -SEGV $$'), caller=caller, python=python).returncode == 139
    r = run(['--', 'no-such-command-x', 'arg'], caller=caller, python=python)
    assert r.returncode == 127
    assert r.stderr == 'isolate-exec: no-such-command-x: No such file or directory\n'
    noexec = os.path.join(scratch, 'noexec')
    open(noexec, 'w').close()
    r = run(['--', noexec], caller=caller, python=python)
    assert r.returncode == 126
    assert r.stderr == 'isolate-exec: %s: Permission denied\n' % noexec
    assert 'Traceback' not in r.stderr


# -- 8. signals -------------------------------------------------------------------------

@pytest.mark.parametrize('python', PYTHONS)
@pytest.mark.parametrize('caller', CALLERS)
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_are_forwarded(signum, caller, python, scratch):
    ready = os.path.join(scratch, 'ready')
    p = start(sh('trap "echo got %d; touch /tmp/x; exit 7" %d; touch %s; '
                 'while :; do sleep 0.05; done' % (signum, signum, ready)),
              caller=caller, python=python, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: os.path.exists(ready), what='ready file')
    p.send_signal(signum)
    out, err = p.communicate(timeout=30)
    assert out.decode() == 'got %d\n' % signum
    assert p.returncode == 7
    assert err.decode().splitlines() == ['# leaked /tmp/x']


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('caller', CALLERS)
def test_signals_ignored_by_the_caller_stay_ignored(caller, mode, scratch):
    """nohup isolate-exec COMMAND: a hangup neither ends isolate-exec nor
    reaches the command, which starts with SIGHUP ignored too."""
    ready, go = os.path.join(scratch, 'ready'), os.path.join(scratch, 'go')
    p = start(['--', PYTHON, '-c',
               'import os, signal, time\n'
               'print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)\n'
               'open(%r, "w").close()\n'
               'deadline = time.time() + 30\n'
               'while not os.path.exists(%r) and time.time() < deadline: time.sleep(0.02)\n'
               % (ready, go)],
              caller=caller, sandbox=mode == 'fallback', stdout=subprocess.PIPE,
              preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        wait_for(lambda: os.path.exists(ready), what='ready file')
        p.send_signal(signal.SIGHUP)
        open(go, 'w').close()
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert (p.returncode, out) == (0, b'True\n')


@pytest.mark.parametrize('caller', CALLERS)
def test_sigkill_of_isolate_exec_kills_the_run(caller, scratch):
    pidfile = os.path.join(scratch, 'pid')
    before = host_mounts()
    p = start(['--', PYTHON, '-c',
               'import os, time\n'
               'if os.fork() == 0:\n'
               '    os.setsid()\n'
               '    open(%r, "w").write(open("/proc/self/stat").read().split()[0])\n'
               '    time.sleep(1000)\n'
               'time.sleep(1000)\n' % pidfile], caller=caller)
    wait_for(lambda: os.path.exists(pidfile) and os.path.getsize(pidfile), what='pid file')
    # the pid file holds the pid inside the namespace: find the host pids
    run_pids = descendants(p.pid)
    assert len(run_pids) >= 3  # the supervisor, python, its setsid child
    p.kill()
    p.wait()
    wait_for(lambda: not any(pid_alive(pid) for pid in run_pids), timeout=1,
             what='the run to die')
    assert host_mounts() == before


# -- 9. stdio ---------------------------------------------------------------------------

@pytest.mark.parametrize('caller', CALLERS)
def test_stdio_pass_through(caller):
    data = bytes(bytearray(range(256))) * 1000
    r = run(['--', 'cat'], caller=caller, input=data)
    assert r.out == data and r.err == b''
    text = b'usage: runTestSuite [-h] [--master_url MASTER_URL]\n\n  --help  show\n'
    r = run(['--', PYTHON, '-c', 'import sys; sys.stdout.buffer.write(%r)' % text],
            caller=caller)
    assert r.out == text and r.err == b''


# -- command line ------------------------------------------------------------------------

@pytest.mark.parametrize('args, message', [
    ([], 'no command given'),
    (['--bogus', 'true'], "unknown option '--bogus'"),
    (['--tmpfs'], 'option --tmpfs needs a value'),
    (['--tmpfs', 'tmp', 'true'], "--tmpfs: path 'tmp' is not absolute"),
    (['--tmpfs', '/srv/../x', 'true'], "--tmpfs: path '/srv/../x' is not normalized (no //, . or ..)"),
    (['--tmpfs', '/', 'true'], "--tmpfs: path '/' is not a path a tmpfs can be mounted on"),
    (['--tmpfs', '/tmp:size=abc', 'true'], "--tmpfs /tmp: invalid size 'abc'"),
    (['--tmpfs', '/tmp:mode=999', 'true'], "--tmpfs /tmp: invalid mode '999'"),
    (['--tmpfs', '/tmp:bogus', 'true'], "--tmpfs /tmp: unknown tmpfs option 'bogus'"),
    (['--tmpfs', '/srv/x', '--tmpfs', '/srv/x:size=1m', 'true'], '--tmpfs: path /srv/x given twice'),
    (['--userns', 'maybe', 'true'], "--userns 'maybe': must be auto, require or off"),
    (['--subids', 'all', 'true'], "--subids 'all': must be auto or off"),
    (['--kill-timeout', '-1', 'true'], "--kill-timeout '-1': must be a number of seconds >= 0"),
    (['--kill-timeout=abc', 'true'], "--kill-timeout 'abc': must be a number of seconds >= 0"),
    (['--report', '/nonexistent/r.json', 'true'],
     '--report /nonexistent/r.json: directory /nonexistent does not exist'),
    (['--strict=1', 'true'], 'option --strict takes no value'),
    (['--report', '--strict', 'true'],
     "option --report needs a value, not '--strict' (give --report=--strict if that is meant)"),
    (['--', '', 'true'], 'empty command name'),
])
def test_usage_errors(args, message, scratch):
    r = run(args + ['touch', scratch + '/ran'] if args and args[-1] == 'true' else args)
    assert r.returncode == 2
    assert r.stderr == 'isolate-exec: %s\n' % message
    assert r.stdout == ''
    assert not os.path.exists(scratch + '/ran')


@pytest.mark.parametrize('caller', CALLERS)
def test_mount_point_problems_are_errors_not_fallbacks(caller, scratch):
    open(scratch + '/file', 'w').close()
    r = run(['--tmpfs', scratch + '/file', '--', 'touch', scratch + '/ran'], caller=caller)
    assert (r.returncode, r.stderr) == (125, 'isolate-exec: --tmpfs %s/file: not a directory\n'
                                        % scratch)
    os.mkdir(scratch + '/closed', 0o755)
    r = run(['--tmpfs', scratch + '/closed/db', '--', 'touch', scratch + '/ran'], caller='nobody')
    assert (r.returncode, r.stderr) == (125, 'isolate-exec: create %s/closed/db: Permission '
                                        'denied\n' % scratch)
    assert not os.path.exists(scratch + '/ran')


def test_help_documents_everything():
    r = run(['--help'])
    assert r.returncode == 0 and r.stderr == ''
    for word in ('--tmpfs', '--userns', '--subids', '--report', '--strict', '--kill-timeout',
                 '--probe',
                 'auto', 'require', 'off', '125', '126', '127', '128+N',
                 '# user namespaces not available'):
        assert word in r.stdout, word


def test_options_stop_at_the_command(scratch):
    r = run(['echo', '--strict', '--', 'x'])
    assert r.stdout == '--strict -- x\n'


def test_python_m_is_the_same_command():
    import sys
    r = subprocess.run([sys.executable, '-m', 'slapos.recipe.isolate_exec', '--version'],
                       stdout=subprocess.PIPE)
    assert r.stdout == subprocess.run([ISOLATE_EXEC, '--version'], stdout=subprocess.PIPE).stdout
    assert r.stdout.startswith(b'isolate-exec 0.')


def test_fuse_mount_inside_as_root(scratch):
    """FUSE works inside (bindfs); its daemon and mount are reported as leaks,
    and the daemon is killed before the walk (a live FUSE daemon could hang it)."""
    r = run(['--kill-timeout', '1'] +
            sh('mkdir /tmp/src /tmp/mnt; echo hello > /tmp/src/f; bindfs /tmp/src /tmp/mnt; '
               'cat /tmp/mnt/f; grep -c " /tmp/mnt .* fuse /tmp/src " /proc/self/mountinfo'))
    assert r.returncode == 0, r
    assert r.stdout == 'hello\n1\n'
    assert [l for l in r.report if l.startswith('# leaked pid=')][0].split()[3] == "'bindfs'"
    assert '# leaked /tmp/mnt/' in r.report and '# leaked /tmp/src/f' in r.report
    assert [l for l in r.report if l.startswith('# leaked mount: ')][0].startswith(
        '# leaked mount: /tmp/src /tmp/mnt fuse rw,')


# -- 10. every Python ------------------------------------------------------------------

PYENV_PYTHONS = sorted(glob.glob('/root/.pyenv/versions/*/bin/python'))


@pytest.mark.parametrize('python', [os.path.basename(os.path.dirname(os.path.dirname(p)))
                                    for p in PYENV_PYTHONS] or ['none'])
@pytest.mark.parametrize('uid', [0, 1000])
def test_every_python_of_the_machine(python, uid, scratch):
    """The runtime (its _ctypes layer, clone, capabilities) under each Python
    of the machine (pyenv's: 2.7, 3.6 to 3.13), for a root caller and, mapped
    with unshare --map-user, a non-root one (user namespace path)."""
    interpreter = '/root/.pyenv/versions/%s/bin/python' % python
    need(os.path.exists(interpreter), 'every-Python tests not run: no pyenv interpreter in '
         '/root/.pyenv/versions', 'py27')
    prefix = ['unshare', '-U', '--map-user=%d' % uid, '--map-group=%d' % uid] if uid else []
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(scratch), 'py27lib'))
    proc = subprocess.Popen(prefix + [interpreter, '-m', 'slapos.recipe.isolate_exec',
                                      '--report', scratch + '/r.json', '--', 'sh', '-c',
                                      'id -u; grep CapEff /proc/self/status; touch /tmp/x; '
                                      '(setsid sleep 100 &); '
                                      'until grep -qsx sleep /proc/[0-9]*/comm; do :; done; exit 3'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd='/')
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    lines = out.decode().splitlines()
    assert lines[0] == str(uid)
    if uid:
        assert lines[1] == 'CapEff:\t0000000000200000'
    report = err.decode().splitlines()
    assert report[0].endswith("'sleep' ['sleep', '100']") and report[1:] == ['# leaked /tmp/x']
    with open(scratch + '/r.json') as f:
        assert json.load(f)['leaked_files'] == ['/tmp/x']


# -- --timeout, --ignore, --stdout-report --------------------------------------------------

@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('caller', CALLERS)
def test_timeout_stops_the_command_and_reports(caller, mode):
    start = time.time()
    r = run(['--timeout', '0.5', '--kill-timeout', '0.3'] +
            sh('trap "" TERM; touch ${TMPDIR:-/tmp}/t; sleep 1000'),
            caller=caller, sandbox=mode == 'fallback')
    assert r.returncode == 124, r
    assert time.time() - start < 30
    assert '# timed out after 0.5 s: stopped with SIGTERM, then SIGKILL' in r.report
    assert [l for l in r.report if l.startswith('# leaked ') and l.endswith('/t')]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('caller', CALLERS)
def test_ignore_names_what_the_runner_leaves(caller, mode):
    """In fallback mode the private TMPDIR stands for /tmp in the patterns,
    and what is ignored is still removed with it."""
    r = run(['--strict', '--ignore', '/tmp/pytest-of-*', '--stdout-report'] +
            sh('d=${TMPDIR:-/tmp}; mkdir -p $d/pytest-of-x/a; touch $d/pytest-of-x/a/f $d/kept; '
               'echo $d'), caller=caller, sandbox=mode == 'fallback')
    assert r.returncode == 3, r
    lines = r.stdout.splitlines()  # --stdout-report: the report follows the command's output
    private = lines[0]
    assert [l for l in lines if l.startswith('# leaked ')] == ['# leaked %s/kept' % private]
    assert r.stderr.count('pytest-of') == 0
    if mode == 'fallback':
        assert not os.path.exists(private)
