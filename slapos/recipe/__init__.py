# Namespace package shared with slapos.core, slapos.cookbook and the other
# slapos.recipe.* eggs (setup.py: namespace_packages).
#
# Buildout installs every egg in its own directory, each with a regular
# slapos/__init__.py, so this must be a pkg_resources-style namespace or the
# first egg on sys.path would hide the others. Importing pkg_resources costs
# ~130 ms and ~17 MiB, and pkgutil ~17 ms (it pulls in typing on Python 3.11),
# so pkg_resources is used only when something already loaded it; otherwise the
# loop below does what pkgutil.extend_path does: add the same sub-directory of
# every sys.path entry (or of the parent package's __path__).
import os, sys
if 'pkg_resources' in sys.modules:
    sys.modules['pkg_resources'].declare_namespace(__name__)
else:
    _parent, _, _leaf = __name__.rpartition('.')
    _entry = None
    for _entry in (sys.modules[_parent].__path__ if _parent else sys.path):
        if isinstance(_entry, str):
            _entry = os.path.join(_entry or os.curdir, _leaf)
            if _entry not in __path__ and os.path.isdir(_entry):
                __path__.append(_entry)
    del _parent, _leaf, _entry
