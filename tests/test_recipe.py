"""The recipe (issue: buildout recipe), with real offline buildouts (zc.buildout
3.0.1 on Python 3 and 2.13.8 on Python 2.7) whose wrappers run for real, as
root and as nobody."""
import json
import os
import subprocess

import pytest

from conftest import (AS_NOBODY, CALLERS, PREFIX, PY27, PY27_MISSING, PYTHON, Result, buildout,
                      buildout_section, need, write)

PART = '''
[directory]
bin = ${{buildout:directory}}/bin
srv = {dir}/srv

[runUnitTest]
recipe = slapos.recipe.isolatedtest
command-line = {python} -c 'import os, sys; print(sys.argv[1:], os.environ["HOME"], os.environ["X"]); os.system("df -k /tmp /dev/shm ${{directory:srv}}/db | tail -n 3"); open("/tmp/leak", "w")'
wrapper-path = ${{directory:bin}}/runUnitTest
environment =
  HOME = ${{directory:srv}}
  X = a b = c
private-tmpfs =
  2m /tmp
  512k /dev/shm
  1m ${{directory:srv}}/db
leak-report = {dir}/report.json
{extra}
'''


def config(directory, src, extra='', python=PYTHON):
    return buildout_section('runUnitTest', src, directory) + PART.format(
        dir=directory, extra=extra, python=python)


def run_wrapper(path, args=(), caller='root'):
    prefix = AS_NOBODY if caller == 'nobody' else []
    proc = subprocess.Popen(prefix + [path] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd='/')
    out, err = proc.communicate(timeout=120)
    return Result(proc, out, err, 0)


@pytest.fixture
def installed(scratch, src):
    """A buildout with the example part of the README, installed."""
    r = buildout(scratch, config(scratch, src))
    assert r.returncode == 0, r
    return scratch


@pytest.mark.parametrize('caller', CALLERS)
def test_wrapper_runs_the_command_isolated(caller, installed):
    r = run_wrapper(installed + '/bin/runUnitTest', ['--one', 'two words'], caller)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == "['--one', 'two words'] %s/srv a b = c" % installed
    assert [l.split()[1] for l in lines[1:]] == ['2048', '512', '1024']
    assert r.stderr == '# leaked /tmp/leak\n'
    assert not os.path.exists('/tmp/leak')
    with open(installed + '/report.json') as f:
        report = json.load(f)
    assert report['isolated'] is True and report['leaked_files'] == ['/tmp/leak']
    assert [t['path'] for t in report['tmpfs']] == ['/tmp', '/dev/shm', installed + '/srv/db']


def test_wrapper_is_thin(installed, src):
    with open(installed + '/bin/runUnitTest') as f:
        text = f.read()
    lines = text.splitlines()
    # the ERP5 test node runs the shebang itself: at most two words
    assert lines[0] == '#!%s-buildout/bin/python3 -S' % PREFIX
    start = lines.index('sys.path[0:0] = [')
    assert lines[start + 1:start + 3] == ["  '%s'," % src, '  ]']  # exactly the runtime's egg
    assert 'import slapos.recipe.isolate_exec' in lines
    assert 'sys.exit(slapos.recipe.isolate_exec.run_wrapper(' in text
    assert 'import pkg_resources' not in text and "__import__('pkg_resources')" not in text
    from slapos.recipe.isolate_exec import NAMESPACE_SETUP
    assert NAMESPACE_SETUP in text
    # the runtime was byte-compiled for the wrapper's interpreter at install
    assert [n for n in os.listdir(src + '/slapos/recipe/__pycache__')
            if n.startswith('isolate_exec.cpython-')]
    assert oct(os.stat(installed + '/bin/runUnitTest').st_mode & 0o777) == '0o755'


def test_rerun_keeps_unchanged_wrapper_and_regenerates_changed(installed, src):
    path = installed + '/bin/runUnitTest'
    os.utime(path, (1, 1))
    r = buildout(installed, config(installed, src))
    assert r.returncode == 0, r
    assert os.stat(path).st_mtime == 1
    r = buildout(installed, config(installed, src, 'strict = true\nkill-timeout = 0.5'))
    assert r.returncode == 0, r
    assert os.stat(path).st_mtime != 1
    with open(path) as f:
        assert '        True,\n        0.5,\n' in f.read()
    r = run_wrapper(path)
    assert r.returncode == 3  # strict: the command leaked /tmp/leak
    r = buildout(installed, config(installed, src).replace('parts = runUnitTest', 'parts =', 1))
    assert r.returncode == 0, r
    assert not os.path.exists(path)  # install() returned it: removed on uninstall


@pytest.mark.parametrize('extra, message', [
    ('command-line =', 'command-line: missing (required)'),
    ("command-line = echo 'unbalanced", "command-line: cannot split \"echo 'unbalanced\": No closing quotation"),
    ('wrapper-path = bin/runUnitTest', "wrapper-path: path 'bin/runUnitTest' must be absolute"),
    ('wrapper-path = /nonexistent/dir/run', 'wrapper-path: directory /nonexistent/dir does not exist'),
    ('private-tmpfs = abc /tmp', "private-tmpfs: invalid size 'abc'"),
    ('private-tmpfs = 1g', "private-tmpfs: failed to split '1g' into size and path"),
    ('private-tmpfs = 1g tmp', "private-tmpfs: path 'tmp' is not absolute"),
    ('private-tmpfs = 1g /srv/../etc', "private-tmpfs: path '/srv/../etc' is not normalized (no //, . or ..)"),
    ('private-tmpfs =\n  1g /srv/x\n  2g /srv/x', 'private-tmpfs: path /srv/x given twice'),
    ('environment = NO_EQUAL_SIGN', "environment: invalid line 'NO_EQUAL_SIGN' (expected KEY = VALUE)"),
    ('userns = maybe', "userns: invalid value 'maybe' (auto or require or off)"),
    ('subids = all', "subids: invalid value 'all' (auto or off)"),
    ('ipc = shared', "ipc: invalid value 'shared' (private or host)"),
    ('strict = yes', "strict: invalid value 'yes' (false or true)"),
    ('kill-timeout = -1', "kill-timeout '-1': must be a number of seconds >= 0"),
    ('leak-report = report.json', "leak-report: path 'report.json' must be absolute"),
    ('python = python3', "python: path 'python3' must be absolute"),
    ('python = /nonexistent/python', 'python: /nonexistent/python does not exist'),
    ('python = /bin/false', 'python: /bin/false cannot import slapos.recipe.isolate_exec: exit status 1'),
])
def test_bad_option_stops_buildout(extra, message, scratch, src):
    r = buildout(scratch, config(scratch, src, extra))
    assert r.returncode != 0
    output = r.stdout + r.stderr
    assert 'Error: %s\n' % message in output, output
    assert 'Traceback' not in output
    assert not os.path.exists(scratch + '/bin/runUnitTest')


@pytest.mark.parametrize('caller', CALLERS)
def test_python27_buildout(caller, scratch, src):
    """The recipe under a Python 2.7 buildout; the wrapper runs under 2.7."""
    r = buildout(scratch, config(scratch, src), python='py27')
    assert r.returncode == 0, r
    with open(scratch + '/bin/runUnitTest') as f:
        assert f.readline() == '#!%s -S\n' % PY27
    r = run_wrapper(scratch + '/bin/runUnitTest', ['x'], caller)
    assert r.returncode == 0, r
    assert r.stdout.splitlines()[0].startswith("['x'] ")
    assert r.stderr == '# leaked /tmp/leak\n'


def test_python_option_sets_the_interpreter(scratch, src):
    need(PY27, PY27_MISSING, 'py27')
    r = buildout(scratch, config(scratch, src, 'python = %s' % PY27))
    assert r.returncode == 0, r
    with open(scratch + '/bin/runUnitTest') as f:
        assert f.readline() == '#!%s -S\n' % PY27
    r = run_wrapper(scratch + '/bin/runUnitTest', caller='nobody')
    assert r.returncode == 0 and r.stderr == '# leaked /tmp/leak\n', r


def test_help_passes_through_byte_identical(scratch, src):
    script = scratch + '/runner.py'
    write(script, 'import sys\nsys.stdout.write("usage: runner [--help]\\n\\n  --master_url URL\\n")\n')
    extra = 'command-line = %s %s' % (PYTHON, script)
    r = buildout(scratch, config(scratch, src, extra).replace('leak-report =', 'x ='))
    assert r.returncode == 0, r
    direct = subprocess.check_output([PYTHON, script, '--help'])
    r = run_wrapper(scratch + '/bin/runUnitTest', ['--help'], 'nobody')
    assert (r.out, r.err, r.returncode) == (direct, b'', 0)
