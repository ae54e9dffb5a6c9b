"""The README and the reference beside it (issue: a README a newcomer reads
in five minutes): every link resolves (file, and heading anchor where one
is given), the README stays short, and its complete buildout.cfg builds
runners that work."""
import os
import re
import subprocess

import pytest

from conftest import CHECKOUT, buildout, buildout_section

DOCS = ['README.md'] + ['docs/' + n for n in sorted(os.listdir(os.path.join(CHECKOUT, 'docs')))
                        if n.endswith('.md')]
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def anchors(path):
    """GitHub's heading anchors of a Markdown file."""
    with open(path) as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)
    found = set()
    for heading in re.findall(r'^#+ (.*)$', text, re.M):
        slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
        found.add(slug)
    return found


@pytest.mark.parametrize('doc', DOCS)
def test_links_resolve(doc):
    path = os.path.join(CHECKOUT, doc)
    with open(path) as f:
        text = f.read()
    for link in LINK.findall(text):
        if '://' in link:
            continue
        target, _, anchor = link.partition('#')
        target = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
        assert os.path.exists(target), '%s: %s does not exist' % (doc, link)
        if anchor:
            assert anchor in anchors(target), '%s: no heading #%s in %s' % (doc, anchor, target)


def test_readme_is_short_and_lists_the_reference():
    with open(os.path.join(CHECKOUT, 'README.md')) as f:
        text = f.read()
    assert len(text.splitlines()) < 300
    for doc in DOCS[1:]:
        assert '(%s)' % doc in text, '%s is not in the README\'s contents' % doc


def test_the_readmes_buildout_cfg(scratch, src):
    """The README's complete buildout.cfg, offline with this checkout."""
    with open(os.path.join(CHECKOUT, 'README.md')) as f:
        config, = re.findall(r'```ini\n(.*?)```', f.read(), re.S)
    head, _, rest = config.partition('\n\n')
    assert head == '[buildout]\nparts = runUnitTest runTestSuite'
    r = buildout(scratch, buildout_section('runUnitTest runTestSuite', src, scratch) + rest)
    assert r.returncode == 0, r
    proc = subprocess.run([os.path.join(scratch, 'bin', 'runTestSuite'), '-k', 'hello'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, cwd='/')
    out = proc.stdout.decode()
    assert proc.returncode == 0, out
    assert '\nhello\n# leaked /tmp/hello\nok\thello\t' in out, out
    proc = subprocess.run([os.path.join(scratch, 'bin', 'runTestSuite'), '-l'],
                          stdout=subprocess.PIPE, timeout=120)
    assert proc.stdout == b'unit\nhello\n'
    proc = subprocess.run([os.path.join(scratch, 'bin', 'runUnitTest'), '--help'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0 and b'usage: python3 -m unittest' in proc.stdout, proc.stdout
