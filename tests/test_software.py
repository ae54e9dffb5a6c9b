"""The example software release (issue: software/test-isolation): the demo
command of the README builds it and an instance with two real offline
buildouts, and its runTestSuite runs as root and as nobody."""
import collections
import hashlib
import json
import os
import re
import subprocess

import pytest

from conftest import AS_NOBODY, CHECKOUT, PREFIX, Result, host_mounts, host_sysvipc, run_leftovers

SR = os.path.join(CHECKOUT, 'software', 'test-isolation')
SCRATCH = PREFIX + '-demo'  # outside /tmp
PIP_CACHE = PREFIX + '-demo-pip-cache'
# what the demo's cases would leave in a shared /tmp or /dev/shm
DEMO_NAMES = ('scratch', 'fixed-name.lock', 'faketime-segment', 'leaked-file', 'leaked-dir',
              'leaked-segment', 'mnt', 'daemon.pid')


def read(name):
    with open(os.path.join(SR, name), 'rb') as f:
        return f.read()


def test_buildout_hash_cfg_matches_the_templates():
    sections = re.findall(r'^\[(.*)\]\nfilename = (.*)\nmd5sum = (\w+)$',
                          read('buildout.hash.cfg').decode(), re.M)
    assert [s[:2] for s in sections] == [('instance-profile', 'instance.cfg.in'),
                                         ('instance-schema', 'instance-input-schema.json')]
    for _, filename, md5sum in sections:
        assert hashlib.md5(read(filename)).hexdigest() == md5sum, filename


@pytest.mark.parametrize('name', ['software.cfg.json', 'instance-input-schema.json',
                                  'instance-output-schema.json'])
def test_json_files_are_slapos_formatted(name):
    data = json.loads(read(name).decode(), object_pairs_hook=collections.OrderedDict)
    assert read(name).decode() == json.dumps(data, indent=2, separators=(',', ': '),
                                             ensure_ascii=False) + '\n'
    if name.endswith('-schema.json'):
        assert data['$schema'] == 'https://json-schema.org/draft/2020-12/schema'
    else:
        default = data['software-type']['default']
        assert set(default) <= {'title', 'description', 'serialisation', 'request',
                                'response', 'software-type', 'shared', 'index'}
        for key in ('request', 'response'):
            assert os.path.exists(os.path.join(SR, default[key]))


def test_every_instance_parameter_is_used():
    schema = json.loads(read('instance-input-schema.json').decode())
    text = read('instance.cfg.in').decode()
    for name in schema['properties']:
        assert '${instance-parameter:%s}' % name in text, name


def pip_cache_with_new_style_wheels():
    """A pip cache holding what broke the demo: a wheel of
    slapos.recipe.template that pip 24 built, with the new normalized name."""
    if not any(name.startswith('slapos_recipe_template-') for _, _, names in os.walk(PIP_CACHE)
               for name in names):
        venv = PIP_CACHE + '-venv'
        subprocess.check_call(['/usr/bin/python3', '-m', 'venv', venv])
        subprocess.check_call([venv + '/bin/pip', 'install', '-q', 'pip==24.2'])
        subprocess.check_call([venv + '/bin/pip', 'wheel', '-q', '--no-deps', '-w',
                               venv + '/wheels', 'slapos.recipe.template==5.1'],
                              env=dict(os.environ, PIP_CACHE_DIR=PIP_CACHE))
    return PIP_CACHE


def run_demo(scratch, env=None):
    """Run the README's demo command from scratch. -> Result"""
    mounts, ipc = host_mounts(), host_sysvipc()
    subprocess.call(['rm', '-rf', scratch])
    proc = subprocess.Popen([os.path.join(SR, 'demo'), scratch], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    out, _ = proc.communicate(timeout=900)
    subprocess.check_call(['chmod', '-R', 'a+rX', scratch])
    assert run_leftovers(DEMO_NAMES) == []
    assert host_mounts() == mounts
    assert host_sysvipc() == ipc  # leak-ipc's segment was the run's own
    return Result(proc, out, b'', 0)


@pytest.fixture(scope='module')
def demo():
    return run_demo(SCRATCH)


def check_demo_output(text):
    assert re.findall(r'^>>> (.*)$', text, re.M) == [
        'clean', 'collide-first', 'collide-second', 'tmpfs', 'leak-files', 'leak-mount',
        'leak-daemon', 'leak-ipc']
    assert text.endswith('# ran 8 test cases:  8\u00b7ok\n')
    for line in ['# leaked /tmp/fixed-name.lock', '# leaked /dev/shm/faketime-segment',
                 '/tmp tmpfs', '/dev/shm tmpfs', '# leaked /tmp/leaked-file',
                 '# leaked /tmp/leaked-dir/', '# leaked /tmp/leaked-dir/inside',
                 '# leaked /dev/shm/leaked-segment', '# leaked /tmp/mnt/']:
        assert line in text.splitlines(), line
    assert re.search(r"^# leaked mount: demo /tmp/mnt tmpfs ", text, re.M)
    assert re.search(r"^# leaked pid=\d+ 'sleep' \['sleep', '3600'\]$", text, re.M)
    assert re.search(r"^# leaked ipc shm key=0x[0-9a-f]{8} id=0 bytes=4096 owner=\d+ nattch=0$",
                     text, re.M)


def test_demo_builds_and_runs_the_suite(demo):
    """With the venv's own pip (23.0 on Debian 12) and pip's usual cache."""
    assert demo.returncode == 0, demo
    text = demo.stdout
    assert 'demo: building the software release in %s/software\n' % SCRATCH in text
    assert os.path.exists(os.path.join(SCRATCH, 'software', 'instance.cfg'))
    check_demo_output(text)
    assert 'Traceback' not in text and 'Error' not in text
    assert '"GET /' not in text  # the index server's access log is not shown


@pytest.mark.parametrize('pip', ['24.2', '26.3'])
def test_demo_with_a_newer_pip_and_a_new_style_wheel_in_its_cache(pip):
    """pip >= 24.1 (no pip._vendor.six) made zc.buildout 3.0.1 print two
    tracebacks: the pip that set the demo up plays no part."""
    scratch = SCRATCH + '-pip' + pip
    r = run_demo(scratch, {'DEMO_PIP': 'pip==' + pip,
                           'PIP_CACHE_DIR': pip_cache_with_new_style_wheels()})
    assert r.returncode == 0, r
    check_demo_output(r.stdout)
    assert 'Traceback' not in r.stdout and 'Requires-Python support missing' not in r.stdout, r
    assert subprocess.check_output([scratch + '/venv/bin/pip', '--version']).startswith(b'pip 24.0 ')
    subprocess.call(['rm', '-rf', scratch])


def test_demo_help():
    r = subprocess.run([os.path.join(SR, 'demo'), '--help'], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert (r.returncode, r.stderr) == (0, b''), r
    assert r.stdout == b'usage: demo [SCRATCH_DIR]  (default /var/tmp/test-isolation-demo-USER)\n'
    r = subprocess.run([os.path.join(SR, 'demo'), '-x'], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith(b'demo: unknown option -x\n'), r


def test_demo_stops_at_the_failing_step():
    """A step that fails stops the demo with its own error and status."""
    scratch = SCRATCH + '-broken'
    r = run_demo(scratch, {'DEMO_PIP': 'pip==0.0-no-such-version'})
    assert r.returncode != 0
    lines = r.stdout.splitlines()
    assert lines[-1].startswith('demo: pip install pip==0.0-no-such-version failed (exit status ')
    assert 'runTestSuite' not in r.stdout
    subprocess.call(['rm', '-rf', scratch])


def test_run_suite_as_nobody(demo):
    proc = subprocess.Popen(AS_NOBODY + [os.path.join(SCRATCH, 'instance', 'bin', 'runTestSuite')],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd='/')
    out, _ = proc.communicate(timeout=300)
    text = out.decode()
    assert proc.returncode == 0, text
    assert 'xnode:\tnobody@' in text
    check_demo_output(text)
    assert run_leftovers(DEMO_NAMES) == []


def test_instance_parameters(demo):
    buildout = os.path.join(SCRATCH, 'venv', 'bin', 'buildout')
    instance = os.path.join(SCRATCH, 'instance-strict')
    subprocess.call(['rm', '-rf', instance])
    os.makedirs(instance)
    argv = [buildout, '-q', '-c', os.path.join(SCRATCH, 'software', 'instance.cfg'),
            'buildout:directory=' + instance]
    r = subprocess.run(argv + ['instance-parameter:tmp-size=0'], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert r.returncode != 0
    assert b"Error: instance parameter tmp-size: invalid value '0'" in r.stdout, r.stdout
    assert b'Traceback' not in r.stdout
    r = subprocess.run(argv + ['instance-parameter:tmp-sise=1g'], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)  # misspelled, by hand
    assert r.returncode != 0
    assert (b'Error: instance parameter tmp-sise: unknown (the parameters are shm-size, '
            b'strict, tmp-size, userns)') in r.stdout, r.stdout
    subprocess.check_call(argv + ['instance-parameter:strict=true', 'instance-parameter:tmp-size=3m'],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(AS_NOBODY + [os.path.join(instance, 'bin', 'runTestSuite'), '-k', 'clean|leak-files'],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd='/')
    text = r.stdout.decode()
    assert r.returncode == 1
    assert re.search(r'^ok\tclean\t', text, re.M)
    assert re.search(r'^error\tleak-files\t', text, re.M)  # strict: a leak is an error
    with open(os.path.join(instance, 'bin', 'runTestSuite')) as f:
        assert "[('/tmp', 'size=3m'), ('/dev/shm', 'size=16m')]" in f.read()
