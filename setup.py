# -*- coding: utf-8 -*-
import io
from setuptools import setup, find_packages

version = '0.3'


def read(name):
    with io.open(name, encoding='utf-8') as f:
        return f.read()


setup(
    name='slapos.recipe.isolatedtest',
    version=version,
    description='Run each test with its own private /tmp and /dev/shm '
                '(user + mount namespaces) and report what it leaked: '
                'a zc.buildout recipe and the isolate-exec command',
    long_description=read('README.md') + '\n\n' + read('CHANGES.txt'),
    long_description_content_type='text/markdown',
    keywords='slapos buildout recipe test isolation namespaces tmpfs leak',
    license='GPLv3+',
    classifiers=[
        'Framework :: Buildout :: Recipe',
        'Operating System :: POSIX :: Linux',
        'Programming Language :: Python :: 2.7',
        'Programming Language :: Python :: 3',
        'Topic :: Software Development :: Testing',
    ],
    packages=find_packages(include=['slapos', 'slapos.*']),
    # pkg_resources-style namespaces, like slapos.cookbook: in buildout's egg
    # layout both eggs must provide slapos and slapos.recipe side by side.
    namespace_packages=['slapos', 'slapos.recipe'],
    include_package_data=True,
    zip_safe=False,
    python_requires='>=2.7',
    install_requires=[],  # the runtime is standard library only
    extras_require={
        'test': ['pytest', 'pytest-timeout', 'build'],
        'testnode': ['erp5.util'],  # runTestSuite --master_url
    },
    scripts=['scripts/isolate-exec'],
    entry_points={
        'zc.buildout': [
            'default = slapos.recipe.isolatedtest:Recipe',
            'suite = slapos.recipe.isolatedtest:Suite',
            'eggs = slapos.recipe.isolatedtest:Eggs',
            'checkout = slapos.recipe.isolatedtest:Checkout',
            'parameters = slapos.recipe.isolatedtest_slap:Parameters',
            'probe = slapos.recipe.isolatedtest_slap:Probe',
            'publish = slapos.recipe.isolatedtest_slap:Publish',
        ],
        'zc.buildout.extension': [
            'profile_base_location = slapos.recipe.isolatedtest:profile_base_location',
        ],
    },
)
