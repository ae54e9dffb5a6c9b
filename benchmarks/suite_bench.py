#!/usr/bin/env python3
"""Benchmark the suite runner (runTestSuite of slapos.recipe.isolatedtest:suite):
throughput of --node_quantity 1 and 2 on sleep-bound and CPU-bound cases, and
the per-case overhead against nxdtest + trun, measured side by side on the
same .nxdtest files. Prints a Markdown table (docs/benchmarks.md).

    benchmarks/suite_bench.py [--runs N]

As root, after .ci/setup and `benchmarks/bench.py --peers` (which installs
nxdtest in its scratch virtualenv); the runner is built by a real offline
buildout with `nxdtest = .nxdtest`.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import PREFIX, SCRATCH, build_part  # noqa: E402 (the same scratch and buildout)

NXDTEST = os.path.join(SCRATCH, 'peers', 'nxdtest', 'bin', 'nxdtest')
CASES = {  # name -> (.nxdtest source, cases)
    'sleep-bound': ("for i in range(8):\n"
                    "    TestCase('sleep%d' % i, ['sleep', '0.5'])\n", 8),
    'CPU-bound': ("import sys\nfor i in range(8):\n"
                  "    TestCase('cpu%d' % i, [sys.executable, '-c', "
                  "'import time\\nt = time.process_time()\\n"
                  "while time.process_time() - t < 0.5: pass'])\n", 8),
    'empty (true)': ("for i in range(20):\n    TestCase('true%d' % i, ['true'])\n", 20),
}


def build_runner():
    """bin/runTestSuite, with nxdtest = .nxdtest (erp5.util from .ci/setup's eggs)."""
    directory = build_part('runTestSuite', 'recipe = slapos.recipe.isolatedtest:suite\n'
                           'wrapper-path = ${buildout:bin-directory}/runTestSuite\n'
                           'nxdtest = .nxdtest\nprivate-tmpfs =\n  64m /tmp\n',
                           'eggs-directory = %s-eggs\n' % PREFIX)
    return os.path.join(directory, 'bin', 'runTestSuite')


def timed(argv, cwd):
    start = time.time()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    elapsed = time.time() - start
    if b'# ran ' not in proc.stdout:
        raise SystemExit('%s: %s' % (' '.join(argv), proc.stdout.decode()[-500:]))
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=5, help='runs per row (default 5)')
    args = parser.parse_args()
    runner = build_runner()
    have_nxdtest = os.access(NXDTEST, os.X_OK)
    rows = []
    for kind, (source, count) in CASES.items():
        workdir = os.path.join(SCRATCH, 'suite-' + kind.split()[0])
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, '.nxdtest'), 'w') as f:
            f.write(source)
        commands = [('runTestSuite --node_quantity 1', [runner, '--node_quantity', '1']),
                    ('runTestSuite --node_quantity 2', [runner, '--node_quantity', '2'])]
        if have_nxdtest:
            commands.append(('nxdtest + trun', [NXDTEST]))
        times = dict((label, []) for label, _ in commands)
        for _ in range(args.runs):  # interleaved: the machine's drift hits all alike
            for label, argv in commands:
                times[label].append(timed(argv, workdir))
        for label, _ in commands:
            median = statistics.median(times[label])
            rows.append((kind, count, label, median, median / count))
    print('Machine: %s, %d CPU, Linux %s; %s.\n' % (
        os.uname()[4], os.cpu_count(), os.uname()[2], time.strftime('%Y-%m-%d')))
    print('| cases | runner | wall s (median of %d) | per case ms |' % args.runs)
    print('|---|---|---:|---:|')
    for kind, count, label, median, per_case in rows:
        print('| %d %s | %s | %.2f | %.0f |' % (count, kind, label, median, per_case * 1000))


if __name__ == '__main__':
    sys.exit(main())
