"""Two IMDN x4 trainings on the same cores against one alone: the training step's it/s with and without the plugin's
thread governor (:mod:`lwsr_plugin.patches.threads`).

Each run is a fresh subprocess (OpenMP reads its environment once, when torch loads it) that builds ``LWSRModel``
from the shipped ``options/train_IMDN_x4.yml`` (network, batch 16, patch 192, Adam, L1; ``amp: auto`` = bf16 where
the CPU runs it natively, ``channels_last``) and repeats BasicSR's per-iteration calls (``update_learning_rate``,
``feed_data``, ``optimize_parameters``) on one batch held in memory, so only compute is measured. Runs started
together wait for each other after the warm-up, time the same number of iterations, and keep training until the last
of them has finished, so every timed iteration shares the cores.

Configurations:

* ``default``: the plugin without the governor (``LWSR_THREADS`` = torch's thread count, OpenMP's default wait);
* ``governor``: the governor alone (thread count from the CPUs other processes use, re-checked every 10 s),
  OpenMP's default wait;
* ``passive``: torch's thread count with ``OMP_WAIT_POLICY=PASSIVE`` (what the wait policy alone gives or costs);
* ``fix``: the governor and ``OMP_WAIT_POLICY=PASSIVE``.

Rounds run the configurations interleaved (solo, solo, pair, pair), so load from other processes hits all alike;
"share of solo" is each run's it/s over the median solo it/s of the ``default`` configuration.

    python scripts/benchmark_contention.py --iters 30 --warmup 5 --rounds 1 --configs default fix
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {  # name: (environment set, environment removed)
    'default': ({'LWSR_THREADS': 'TORCH_DEFAULT'}, ('OMP_WAIT_POLICY',)),
    'governor': ({}, ('LWSR_THREADS', 'OMP_WAIT_POLICY')),
    'passive': ({'LWSR_THREADS': 'TORCH_DEFAULT', 'OMP_WAIT_POLICY': 'PASSIVE'}, ()),
    'fix': ({'OMP_WAIT_POLICY': 'PASSIVE'}, ('LWSR_THREADS',)),
}


def child(args):
    """One training: warm-up, wait for the others, time ``--iters`` iterations, train on until all are done."""
    import torch

    import lwsr_plugin.patches  # noqa: F401  (applies the patches, the governor among them)
    from basicsr.models import build_model
    from basicsr.utils import get_root_logger
    sys.path.insert(0, HERE)
    from benchmark_training import options_for
    get_root_logger().setLevel('INFO')  # the governor's lines go to stderr, which the parent shows
    opt = options_for('IMDN_x4', 'fast', os.devnull, 'cpu', False)
    batch = opt['datasets']['train']['batch_size_per_gpu']
    gt_size = opt['datasets']['train']['gt_size']
    torch.manual_seed(0)
    data = {'gt': torch.rand(batch, 3, gt_size, gt_size), 'lq': torch.rand(batch, 3, gt_size // 4, gt_size // 4)}
    model = build_model(opt)
    it = 0

    def step():
        nonlocal it
        it += 1
        model.update_learning_rate(it, warmup_iter=-1)
        model.feed_data(data)
        model.optimize_parameters(it)

    for _ in range(args.warmup):
        step()
    open(os.path.join(args.sync, f'ready{args.index}'), 'w').close()
    while len([n for n in os.listdir(args.sync) if n.startswith('ready')]) < args.runs:
        time.sleep(0.01)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    seconds = time.perf_counter() - start
    result = {'its': args.iters / seconds, 'threads': torch.get_num_threads(),
              'wait': os.environ.get('OMP_WAIT_POLICY', 'default')}
    open(os.path.join(args.sync, f'done{args.index}'), 'w').close()
    while len([n for n in os.listdir(args.sync) if n.startswith('done')]) < args.runs:
        step()  # keep the cores shared until the slowest run has timed its iterations
    print('RESULT ' + json.dumps(result), flush=True)


def run_together(config, runs, args, default_threads):
    """Start ``runs`` trainings of ``config`` at once; their results (it/s, final threads, wait policy, log lines)."""
    set_env, unset = CONFIGS[config]
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update({k: str(default_threads) if v == 'TORCH_DEFAULT' else v for k, v in set_env.items()})
    with tempfile.TemporaryDirectory() as sync:
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), '--child', '--index', str(i),
                                   '--runs', str(runs), '--sync', sync, '--iters', str(args.iters),
                                   '--warmup', str(args.warmup)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(runs)]
        results = []
        for proc in procs:
            out, err = proc.communicate()
            lines = [line for line in out.splitlines() if line.startswith('RESULT ')]
            if proc.returncode or not lines:
                raise SystemExit(f'{config} run failed:\n{err[-3000:]}')
            result = json.loads(lines[-1][7:])
            result['log'] = [line.split('lwsr_plugin: ', 1)[1] for line in err.splitlines() if 'intra-op' in line]
            results.append(result)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int, default=30, help='timed iterations per run (default 30)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first (default 5)')
    parser.add_argument('--rounds', type=int, default=1, help='interleaved rounds of all configurations')
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=list(CONFIGS),
                        help='configurations to run (default all; `default` is always run, as the solo reference)')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--index', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--runs', type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument('--sync', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    import torch

    from lwsr_plugin.ops.device import machine_line
    default_threads = torch.get_num_threads()
    measured = {}  # (config, runs) -> list of result dicts
    for r in range(args.rounds):
        for runs in (1, 2):
            for config in [c for c in CONFIGS if c == 'default' or c in args.configs]:
                load = os.getloadavg()[0]
                results = run_together(config, runs, args, default_threads)
                print(f'round {r + 1}: {config} x{runs} (load average {load:.1f} before): '
                      + ', '.join(f'{x["its"]:.2f} it/s ({x["threads"]} threads)' for x in results)
                      + ''.join(f'\n    log: {line}' for x in results for line in x['log']), file=sys.stderr)
                measured.setdefault((config, runs), []).extend(results)
    solo = statistics.median(x['its'] for x in measured[('default', 1)])
    print(machine_line(sys.argv if argv is None else [__file__] + list(argv)))
    print(f'Load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.\n')
    print('| configuration | runs at once | threads each (at the end) | wait policy | it/s each | share of solo |')
    print('|---|---|---|---|---|---|')
    for (config, runs), results in measured.items():
        its = [x['its'] for x in results]
        threads = sorted({x['threads'] for x in results})
        print(f'| {config} | {runs} | {"/".join(map(str, threads))} | {results[0]["wait"]} | '
              f'{" / ".join(f"{v:.2f}" for v in its)} | '
              f'{" / ".join(f"{100 * v / solo:.0f} %" for v in its)} |')


if __name__ == '__main__':
    sys.exit(main())
