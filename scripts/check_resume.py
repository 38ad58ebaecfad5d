"""Kill/resume check: seeded CPU training runs killed with SIGKILL at random moments (some while a checkpoint is being
written), restarted with ``--auto_resume``, and compared tensor by tensor with the uninterrupted run.

    python scripts/check_resume.py --runs 20 --workers 0 2          # 20 kills per worker setting, prints a table
    python scripts/check_resume.py --runs 20 --torchrun --torchrun-runs 6   # also 2-process gloo torchrun, rank 1
                                                                          # killed

Each run trains a small IMDN x4 (LWSRModel, bf16 autocast + channels_last where the CPU has bf16, Adam) on Set5
patches from ``../shared/datasets`` with BasicSR's loop, ``lwsr-train``: 5 batches of 4 per epoch (and per process
under torchrun), so kills fall in several epochs. Compared at the end: every tensor of the
final network file and of the final training state (Adam's moments and step counts, the scheduler, the saved random
generators) and the logged loss of every iteration. Everything a run writes stays under ``--work`` (a temp folder).
"""
import argparse
import glob
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK = os.path.join(REPO, 'scripts', 'resume_kill_hook.py')
NAME = 'resume_check'


def options(total_iter, save_freq, workers, batch=4, ratio=4):
    return {
        'name': NAME, 'model_type': 'LWSRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 7,
        'datasets': {'train': {
            'name': 'Set5_train', 'type': 'PairedImageDataset', 'dataroot_gt': 'datasets/Set5/HR',
            'dataroot_lq': 'datasets/Set5/LR_bicubic/X4', 'filename_tmpl': '{}x4', 'io_backend': {'type': 'disk'},
            'gt_size': 32, 'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': workers,
            'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': ratio, 'prefetch_mode': None}},
        'network_g': {'type': 'IMDN', 'num_feat': 12, 'num_block': 2, 'upscale': 4},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0, 'amp': 'auto', 'channels_last': True,
                  'optim_g': {'type': 'Adam', 'lr': 5e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [total_iter // 2], 'gamma': 0.5},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': save_freq, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
    }


def prepare(work, datasets, opt):
    import yaml
    os.makedirs(work, exist_ok=True)
    link = os.path.join(work, 'datasets')
    if not os.path.exists(link):
        os.symlink(os.path.abspath(datasets), link)
    path = os.path.join(work, 'train.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def train(work, opt_path, kill=None, resume=False, nproc=1, kill_rank=None, timeout=900):
    """One ``lwsr-train`` (or 2-process torchrun) run in ``work``; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', LWSR_USER_MODULES=HOOK)
    env.pop('LWSR_KILL_AT', None)
    env.pop('LWSR_KILL_RANK', None)
    if kill is not None:
        env['LWSR_KILL_AT'] = str(kill)
        if kill_rank is not None:
            env['LWSR_KILL_RANK'] = str(kill_rank)
    bindir = os.path.dirname(sys.executable)
    if nproc > 1:
        cmd = [os.path.join(bindir, 'torchrun'), f'--nproc_per_node={nproc}', f'--master_port={_free_port()}',
               '-m', 'lwsr_plugin.train', '-opt', opt_path, '--launcher', 'pytorch']
    else:
        cmd = [os.path.join(bindir, 'lwsr-train'), '-opt', opt_path]
    if resume:
        cmd.append('--auto_resume')
    return subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def loss_curve(work):
    """{iteration: logged l_pix} over every log file of the run; a later file (the resumed run) wins."""
    curve = {}
    for log in sorted(glob.glob(os.path.join(work, 'experiments', NAME, f'train_{NAME}_*.log'))):
        with open(log, encoding='utf-8') as f:
            for line in f:
                m = re.search(r'iter:\s*(\d+), lr:.*l_pix: (\S+)', line)
                if m:
                    curve[int(m.group(1))] = m.group(2)
    return curve


def _tensors(obj, prefix=''):
    import torch
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _tensors(obj[key], f'{prefix}/{key}')
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f'{prefix}/{i}')
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        yield prefix, obj


def compare(ref, other, total_iter):
    """(tensors compared, tensors different, max abs difference, loss curve equal, problem or '')."""
    import torch
    files = [os.path.join('models', f'net_g_{total_iter}.pth'), os.path.join('training_states', f'{total_iter}.state')]
    compared = different = 0
    max_diff = 0.0
    for rel in files:
        a_path, b_path = (os.path.join(w, 'experiments', NAME, rel) for w in (ref, other))
        if not os.path.isfile(b_path):
            return compared, different, float('nan'), False, f'{rel} missing'
        a = dict(_tensors(torch.load(a_path, map_location='cpu', weights_only=True)))
        b = dict(_tensors(torch.load(b_path, map_location='cpu', weights_only=True)))
        if a.keys() != b.keys():
            return compared, different, float('nan'), False, f'{rel}: different entries'
        for key, value in a.items():
            compared += 1
            if isinstance(value, torch.Tensor):
                if not torch.equal(value, b[key]):
                    different += 1
                    if value.is_floating_point():
                        max_diff = max(max_diff, (value.float() - b[key].float()).abs().max().item())
            elif value != b[key]:
                different += 1
    curve_a, curve_b = loss_curve(ref), loss_curve(other)
    curve_ok = len(curve_a) == total_iter and curve_a == curve_b
    return compared, different, max_diff, curve_ok, ''


def stale_temp_files(work):
    return glob.glob(os.path.join(work, 'experiments', NAME, '*', '*.tmp-*'))


def kill_plan(rng, total_iter, save_freq, count):
    """``count`` kill moments: mostly before a random iteration, every fourth while a checkpoint file is written."""
    saves = 2 * (total_iter // save_freq - 1)  # torch.save calls before the last checkpoint: net file, then state
    plan = []
    for i in range(count):
        if i % 4 == 3 and saves > 0:
            plan.append(f'save:{rng.randint(1, saves)}')
        else:
            plan.append(str(rng.randint(2, total_iter)))
    return plan


def run_case(root, datasets, label, total_iter, save_freq, workers, kill, nproc=1):
    """A killed and resumed run in ``root/label``; returns a row dict (the reference must be in ``root/ref-*``)."""
    work = os.path.join(root, label)
    shutil.rmtree(work, ignore_errors=True)
    opt_path = prepare(work, datasets, options(total_iter, save_freq, workers, ratio=4 * nproc))
    start = time.time()
    # under torchrun rank 1 dies before an iteration; rank 0, the only one that writes, dies in a save
    kill_rank = (0 if str(kill).startswith('save:') else 1) if nproc > 1 else None
    first = train(work, opt_path, kill=kill, nproc=nproc, kill_rank=kill_rank)
    killed = first.returncode != 0
    second = train(work, opt_path, resume=True, nproc=nproc)
    if second.returncode != 0:
        return {'case': label, 'kill': kill, 'killed': killed, 'problem': f'resume exited {second.returncode}: ' +
                second.stdout.strip().splitlines()[-1][:200] if second.stdout.strip() else ''}
    resumed_from = re.search(r'Resuming training from epoch: \d+, iter: (\d+)', second.stdout)
    exact = re.search(r'Resume (exact|not exact[^:]*)', second.stdout)
    compared, different, max_diff, curve_ok, problem = compare(os.path.join(root, f'ref-w{workers}-p{nproc}'),
                                                               work, total_iter)
    return {'case': label, 'kill': kill, 'killed': killed,
            'resumed_from': int(resumed_from.group(1)) if resumed_from else 0,
            'log': exact.group(1) if exact else ('fresh start' if not resumed_from else '?'),
            'tensors': compared, 'different': different, 'max_abs_diff': max_diff, 'curve_equal': curve_ok,
            'stale_tmp': len(stale_temp_files(work)), 'seconds': time.time() - start, 'problem': problem}


def reference(root, datasets, total_iter, save_freq, workers, nproc=1):
    work = os.path.join(root, f'ref-w{workers}-p{nproc}')
    shutil.rmtree(work, ignore_errors=True)
    proc = train(work, prepare(work, datasets, options(total_iter, save_freq, workers, ratio=4 * nproc)), nproc=nproc)
    if proc.returncode != 0:
        raise SystemExit(f'check_resume: the uninterrupted run failed ({proc.returncode}):\n{proc.stdout[-3000:]}')
    return work


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=20, help='killed runs per setting (default 20)')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2], help='num_worker_per_gpu settings')
    parser.add_argument('--torchrun', action='store_true', help='also 2-process gloo torchrun (rank 1 killed)')
    parser.add_argument('--torchrun-runs', type=int, default=None, help='killed torchrun runs (default --runs)')
    parser.add_argument('--iters', type=int, default=24, help='total_iter of each run (default 24)')
    parser.add_argument('--save-freq', type=int, default=4, help='save_checkpoint_freq (default 4)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the kill moments')
    parser.add_argument('--datasets', default=os.path.join(os.path.dirname(REPO), 'shared', 'datasets'))
    parser.add_argument('--work', default=None, help='folder for the runs (default: a temp folder, removed)')
    args = parser.parse_args(argv)
    root = args.work or tempfile.mkdtemp(prefix='check_resume-')
    rng = random.Random(args.seed)
    settings = [(w, 1) for w in args.workers] + ([(0, 2)] if args.torchrun else [])
    rows = []
    try:
        for workers, nproc in settings:
            reference(root, args.datasets, args.iters, args.save_freq, workers, nproc)
            runs = args.runs if nproc == 1 or args.torchrun_runs is None else args.torchrun_runs
            for i, kill in enumerate(kill_plan(rng, args.iters, args.save_freq, runs)):
                row = run_case(root, args.datasets, f'w{workers}-p{nproc}-{i}', args.iters, args.save_freq, workers,
                               kill, nproc)
                row['setting'] = f'{nproc} proc, {workers} workers'
                rows.append(row)
                print(_row_line(row), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    identical = sum(1 for r in rows if not r.get('problem') and r.get('different') == 0 and r.get('curve_equal'))
    print(f'\n{identical} of {len(rows)} killed-and-resumed runs bit-identical to the uninterrupted run '
          f'(weights, optimizer and scheduler state, generators, loss curve).')
    return 0 if identical == len(rows) else 1


def _row_line(row):
    if row.get('problem') and 'tensors' not in row:
        return f"| {row['case']} | kill {row['kill']} | {row['problem']} |"
    return (f"| {row['case']} | kill {row['kill']} | resumed from {row['resumed_from']} ({row['log']}) | "
            f"{row['different']}/{row['tensors']} differ, max {row['max_abs_diff']:.3g} | "
            f"curve {'equal' if row['curve_equal'] else 'DIFFERENT'} | stale tmp {row['stale_tmp']} | "
            f"{row['seconds']:.0f} s | {row['problem']} |")


if __name__ == '__main__':
    sys.exit(main())
