"""Packaging: the distribution as SlapOS installs it. Its files keep the
classic names SlapOS's pinned setuptools can match; installed as an egg by
zc.buildout (not as a develop egg), its recipe works next to another
slapos.recipe egg, and both import side by side in buildout's egg layout."""
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import BUILDOUT, CHECKOUT, EGGS, PREFIX, SCRATCH_ROOT, buildout, write
from slapos.recipe.isolate_exec import __version__ as VERSION

BUILDOUT_PYTHON = os.path.join(os.path.dirname(BUILDOUT['py3']), 'python')
BUILDOUT_SITE_PACKAGES = '%s-buildout/lib/python%d.%d/site-packages' % (
    (PREFIX,) + sys.version_info[:2])


@pytest.fixture(scope='module')
def dist():
    """The sdist and wheel, built from a copy of the checkout."""
    out = os.path.join(SCRATCH_ROOT, 'dist')
    src = os.path.join(SCRATCH_ROOT, 'build-src')
    shutil.copytree(CHECKOUT, src, ignore=shutil.ignore_patterns(
        '.git', 'build', '*.egg-info', '__pycache__'))
    subprocess.check_call([sys.executable, '-m', 'build', '-o', out, src],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def test_classic_names(dist):
    """setuptools 67.8 (SlapOS's pin) matches these to slapos.recipe.isolatedtest."""
    assert sorted(os.listdir(dist)) == ['slapos.recipe.isolatedtest-' + VERSION + '-py3-none-any.whl',
                                        'slapos.recipe.isolatedtest-' + VERSION + '.tar.gz']
    with zipfile.ZipFile(os.path.join(dist, 'slapos.recipe.isolatedtest-' + VERSION + '-py3-none-any.whl')) as w:
        names = w.namelist()
    assert 'slapos.recipe.isolatedtest-' + VERSION + '.dist-info/METADATA' in names
    assert 'slapos.recipe.isolatedtest-' + VERSION + '.data/scripts/isolate-exec' in names


def test_sdist_can_run_its_own_tests_and_example(dist):
    with tarfile.open(os.path.join(dist, 'slapos.recipe.isolatedtest-' + VERSION + '.tar.gz')) as t:
        names = set(n.split('/', 1)[1] for n in t.getnames() if '/' in n)
    for name in ['tests/conftest.py', 'tests/test_faults.py', '.ci/setup', '.ci/run',
                 '.ci/with-subids',
                 'benchmarks/bench.py', 'benchmarks/launcher.c', 'scripts/isolate-exec',
                 'software/test-isolation/software.cfg', 'software/test-isolation/demo',
                 'COPYING', 'CHANGES.txt', 'README.md']:
        assert name in names, name


@pytest.fixture(scope='module')
def eggs(dist):
    """An eggs directory where zc.buildout 3.0.1 installed the sdist, next to
    slapos.recipe.template (a slapos.recipe egg declaring its namespaces with
    pkg_resources, as slapos.cookbook's)."""
    eggs = os.path.join(SCRATCH_ROOT, 'packaging-eggs')
    shutil.copytree(EGGS, eggs)
    subprocess.check_call([BUILDOUT_PYTHON, '-c',
                           'import sys, zc.buildout.easy_install as e; '
                           'e.install(["slapos.recipe.isolatedtest"], sys.argv[1], links=[sys.argv[2]],'
                           ' index="file://" + sys.argv[2], allow_hosts=("localhost",))',
                           eggs, dist], stdout=subprocess.DEVNULL)
    subprocess.check_call(['chmod', '-R', 'a+rX', eggs])
    return eggs


def test_recipe_from_an_installed_egg_with_another_slapos_recipe(eggs, scratch):
    write(scratch + '/page.in', 'rendered by {{ name }}\n')
    # Not offline = true: offline, upstream zc.buildout 3.0.1 misses the recipe
    # eggs it made with pip (it looks for them without the eggs directory as
    # destination). Nothing is downloaded: the network is closed to it.
    r = buildout(scratch, '''
[buildout]
parts = page runUnitTest
newest = false
allow-hosts = localhost
index = file:///nonexistent
eggs-directory = {eggs}

[page]
recipe = slapos.recipe.template:jinja2
url = {dir}/page.in
output = {dir}/page
context = raw name slapos.recipe.template

[runUnitTest]
recipe = slapos.recipe.isolatedtest
command-line = sh -c 'cat {dir}/page; touch /tmp/leak'
wrapper-path = ${{buildout:bin-directory}}/runUnitTest
'''.format(eggs=eggs, dir=scratch))
    assert r.returncode == 0, r
    with open(scratch + '/bin/runUnitTest') as f:
        text = f.read()
    egg = glob.glob(eggs + '/slapos.recipe.isolatedtest-' + VERSION + '-*.egg')
    # this egg, and setuptools, which zc.buildout adds to any egg with
    # namespace packages
    paths = text.split('sys.path[0:0] = [\n', 1)[1].split('  ]', 1)[0].split()
    assert paths == ["'%s'," % egg[0], "'%s'," % BUILDOUT_SITE_PACKAGES], text
    # the egg's namespace __init__.py imports pkg_resources (zc.buildout wrote
    # it); the wrapper does not import it
    with open(os.path.join(egg[0], 'slapos', '__init__.py')) as f:
        assert 'pkg_resources' in f.read()
    check = subprocess.check_output([BUILDOUT_PYTHON, '-S', '-c',
        'import sys; exec(open(%r).read(), {"__name__": "wrapper"}); '
        'print(sys.modules["slapos.recipe.isolate_exec"].__file__, "pkg_resources" in sys.modules)'
        % (scratch + '/bin/runUnitTest')])
    assert check.split() == [os.path.join(egg[0], 'slapos', 'recipe', 'isolate_exec.py').encode(),
                             b'False']
    proc = subprocess.Popen([scratch + '/bin/runUnitTest'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, b'rendered by slapos.recipe.template',
                                           b'# leaked /tmp/leak\n')


@pytest.mark.parametrize('how', ['plain', 'namespace setup'])
@pytest.mark.parametrize('ours_first', [True, False])
def test_namespaces_side_by_side_in_egg_layout(ours_first, how, eggs):
    """Each egg its own sys.path entry, ours first or last: both import, in a
    plain script and in ours (NAMESPACE_SETUP first), which does not load
    pkg_resources (~130 ms) to import the runtime."""
    from slapos.recipe.isolate_exec import NAMESPACE_SETUP
    ours = glob.glob(eggs + '/slapos.recipe.isolatedtest-' + VERSION + '-*.egg')[0]
    template = glob.glob(eggs + '/slapos.recipe.template-*.egg')[0]
    path = [ours, template] if ours_first else [template, ours]
    code = ('import os, sys; sys.path[0:0] = %r\n'
            '%s\n'
            'import slapos.recipe.isolate_exec\n'
            'loaded = "pkg_resources" in sys.modules\n'
            'import slapos.recipe.template\n'
            'print(slapos.recipe.isolate_exec.__file__.startswith(%r), '
            'slapos.recipe.template.__file__.startswith(%r), loaded)'
            % (path, NAMESPACE_SETUP if how != 'plain' else '', ours, template))
    out = subprocess.check_output([BUILDOUT_PYTHON, '-c', code])
    # a plain import runs the egg's __init__.py, which zc.buildout wrote
    assert out.split() == [b'True', b'True', str(how == 'plain').encode()]
