"""A stock ERP5 test node runs this repository's suite (issue: the test
fleet): erp5.util 0.4.83's own `testnode` program, from PyPI and unmodified,
against a master after portal_task_distribution's protocol
(tests/testnode_master.py), with a test suite whose vcs_repository_list is
a repository of this checkout, profile_path software/test-isolation/
software.cfg and buildout_section_id slapos.recipe.isolatedtest-repository.

The node builds the release from "PyPI": in a sandbox (private mount,
network and pid namespaces, a pid 1 that reaps, a private /etc), pypi.org
is 127.0.0.1, where tests/pypi_mirror.py serves, over HTTPS with a CA the
sandbox trusts, what make-index built: for each pin the files pypi.org has,
byte for byte, and this checkout's sdist and wheel (the release to be).
Nothing tells the node where an index is: its buildout and pip use PyPI's
default URL. Its software list has no firefox nor Xvfb.

The repository's last commit changes the runner observably (each case's
command, on the master, ends with a marker): the master must see it, which
shows that the runtime, the runner and the instance's recipes come from the
revision the node cloned, not from the index's egg. One test node runs the
suite; then two on one test result run each case once.

The test node runs on Python 3.11 (erp5.util 0.4.83 does not start on 3.12:
configparser.SafeConfigParser) with slapos.core's commands from Python 3.12
(slapos_binary), as an unprivileged user: it deletes its user's /tmp/tmp*
and kills its user's processes naming its working directory.
"""
import glob
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import (CHECKOUT, PREFIX, PYTHON312, descendants, host_mounts, need, pid_alive,
                      wait_for)

SLAPOS = PREFIX + '-slapos-zcb3/bin/slapos'  # zc.buildout 3.0.1, setuptools 67.8 (SlapOS's)
TESTNODE = PREFIX + '-testnode/bin/testnode'  # erp5.util 0.4.83 on Python 3.11 (.ci/setup)
MISSING = ('ERP5 test node test not run: no %s (.ci/setup makes it where pyenv has a Python '
           '3.12, for slapos.core\'s node commands)')
ROOT = PREFIX + '-testnode-run'
HERE = os.path.dirname(os.path.abspath(__file__))
UID = 60123  # the test node's user, in the sandbox's private /etc
MASTER_PORT = 41080
SECTION = 'slapos.recipe.isolatedtest-repository'
MARKER = '# runner of the revision under test'
CASES = ['clean', 'collide-first', 'collide-second', 'tmpfs', 'leak-files', 'leak-mount',
         'leak-daemon', 'leak-ipc']
# a pid 1 that reaps: slapgrid's daemonized supervisord would stay a zombie
REAPER = ('import os, time\n'
          'while True:\n'
          '    try:\n'
          '        os.wait()\n'
          '    except ChildProcessError:\n'
          '        time.sleep(0.2)\n')

TESTNODE_CFG = '''\
[testnode]
slapos_directory = {d}/slapos
working_directory = {d}/work
test_suite_directory = {d}/test_suite
log_directory = {d}/log
run_directory = {d}/run
srv_directory = {d}/srv
software_directory = {d}/soft
proxy_host = 127.0.0.1
proxy_port = {proxy_port}
git_binary = /usr/bin/git
node_quantity = 1
test_node_title = {title}
ipv4_address = 127.0.0.1
ipv6_address = ::1
test_suite_master_url = http://127.0.0.1:{master}/
slapos_binary = {slapos}
httpd_ip = ::1
httpd_port = 0
httpd_software_access_port = 0
computer_id = COMP-{title}
server_url =
shared_part_list =
keep_log_days = 15
frontend_url = http://frontend.invalid/
log_frontend_url = http://log.invalid/
ipv6_range = fd00:5a:9::/64

[software_list]
path_list =

[environment]
PATH = /usr/bin:/bin
'''


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=kw.pop('timeout', 600), **kw)


class Sandbox(object):
    """Private mount, network and pid namespaces; /etc a private copy with
    pypi.org at 127.0.0.1, a CA for it, and the test node's user."""

    def __init__(self, root, index):
        self.root = root
        etc = os.path.join(root, 'etc')
        shutil.copytree('/etc', etc, symlinks=True)
        with open(os.path.join(etc, 'hosts'), 'a') as f:
            f.write('127.0.0.1 pypi.org files.pythonhosted.org\n')
        with open(os.path.join(etc, 'passwd'), 'a') as f:
            f.write('testnode:x:%d:%d::%s/home:/bin/sh\n' % (UID, UID, root))
        with open(os.path.join(etc, 'group'), 'a') as f:
            f.write('testnode:x:%d:\n' % UID)
        tls = os.path.join(root, 'tls')
        os.makedirs(tls)
        sh('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
           '-subj', '/CN=test CA', '-keyout', tls + '/ca.key', '-out', tls + '/ca.pem',
           '-addext', 'basicConstraints=critical,CA:TRUE', '-addext',
           'keyUsage=critical,keyCertSign,cRLSign')
        sh('openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=pypi.org',
           '-keyout', tls + '/pypi.key', '-out', tls + '/pypi.csr')
        with open(tls + '/ext', 'w') as f:
            f.write('subjectAltName=DNS:pypi.org,DNS:files.pythonhosted.org\n'
                    'extendedKeyUsage=serverAuth\n')
        sh('openssl', 'x509', '-req', '-in', tls + '/pypi.csr', '-CA', tls + '/ca.pem',
           '-CAkey', tls + '/ca.key', '-CAcreateserial', '-days', '2', '-extfile',
           tls + '/ext', '-out', tls + '/pypi.pem')
        bundle = os.path.join(etc, 'ssl', 'certs', 'ca-certificates.crt')
        with open(tls + '/ca.pem') as f, open(bundle, 'a') as out:
            out.write(f.read())
        self.holder = subprocess.Popen(['unshare', '--mount', '--net', '--pid', '--fork',
                                        '--mount-proc', '--propagation', 'private',
                                        '/usr/bin/python3', '-c', REAPER],
                                       stderr=subprocess.DEVNULL)
        self.pid = wait_for(lambda: descendants(self.holder.pid), what='sandbox')[0]
        self.run('mount --bind %s /etc && mount -t tmpfs testnode-tmp /tmp && '
                 'mount -t tmpfs testnode-shm /dev/shm && ip link set lo up && '
                 'ip -6 addr add fd00:5a:9::1/64 dev lo nodad' % etc)
        self.daemon(['/usr/bin/python3', os.path.join(HERE, 'pypi_mirror.py'), index,
                     tls + '/pypi.pem', tls + '/pypi.key'], 'pypi')
        wait_for(lambda: self.run('exec 3<>/dev/tcp/127.0.0.1/443', check=False,
                                  shell='bash').returncode == 0, timeout=30, what='the mirror')

    def run(self, script, args=(), check=True, shell='sh', user=None, env=(), timeout=600):
        prefix = ['nsenter', '-t', str(self.pid), '-m', '-n', '-p', '--']
        if user:
            prefix += ['setpriv', '--reuid=%d' % UID, '--regid=%d' % UID, '--clear-groups']
        proc = subprocess.run(prefix + ['env'] + ['%s=%s' % kv for kv in dict(env).items()] +
                              [shell, '-c', script] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, cwd='/')
        proc.output = proc.stdout.decode('utf-8', 'replace')
        if check and proc.returncode:
            raise AssertionError('%s: exit status %d\n%s' % (script, proc.returncode,
                                                             proc.output[-5000:]))
        return proc

    def daemon(self, argv, name, user=None, env=()):
        """Start argv in the background in the sandbox (it dies with it)."""
        log = os.path.join(self.root, 'log', name + '.log')
        self.run('exec "$@" > %s 2>&1 &' % log, ['-'] + list(argv), user=user, env=env)

    def close(self):
        os.kill(self.pid, 9)  # pid 1 of the sandbox: all of it dies
        self.holder.wait()


def suite_repository(path):
    """A git repository of this checkout, whose last commit marks the runner."""
    os.makedirs(path)
    for name in ('setup.py', 'pyproject.toml', 'README.md', 'CHANGES.txt', 'MANIFEST.in',
                 'COPYING', 'slapos', 'scripts', 'software'):
        source = os.path.join(CHECKOUT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(path, name),
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info'))
        else:
            shutil.copy(source, path)
    git = ['git', '-C', path, '-c', 'user.name=test', '-c', 'user.email=test@invalid']
    sh(*git + ['init', '-q', '-b', 'main'])
    sh(*git + ['add', '-A'])
    sh(*git + ['commit', '-q', '-m', 'the release'])
    scheduler = os.path.join(path, 'slapos', 'recipe', 'runtestsuite', 'scheduler.py')
    with open(scheduler) as f:
        text = f.read()
    assert 'command = case.command()\n' in text
    with open(scheduler, 'w') as f:
        f.write(text.replace('command = case.command()\n',
                             'command = case.command() + %r\n' % (' ' + MARKER)))
    sh(*git + ['commit', '-q', '-a', '-m', 'mark the runner'])
    return sh(*git + ['rev-parse', 'HEAD']).stdout.decode().strip()


def events(state):
    try:
        with open(state) as f:
            return [json.loads(line) for line in f]
    except IOError:
        return []


def stopped(state):
    return [e for e in events(state) if 'stopped' in e]


@pytest.fixture(scope='module')
def index(release_index):
    need(os.access(PYTHON312, os.X_OK) and os.access(TESTNODE, os.X_OK),
         MISSING % TESTNODE, 'slapos')
    return release_index


@pytest.fixture
def sandbox(index):
    if os.path.exists(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(os.path.join(ROOT, 'log'))
    mounts, box = host_mounts(), None
    try:
        box = Sandbox(ROOT, index)
        yield box
    finally:
        if box is not None:
            box.close()
            wait_for(lambda: not pid_alive(box.pid), what='the sandbox to end')
        assert host_mounts() == mounts
        shutil.rmtree(ROOT)


def start_test_nodes(box, titles, state):
    """The repository, the master, and a test node per title (all running)."""
    repository = os.path.join(ROOT, 'repository')
    revision = suite_repository(repository)
    suite = {'test_suite': 'ISOLATION', 'test_suite_title': 'test-isolation',
             'test_suite_reference': 'isolation', 'project_title': 'isolatedtest',
             'vcs_repository_list': [{'url': repository, 'branch': 'main',
                                      'profile_path': 'software/test-isolation/software.cfg',
                                      'buildout_section_id': SECTION}]}
    box.daemon(['/usr/bin/python3', os.path.join(HERE, 'testnode_master.py'), str(MASTER_PORT),
                json.dumps(suite), state], 'master')
    home = os.path.join(ROOT, 'home')
    for i, title in enumerate(titles):
        d = os.path.join(ROOT, title)
        for sub in ('slapos', 'work', 'test_suite', 'log', 'run', 'srv', 'soft'):
            os.makedirs(os.path.join(d, sub))
        with open(os.path.join(d, 'testnode.cfg'), 'w') as f:
            f.write(TESTNODE_CFG.format(d=d, proxy_port=41090 + i, title=title,
                                        master=MASTER_PORT, slapos=SLAPOS))
    os.makedirs(home, exist_ok=True)
    subprocess.check_call(['chown', '-R', '%d:%d' % (UID, UID), ROOT])
    subprocess.check_call(['chmod', '-R', 'a+rX', ROOT])
    wait_for(lambda: box.run('exec 3<>/dev/tcp/127.0.0.1/%d' % MASTER_PORT, check=False,
                             shell='bash').returncode == 0, timeout=30, what='the master')
    env = {'HOME': home, 'PATH': '/usr/bin:/bin', 'LANG': 'C.UTF-8',
           # the CA bundle that trusts pypi.org here (pip otherwise uses certifi's)
           'SSL_CERT_FILE': '/etc/ssl/certs/ca-certificates.crt',
           'PIP_CERT': '/etc/ssl/certs/ca-certificates.crt'}
    for title in titles:
        box.daemon([TESTNODE, '-l', os.path.join(ROOT, title, 'log', 'testnode.log'),
                    os.path.join(ROOT, title, 'testnode.cfg')], title, user=True, env=env)
    return revision


def check_results(state, revision, nodes):
    """What the master received: each case once, its counts, its leak
    report, the marker of the revision under test."""
    done = stopped(state)
    assert sorted(e['stopped'] for e in done) == sorted(CASES), done
    assert set(e['node'] for e in done) <= set(nodes)
    created = [e['params'] for e in events(state) if e.get('call') == 'createTestResult']
    # the node's own, then the runner's naming the cases, for the revision it
    # cloned: the repository's 2nd commit, named after the section
    assert set(p[1] for p in created) == set(['slapos.recipe.isolatedtest=2-' + revision]), \
        created
    assert any(sorted(p[2]) == sorted(CASES) for p in created), created
    by_name = dict((e['stopped'], e['status']) for e in done)
    for name in CASES:
        status = by_name[name]
        assert status['command'].endswith(MARKER), status  # the clone's runner
        assert (status['test_count'], status['error_count'], status['failure_count']) == \
            (1, 0, 0), (name, status)
    assert '# leaked /tmp/fixed-name.lock' in by_name['collide-second']['stdout']
    assert "# leaked pid=" in by_name['leak-daemon']['stdout']
    assert '# leaked ipc shm key=' in by_name['leak-ipc']['stdout']
    assert not [e for e in events(state) if 'failure' in e], events(state)


def test_a_stock_test_node_tests_the_revision_it_cloned(sandbox):
    state = os.path.join(ROOT, 'master.jsonl')
    started = time.time()
    revision = start_test_nodes(sandbox, ['node-1'], state)
    wait_for(lambda: len(stopped(state)) == len(CASES) or
             [e for e in events(state) if 'failure' in e], timeout=600,
             what='the test node to report every case')
    check_results(state, revision, ['node-1'])
    print('one test node: every case reported in %.0f s' % (time.time() - started))
    # the runner's --help lists neither --firefox_bin nor --xvfb_bin: the node
    # with no firefox nor Xvfb ran it
    suite_log, = glob.glob(os.path.join(ROOT, 'node-1', 'log', '*', 'suite.log'))
    with open(suite_log) as f:
        command, = [line for line in f if '/bin/runTestSuite --master_url' in line]
    assert '--firefox_bin' not in command and '--xvfb_bin' not in command, command
    assert '--project_title isolatedtest' in command and '--log_directory' in command, command


def test_two_test_nodes_run_each_case_once(sandbox):
    state = os.path.join(ROOT, 'master.jsonl')
    revision = start_test_nodes(sandbox, ['node-1', 'node-2'], state)
    wait_for(lambda: len(stopped(state)) == len(CASES) or
             [e for e in events(state) if 'failure' in e], timeout=600,
             what='the test nodes to report every case')
    # both asked for work on the same test result; every case ran once
    wait_for(lambda: len(set(e['params'][0] for e in events(state)
                             if e.get('call') == 'startUnitTest')) == 1 and
             set(e['params'][2] for e in events(state) if e.get('call') == 'startUnitTest')
             == set(['node-1', 'node-2']), timeout=300, what='both runners to ask the master')
    check_results(state, revision, ['node-1', 'node-2'])
