"""software/test-isolation/ on a real SlapOS node (issue: a real SlapOS node
deploys the release as it is): slapos.core from PyPI, a slapproxy, `slapos
node format`, supply, software, request, instance, report, each run for real,
with zc.buildout 3.0.1 + setuptools 67.8 (SlapOS's pins) and with the current
zc.buildout.

The node lives in a sandbox of the test's own: private mount, network and pid
namespaces (users that `node format` creates go into a private copy of /etc;
the network is a loopback with a private IPv6 address; everything dies with
the sandbox). No index is reachable from it but a local one, served on
127.0.0.1 from what software/test-isolation/make-index built (https_proxy
points to a closed port too): any other index access fails the test.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (CHECKOUT, NO_USERNS, PREFIX, PYTHON312, descendants, host_mounts, need,
                      pid_alive, wait_for)
from slapos.recipe.isolatedtest_slap import unmarshal

NODES = {  # zc.buildout flavour -> virtualenv of slapos.core (.ci/setup)
    'zc.buildout-3.0.1': PREFIX + '-slapos-zcb3',
    'zc.buildout-current': PREFIX + '-slapos',
}
ROOT = PREFIX + '-node'
MISSING = ('SlapOS node test not run: no %s (slapos.core 1.26 needs Python >= 3.12 for its '
           'node commands; .ci/setup copies a pyenv 3.12 there and installs slapos.core)')
INDEX_PORT, MASTER_PORT = 40081, 40080
NO_INDEX = {'https_proxy': 'http://127.0.0.1:9', 'http_proxy': 'http://127.0.0.1:9',
            'no_proxy': '127.0.0.1', 'buildout_testing_index_url': 'http://127.0.0.1:%d/' % INDEX_PORT,
            # pip, which zc.buildout builds sdists with, installs their build
            # requirements from its own index: the local one has them
            'PIP_INDEX_URL': 'http://127.0.0.1:%d/' % INDEX_PORT}
COMPUTER = 'COMP-TEST'
NAME = 'test-isolation'
USER = 'slapuser0'


class Node(object):
    """A SlapOS node in a sandbox: slapproxy, slapformat, slapgrid."""

    def __init__(self, venv, root, index):
        self.slapos = os.path.join(venv, 'bin', 'slapos')
        self.root, self.index = root, index
        self.cfg = os.path.join(root, 'slapos.cfg')
        self.partition = os.path.join(root, 'instance', 'slappart0')
        self.url = os.path.join(root, 'checkout', 'software', 'test-isolation', 'software.cfg')
        os.makedirs(os.path.join(root, 'run'))
        # the release as it is, where slapsoft can read it (the checkout may
        # be in a 0700 home directory)
        shutil.copytree(CHECKOUT, os.path.join(root, 'checkout'),
                        ignore=shutil.ignore_patterns('.git', '__pycache__'))
        shutil.copytree('/etc', os.path.join(root, 'etc'), symlinks=True)
        with open(self.cfg, 'w') as f:
            f.write(SLAPOS_CFG % dict(root=root, master=MASTER_PORT, computer=COMPUTER))
        subprocess.check_call(['chmod', '-R', 'a+rX', os.path.join(root, 'checkout')])
        self.holder = subprocess.Popen(['unshare', '--mount', '--net', '--pid', '--fork',
                                        '--mount-proc', '--propagation', 'private',
                                        'sleep', 'infinity'], stderr=subprocess.DEVNULL)
        self.pid = wait_for(lambda: descendants(self.holder.pid), what='sandbox')[0]
        self.sh('mount --bind %s/etc /etc && mount -t tmpfs sandbox-tmp /tmp && '
                'mount -t tmpfs sandbox-shm /dev/shm && '
                'ip link set lo up && ip -6 addr add fd00:5a:9::1/64 dev lo nodad' % root)
        self.daemon([self.slapos, 'proxy', 'start', '--cfg', self.cfg], 'proxy')
        self.daemon([PYTHON312, '-m', 'http.server', '--bind', '127.0.0.1', str(INDEX_PORT),
                     '--directory', index], 'index')
        wait_for(lambda: self.sh('exec 3<>/dev/tcp/127.0.0.1/%d && exec 3<>/dev/tcp/127.0.0.1/%d'
                                 % (MASTER_PORT, INDEX_PORT), check=False,
                                 shell='bash').returncode == 0, timeout=30, what='proxy and index')

    def run(self, argv, env=(), check=True, user=None, timeout=600):
        prefix = ['nsenter', '-t', str(self.pid), '-m', '-n', '-p', '--']
        if user:
            prefix += ['setpriv', '--reuid=' + user, '--regid=' + user, '--init-groups']
        proc = subprocess.run(prefix + ['env'] + ['%s=%s' % kv for kv in dict(env).items()] +
                              list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=self.root)
        proc.output = proc.stdout.decode('utf-8', 'replace')
        if check and proc.returncode:
            raise AssertionError('%s: exit status %d\n%s' % (' '.join(argv), proc.returncode,
                                                             proc.output[-5000:]))
        return proc

    def sh(self, script, shell='sh', **kw):
        return self.run([shell, '-c', script], **kw)

    def daemon(self, argv, name):
        """Start argv in the background in the sandbox (it dies with it)."""
        self.run(['sh', '-c', 'exec "$@" > %s/run/%s.log 2>&1 &' % (self.root, name), '-'] + argv)

    def slap(self, *args, **kw):
        return self.run([self.slapos] + list(args) + ['--cfg', self.cfg], env=NO_INDEX, **kw)

    def request(self, parameters=None, state=None):
        args = ['request', NAME, self.url]
        if parameters is not None:
            path = os.path.join(self.root, 'parameters.json')
            with open(path, 'w') as f:
                json.dump(parameters, f)
            args += ['--parameters-file', path]
        if state:
            args += ['--state', state]
        return self.slap(*args)

    def connection_parameters(self):
        """What the master keeps for the partition, read as slapos.slap
        reads it (the master listens in the sandbox's network only)."""
        data = self.run(['python3', '-c', 'import sys, urllib.request; sys.stdout.write('
                         'urllib.request.urlopen(sys.argv[1]).read().decode())',
                         'http://127.0.0.1:%d/registerComputerPartition?computer_reference=%s&'
                         'computer_partition_reference=slappart0' % (MASTER_PORT, COMPUTER)]).output
        connection = unmarshal(data.encode()).get('_connection_dict') or {}
        return json.loads(connection['_']) if '_' in connection else connection

    def close(self):
        os.kill(self.pid, signal.SIGKILL)  # pid 1 of the sandbox: all of it dies
        self.holder.wait()


SLAPOS_CFG = '''\
[slapos]
software_root = %(root)s/software
instance_root = %(root)s/instance
master_url = http://127.0.0.1:%(master)d
computer_id = %(computer)s
pidfile_software = %(root)s/run/software.pid
pidfile_instance = %(root)s/run/instance.pid
pidfile_report = %(root)s/run/report.pid

[slapformat]
interface_name = lo
ipv6_interface = lo
create_tap = false
partition_amount = 1
computer_xml = %(root)s/slapos.xml
log_file = %(root)s/run/format.log
partition_base_name = slappart
user_base_name = slapuser
tap_base_name = slaptap
ipv4_local_network = 10.0.0.0/16

[slapproxy]
host = 127.0.0.1
port = %(master)d
database_uri = %(root)s/proxy.db
'''


@pytest.fixture(scope='module')
def index(release_index):
    need(os.access(PYTHON312, os.X_OK), MISSING % PYTHON312, 'slapos')
    return release_index


@pytest.fixture(params=sorted(NODES))
def node(request, index):
    venv = NODES[request.param]
    need(os.access(os.path.join(venv, 'bin', 'slapos'), os.X_OK), MISSING % venv, 'slapos')
    root = '%s-%s' % (ROOT, request.param)
    if os.path.exists(root):
        shutil.rmtree(root)
    mounts, node = host_mounts(), None
    try:
        node = Node(venv, root, index)
        yield node
    finally:
        if node is not None:
            node.close()
            wait_for(lambda: not pid_alive(node.pid), what='the sandbox to end')
        assert host_mounts() == mounts
        shutil.rmtree(root)


def runner_text(node):
    with open(os.path.join(node.partition, 'bin', 'runTestSuite')) as f:
        return f.read()


def test_deploy_on_a_slapos_node(node):
    started = time.time()
    r = node.slap('node', 'format', '--now', '--alter_network', 'False')
    assert 'slapos successfully prepared the computer' in r.output, r.output

    # the software release, from the local index only, never scanning it
    node.slap('supply', node.url, COMPUTER)
    r = node.slap('node', 'software', '--all')
    assert 'Finished software releases' in r.output and 'ERROR' not in r.output, r.output
    for trouble in ('Scanning index of all packages', 'Download error', 'pypi.org'):
        assert trouble not in r.output, r.output

    # an instance, with the default parameters
    node.request()
    r = node.slap('node', 'instance', '--all')
    assert 'Error while processing' not in r.output, r.output
    runner = os.path.join(node.partition, 'bin', 'runTestSuite')
    assert os.access(runner, os.X_OK)
    assert 'Checking promise isolation' in r.output
    published = node.connection_parameters()
    assert published['runner'] == runner
    # slapuser0 is not root; the node gives it no subordinate ids
    assert published['isolation'].startswith(
        '+userns -subids (no subordinate uids for slapuser0 in /etc/subuid) '), published
    assert json.loads(published['parameters']) == {
        'tmp-size': '64m', 'shm-size': '16m', 'userns': 'auto', 'strict': False}

    # the runner, as the partition's user: every case isolated
    logs = os.path.join(node.partition, 'logs')
    node.run(['mkdir', logs], user=USER)
    tmp_before = node.run(['ls', '-A', '/tmp']).output
    r = node.run([runner, '--log_directory', logs], user=USER, check=False)
    assert r.returncode == 0 and '# ran 8 test cases:  8\u00b7ok' in r.output, \
        r.output
    assert node.run(['ls', '-A', '/tmp']).output == tmp_before
    reports = [json.load(open(os.path.join(logs, n))) for n in sorted(os.listdir(logs))]
    assert len(reports) == 8 and all(report['isolated'] for report in reports)

    # a bad parameter fails the instance with one line naming it
    node.request({'tmp-size': '0'})
    r = node.slap('node', 'instance', '--all', check=False)
    assert r.returncode != 0
    assert "Error: instance parameter tmp-size: invalid value '0'" in r.output, r.output
    assert 'Traceback' not in r.output
    node.request({'tmp-sise': '1g'})  # misspelled
    r = node.slap('node', 'instance', '--all', check=False)
    assert r.returncode != 0
    assert ('Error: instance parameter tmp-sise: unknown (the parameters are shm-size, strict, '
            'tmp-size, userns)') in r.output, r.output

    # changed parameters change the runner at the next `node instance`
    before = runner_text(node)
    node.request({'tmp-size': '32m', 'userns': 'off', 'strict': True})
    node.slap('node', 'instance', '--all')
    after = runner_text(node)
    assert after != before
    assert "('/tmp', 'size=32m')" in after and "'off'," in after and 'True,' in after
    assert json.loads(node.connection_parameters()['parameters']) == {
        'tmp-size': '32m', 'shm-size': '16m', 'userns': 'off', 'strict': True}

    # userns = require: the promise passes here, fails where isolation does not work
    node.request({'userns': 'require'})
    r = node.slap('node', 'instance', '--all')
    assert 'Checking promise isolation' in r.output and 'Error while processing' not in r.output
    promise = os.path.join(node.partition, 'etc', 'promise', 'isolation')
    assert node.run([promise], user=USER).returncode == 0
    r = node.run(NO_USERNS + [promise], user=USER, check=False)
    assert r.returncode == 1, r.output
    assert 'userns = require, and user namespaces do not work on this node' in r.output

    # destroyed: the partition is left empty
    node.request(state='destroyed')
    node.slap('node', 'report')
    assert os.listdir(node.partition) == []
    print('deployed, checked and destroyed in %.1f s' % (time.time() - started))
