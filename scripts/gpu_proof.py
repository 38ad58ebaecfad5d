"""The prepared GPU run behind the GPU rows of docs/reproduction.md and docs/inference_speed.md: one command, bounded by
one time budget, that prepares the training set, trains the recipes from scratch with ``lwsr-reproduce`` and runs
the inference benchmark on whatever GPU is present, and leaves at most 8 small files in ``--out``.

    python scripts/gpu_proof.py --data DATA --out $OUT --budget-s 570 --stages idn
    python scripts/gpu_proof.py --data DATA --out $OUT --budget-s 200 --stages bench imdn

``DATA`` holds ``T91/`` and ``BSD200/`` (the 291 set's sources) and ``Set5/`` (``HR/`` + ``LR_bicubic/X{s}/``), e.g.
``../shared/datasets`` or the folder ``scripts/device_bundle.sh`` builds for an offline GPU machine. Stages, in the
order given, each given what is left of ``--budget-s`` (a stage that no longer fits is skipped and says so):

- ``idn``: ``lwsr-prepare-291 --y-only --scales 3 --min-size 78``, then ``lwsr-reproduce --recipe IDN_x3`` for
  ``--idn-minutes`` of training (target: Set5 >= 33.81 dB within 10 GPU-minutes) -> ``IDN_x3_curve.csv``,
  ``IDN_x3_summary.md``, ``IDN_x3_curve.png``;
- ``imdn``: the RGB 291 set at x4 (``--min-size 192``), ``lwsr-reproduce --recipe IMDN_x4`` (target 31.9 dB) ->
  ``IMDN_x4_curve.csv``, ``IMDN_x4_summary.md``;
- ``bench``: ``scripts/benchmark_inference.py --all-archs`` on the device (frames/s at 720p output, peak memory,
  ratios) -> ``benchmark_inference.txt``.

Everything else (the LMDBs, experiments, weights) stays in ``--work``; ``proof.log`` holds every stage's output.
Every command runs as ``python -m`` of the checkout's modules, so it works from a plain checkout on ``PYTHONPATH``
(no console scripts needed) as well as from an installed package.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # the checkout's package where it is not installed (the GPU machine)
from lwsr_plugin.fileio import atomic_target, write_text_atomic  # noqa: E402
# (recipe, scale, 291 preparation flags, Set5 LR folder) per training stage
TRAIN_STAGES = {
    'idn': ('IDN_x3', 3, ['--y-only', '--min-size', '78']),
    'imdn': ('IMDN_x4', 4, ['--min-size', '192']),
}
SETUP_S = 60  # preparation of one 291 variant on a 16-core machine (~40 s on 2 cores for the Y set)
EVAL_RESERVE_S = 75  # start-up, log-spaced evaluations and writing the results around the training time


class Proof:
    """Runs the stages against one deadline and keeps one log."""

    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.budget_s
        os.makedirs(args.out, exist_ok=True)
        os.makedirs(args.work, exist_ok=True)
        self.log_path = os.path.join(args.out, 'proof.log')
        self.log = open(self.log_path, 'a', encoding='utf-8')

    def left(self):
        return self.deadline - time.monotonic()

    def say(self, text):
        line = f'[gpu_proof {time.strftime("%H:%M:%S")} | {self.left():.0f} s left] {text}'
        print(line, flush=True)
        self.log.write(line + '\n')
        self.log.flush()

    def run(self, cmd, timeout=None):
        """``cmd`` with its output both on the console and in proof.log; returns the exit status."""
        self.say('$ ' + ' '.join(cmd))
        env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONPATH=os.pathsep.join(
            p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
        proc = subprocess.Popen(cmd, cwd=self.args.work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors='replace')
        start = time.monotonic()
        for line in proc.stdout:
            if '\r' in line:  # a progress bar: keep its last state only
                line = line.rsplit('\r', 1)[-1]
            sys.stdout.write(line)
            self.log.write(line)
            if timeout and time.monotonic() - start > timeout:
                proc.kill()
                self.say(f'stopped after {timeout:.0f} s (the stage\'s share of the budget)')
                break
        self.log.flush()
        return proc.wait()

    def environment(self):
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'
        self.say(f'python {sys.version.split()[0]}, torch {torch.__version__}, {gpu}, {os.cpu_count()} CPUs')

    def datasets(self, scale):
        """``work/datasets/Set5`` linked to the data's Set5 (the evaluation set every recipe uses)."""
        folder = os.path.join(self.args.work, 'datasets')
        os.makedirs(folder, exist_ok=True)
        link = os.path.join(folder, 'Set5')
        source = os.path.abspath(os.path.join(self.args.data, 'Set5'))
        if not os.path.isdir(os.path.join(source, 'LR_bicubic', f'X{scale}')):
            raise SystemExit(f'gpu_proof: {source}/LR_bicubic/X{scale} does not exist; --data must hold Set5/HR and '
                             f'Set5/LR_bicubic/X{scale} (lwsr-prepare-benchmark makes them).')
        if not os.path.lexists(link):
            os.symlink(source, link)

    def train(self, stage):
        recipe, scale, prep_flags = TRAIN_STAGES[stage]
        minutes = getattr(self.args, f'{stage}_minutes')
        fits = (self.left() - SETUP_S - EVAL_RESERVE_S) / 60
        if fits < 0.05:
            self.say(f'{stage}: skipped, {self.left():.0f} s left is too little for preparation and training')
            return 1
        if fits < minutes:
            self.say(f'{stage}: {minutes} training minutes do not fit; {fits:.2f} do')
            minutes = fits
        self.datasets(scale)
        sources = [os.path.abspath(os.path.join(self.args.data, s)) for s in ('T91', 'BSD200')]
        rc = self.run([sys.executable, '-m', 'lwsr_plugin.data.set291', '--input', *sources, '--out',
                       os.path.join('datasets', '291'), '--scales', str(scale), *prep_flags])
        if rc:
            self.say(f'{stage}: the 291 preparation failed (exit {rc})')
            return rc
        minutes = min(minutes, (self.left() - EVAL_RESERVE_S) / 60)
        cmd = [sys.executable, '-m', 'lwsr_plugin.cli.reproduce', '--recipe', recipe, '--minutes', f'{minutes:.3f}',
               '--evals', str(self.args.evals), '--sets', 'Set5', '--schedule', self.args.schedule,
               '--options', os.path.join(REPO, 'options'), '--out', 'results']
        if self.args.batch:
            cmd += ['--batch', str(self.args.batch)]
        rc = self.run(cmd, timeout=max(self.left() - 5, 1))
        result = os.path.join(self.args.work, 'results', recipe)
        for name in ('curve.csv', 'summary.md', 'curve.png'):
            if os.path.isfile(os.path.join(result, name)):
                with atomic_target(os.path.join(self.args.out, f'{recipe}_{name}')) as tmp:
                    shutil.copyfile(os.path.join(result, name), tmp)
        self.say(f'{stage}: lwsr-reproduce exit {rc}; results copied to {self.args.out}')
        return rc

    def bench(self):
        if self.left() < 30:
            self.say('bench: skipped, under 30 s left')
            return 1
        device = 'cuda' if _cuda() else 'cpu'
        cmd = [sys.executable, os.path.join(HERE, 'benchmark_inference.py'), '--device', device,
               '--repeats', str(self.args.bench_repeats)] + (self.args.bench_args or ['--all-archs'])
        before = os.path.getsize(self.log_path)
        rc = self.run(cmd, timeout=max(self.left() - 5, 1))
        with open(self.log_path, encoding='utf-8') as f:
            f.seek(before)
            text = f.read()
        write_text_atomic(os.path.join(self.args.out, 'benchmark_inference.txt'), text)
        return rc


def _cuda():
    import torch
    return torch.cuda.is_available()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, help='folder with T91/, BSD200/ and Set5/')
    p.add_argument('--out', required=True, help='folder for the (at most 8) result files, e.g. $OUT')
    p.add_argument('--work', default=os.path.join(os.environ.get('TMPDIR', '/tmp'), 'lwsr_gpu_proof'),
                   help='scratch folder for LMDBs and experiments')
    p.add_argument('--budget-s', type=float, default=570, help='wall-clock budget of the whole command')
    p.add_argument('--stages', nargs='+', default=['idn'], choices=['idn', 'imdn', 'bench'])
    p.add_argument('--idn-minutes', type=float, default=8.0, help='IDN x3 training minutes (if they fit)')
    p.add_argument('--imdn-minutes', type=float, default=8.0, help='IMDN x4 training minutes (if they fit)')
    # wsd: the paper's rate, annealed over the last 20 %: it cost <= 0.14 dB at 30 CPU minutes (docs/reproduction.md)
    # and a GPU budget runs 10-20x the iterations, closer to where annealing pays
    p.add_argument('--schedule', default='wsd', choices=['paper', 'cosine', 'wsd'])
    p.add_argument('--batch', type=int, help='lwsr-reproduce --batch (learning rate scaled with cosine / wsd)')
    p.add_argument('--evals', type=int, default=6)
    p.add_argument('--bench-repeats', type=int, default=3)
    p.add_argument('--bench-args', nargs=argparse.REMAINDER, help='benchmark_inference.py arguments instead of '
                   '--all-archs (last on the line)')
    args = p.parse_args(argv)
    for sub in ('T91', 'BSD200', 'Set5'):
        if ('idn' in args.stages or 'imdn' in args.stages) and not os.path.isdir(os.path.join(args.data, sub)):
            print(f'gpu_proof: --data {args.data}: {sub}/ is missing (training needs T91/, BSD200/ and Set5/; '
                  'scripts/device_bundle.sh gathers them)', file=sys.stderr)
            return 2
    args.out, args.work, args.data = (os.path.abspath(x) for x in (args.out, args.work, args.data))
    proof = Proof(args)
    proof.environment()
    status = 0
    for stage in args.stages:
        rc = proof.bench() if stage == 'bench' else proof.train(stage)
        status = status or rc
    proof.say(f'done (exit {status})')
    return status


if __name__ == '__main__':
    sys.exit(main())
