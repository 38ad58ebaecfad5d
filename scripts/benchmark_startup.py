"""Start-up cost of every lwsr_plugin command and of the plugin's registration, as a Markdown table.

Each measurement is a fresh interpreter, rounds interleaved so load from other processes hits all alike; median and
min over ``--repeats`` of the wall time, and the median CPU time (user + system) of the child, which other processes'
load barely changes. Rows:

* ``<command> --help`` for every console command the installed lwsr_plugin declares;
* ``import basicsr`` alone (the torchvision alias installed, the plugin's automatic registration off) and
  ``import basicsr`` with the plugin registering (the default);
* what the plugin adds to ``import basicsr``: ``import lwsr_plugin`` (which registers at once) timed inside a fresh interpreter that has
  just imported BasicSR (the difference of the two rows above drowns in their own spread);
* ``import lwsr_plugin`` alone (no torch: registration waits until BasicSR is imported).

    python scripts/benchmark_startup.py --repeats 5
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata

BIN = os.path.dirname(sys.executable)
ALIAS_ONLY = 'import _lwsr_plugin_startup as s; s.install(); import basicsr'
# with BasicSR already imported, `import lwsr_plugin` registers at once
REGISTER = (ALIAS_ONLY + '\nimport time\nw, c = time.perf_counter(), time.process_time()\nimport lwsr_plugin\n'
            'assert lwsr_plugin.registration.is_registered()\nprint(time.perf_counter() - w, time.process_time() - c)')


def commands():
    """``(name, argv)`` of every console script of the installed lwsr_plugin, sorted."""
    eps = [ep for ep in metadata.entry_points(group='console_scripts')
           if ep.value.startswith('lwsr_plugin.')]
    return sorted((ep.name, [os.path.join(BIN, ep.name), '--help']) for ep in eps)


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv, env):
    """``(wall seconds, CPU seconds)`` of one run of ``argv``."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}')
    return elapsed, _children_cpu() - cpu


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
    from lwsr_plugin.ops.device import machine_line  # torch, after the rounds: the children above never load it
    print(machine_line([__file__] + (sys.argv[1:] if argv is None else list(argv))))
    print(f'Python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible; wall seconds of a fresh interpreter, '
          f'{args.repeats} interleaved rounds.\n')
    print('| what | wall median s | wall min s | CPU median s |\n|---|---|---|---|')

    def cols(label):
        wall, cpu = [t[0] for t in times[label]], [t[1] for t in times[label]]
        return statistics.median(wall), min(wall), statistics.median(cpu)

    for label, _, _ in rows:
        print('| {} | {:.3f} | {:.3f} | {:.3f} |'.format(label, *cols(label)))
    if not args.no_imports:
        inside = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, '-c', REGISTER], env=dict(env, LWSR_PLUGIN_AUTOLOAD='0'),
                                 stdout=subprocess.PIPE, text=True, check=True).stdout.split()
            inside.append((float(out[0]), float(out[1])))
        wall, cpu = [t[0] for t in inside], [t[1] for t in inside]
        print(f'| `import lwsr_plugin` after `import basicsr`: registration (what the plugin adds) | '
              f'{statistics.median(wall):.3f} | {min(wall):.3f} | {statistics.median(cpu):.3f} |')


if __name__ == '__main__':
    main()
