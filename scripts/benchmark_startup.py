"""Start-up cost of every lwsr_plugin command and of the plugin's registration, as a Markdown table (issue 18).

Each measurement is a fresh interpreter, wall time, rounds interleaved so load from other processes hits all alike;
median and min over ``--repeats``. Rows:

* ``<command> --help`` for every console command the installed lwsr_plugin declares;
* ``import basicsr`` alone (the torchvision alias installed, the plugin's automatic registration off) against
  ``import basicsr`` with the plugin registering (the default): the difference is what the plugin adds;
* ``import lwsr_plugin`` alone (no torch: registration waits until BasicSR is imported).

    python scripts/benchmark_startup.py --repeats 5
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata

BIN = os.path.dirname(sys.executable)
ALIAS_ONLY = 'import _lwsr_plugin_startup as s; s.install(); import basicsr'


def commands():
    """``(name, argv)`` of every console script of the installed lwsr_plugin, sorted."""
    eps = [ep for ep in metadata.entry_points(group='console_scripts')
           if ep.value.startswith('lwsr_plugin.')]
    return sorted((ep.name, [os.path.join(BIN, ep.name), '--help']) for ep in eps)


def timed(argv, env):
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}')
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=5, help='fresh interpreters per row (default 5)')
    parser.add_argument('--no-imports', action='store_true', help='only the --help rows')
    args = parser.parse_args(argv)
    env = dict(os.environ)
    rows = [(f'`{name} --help`', cmd, env) for name, cmd in commands()]
    if not args.no_imports:
        off = dict(env, LWSR_PLUGIN_AUTOLOAD='0')
        rows += [('`import basicsr` (plugin off, alias only)', [sys.executable, '-c', ALIAS_ONLY], off),
                 ('`import basicsr` (plugin registers)', [sys.executable, '-c', 'import basicsr'], env),
                 ('`import lwsr_plugin`', [sys.executable, '-c', 'import lwsr_plugin'], env)]
    times = {label: [] for label, _, _ in rows}
    try:
        from tqdm import tqdm
        rounds = tqdm(range(args.repeats), desc='rounds', file=sys.stderr)
    except ImportError:
        rounds = range(args.repeats)
    for _ in rounds:
        for label, cmd, row_env in rows:
            times[label].append(timed(cmd, row_env))
    print(f'Python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible; wall seconds of a fresh interpreter, '
          f'{args.repeats} interleaved rounds.\n')
    print('| what | median s | min s |\n|---|---|---|')
    for label, _, _ in rows:
        print(f'| {label} | {statistics.median(times[label]):.3f} | {min(times[label]):.3f} |')
    if not args.no_imports:
        base = times['`import basicsr` (plugin off, alias only)']
        full = times['`import basicsr` (plugin registers)']
        print(f'| plugin registration on top of `import basicsr` | '
              f'{statistics.median(full) - statistics.median(base):+.3f} | {min(full) - min(base):+.3f} |')


if __name__ == '__main__':
    main()
