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

from conftest import AS_NOBODY, CHECKOUT, Result, host_mounts

SR = os.path.join(CHECKOUT, 'software', 'test-isolation')
SCRATCH = '/var/tmp/isolatedtest-demo'  # outside /tmp, kept between sessions (the venv)


def read(name):
    with open(os.path.join(SR, name), 'rb') as f:
        return f.read()


def test_buildout_hash_cfg_matches_the_templates():
    sections = re.findall(r'^\[(.*)\]\nfilename = (.*)\nmd5sum = (\w+)$',
                          read('buildout.hash.cfg').decode(), re.M)
    assert sections == [('instance-profile', 'instance.cfg.in', sections[0][2])]
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


def test_instance_parameters_have_the_schema_defaults():
    schema = json.loads(read('instance-input-schema.json').decode())
    text = read('instance.cfg.in').decode()
    for name, spec in schema['properties'].items():
        assert 'configuration.%s = %s\n' % (name, spec['default']) in text


@pytest.fixture(scope='module')
def demo():
    """Run the README's demo command (the first time, it makes its venv)."""
    tmp_before = set(os.listdir('/tmp'))
    mounts = host_mounts()
    for sub in ('software', 'instance'):
        subprocess.call(['rm', '-rf', os.path.join(SCRATCH, sub)])
    proc = subprocess.Popen([os.path.join(SR, 'demo'), SCRATCH], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=900)
    subprocess.check_call(['chmod', '-R', 'a+rX', SCRATCH])
    assert set(os.listdir('/tmp')) == tmp_before
    assert host_mounts() == mounts
    return Result(proc, out, b'', 0)


def check_demo_output(text):
    assert re.findall(r'^>>> (.*)$', text, re.M) == [
        'clean', 'collide-first', 'collide-second', 'tmpfs', 'leak-files', 'leak-mount',
        'leak-daemon']
    assert text.endswith('# ran 7 test cases: 7\u00b7ok 0\u00b7fail 0\u00b7error\n')
    for line in ['# leaked /tmp/fixed-name.lock', '# leaked /dev/shm/faketime-segment',
                 '/tmp tmpfs', '/dev/shm tmpfs', '# leaked /tmp/leaked-file',
                 '# leaked /tmp/leaked-dir/', '# leaked /tmp/leaked-dir/inside',
                 '# leaked /dev/shm/leaked-segment', '# leaked /tmp/mnt/']:
        assert line in text.splitlines(), line
    assert re.search(r"^# leaked mount: demo /tmp/mnt tmpfs ", text, re.M)
    assert re.search(r"^# leaked pid=\d+ 'sleep' \['sleep', '3600'\]$", text, re.M)


def test_demo_builds_and_runs_the_suite(demo):
    assert demo.returncode == 0, demo
    text = demo.stdout
    assert 'demo: building the software release in %s/software\n' % SCRATCH in text
    assert os.path.exists(os.path.join(SCRATCH, 'software', 'instance.cfg'))
    check_demo_output(text)
    assert 'Traceback' not in text and 'Error' not in text


def test_run_suite_as_nobody(demo):
    tmp_before = set(os.listdir('/tmp'))
    proc = subprocess.Popen(AS_NOBODY + [os.path.join(SCRATCH, 'instance', 'bin', 'runTestSuite')],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd='/')
    out, _ = proc.communicate(timeout=300)
    text = out.decode()
    assert proc.returncode == 0, text
    assert 'xnode:\tnobody@' in text
    check_demo_output(text)
    assert set(os.listdir('/tmp')) == tmp_before


def test_instance_parameters(demo):
    buildout = os.path.join(SCRATCH, 'venv', 'bin', 'buildout')
    instance = os.path.join(SCRATCH, 'instance-strict')
    subprocess.call(['rm', '-rf', instance])
    os.makedirs(instance)
    subprocess.check_call([buildout, '-q', '-c', os.path.join(SCRATCH, 'software', 'instance.cfg'),
                           'buildout:directory=' + instance, 'buildout:offline=true',
                           'instance-parameter:configuration.strict=true',
                           'instance-parameter:configuration.tmp-size=3m'],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(AS_NOBODY + [os.path.join(instance, 'bin', 'runTestSuite'), '-k', 'clean|leak-files'],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd='/')
    text = r.stdout.decode()
    assert r.returncode == 1
    assert re.search(r'^ok\tclean\t', text, re.M)
    assert re.search(r'^error\tleak-files\t', text, re.M)  # strict: a leak is an error
    with open(os.path.join(instance, 'bin', 'runTestSuite')) as f:
        assert "[('/tmp', 'size=3m'), ('/dev/shm', 'size=16m')]" in f.read()
