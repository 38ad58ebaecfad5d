"""Training speed of the plugin against a plain PyTorch loop, side by side in one process.

Per arch, three paths train the same network (the shipped ``options/train_<arch>.yml``: network, batch size, patch
size, optimizer, pixel loss) on the same real data, round by round, interleaved, so load from other processes hits
all alike:

* ``plain``: a plain PyTorch loop, NCHW fp32, the papers' recipe. Its batches are cut from images already in memory
  (no decoding), so this path measures compute alone: the strictest baseline for the other two.
* ``plugin default``: the option file on BasicSR's own path (BasicSR's SRModel / TwoStageSRModel, fp32, NCHW)
  with BasicSR's ``PairedImageDataset`` reading the LMDB (a PNG decoded per patch).
* ``plugin fast``: ``LWSRModel`` (or TwoStageSRModel) with ``amp: auto`` (bf16 where native), ``channels_last``,
  and ``InMemoryPairedImageDataset`` on the same LMDB (``--compile`` adds ``compile: true``).

Both plugin paths make exactly the calls BasicSR's ``train_pipeline`` makes per iteration (loader via
``build_dataloader`` + prefetcher, ``update_learning_rate``, ``feed_data``, ``optimize_parameters``) on a model from
``build_model``. Reported per path: median ms/iter with min-max, patches/s, the share of the iteration spent waiting
for the batch, peak memory (CUDA: max allocated; CPU: peak RSS sampled during the path minus RSS at start), and on
CUDA the GPU busy share (GPU time between events around the step / wall time).

Data: a DIV2K-like sub-image LMDB made once from ../shared/datasets (``--hr`` folder, default Urban100 + BSD200 HR)
under ``--work``. IDN (Y) uses ``color: y`` on the same RGB LMDB.

    python scripts/benchmark_training.py                                  # IMDN x4, IDN x3, DRN x4, s-LWSR32 x4
    python scripts/benchmark_training.py --archs IMDN_x4 --rounds 5 --iters 3
    python scripts/benchmark_training.py --device cuda --archs IMDN_x4    # GPU: busy share, fp16/bf16
"""
import argparse
import copy
import os
import statistics
import sys
import threading
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.environ.get('LWSR_SHARED', os.path.join(os.path.dirname(REPO), 'shared'))
ARCHS = {  # option file, the scale of the LMDB it needs
    'IMDN_x4': ('train_IMDN_x4.yml', 4),
    'IDN_x3': ('train_IDN_x3.yml', 3),
    'DRN_x4': ('train_DRN_x4.yml', 4),
    'sLWSR32_x4': ('train_sLWSR32_x4.yml', 4),
}


def rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


class PeakRSS:
    """Samples the process RSS every 5 ms while active."""

    def __init__(self):
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_lmdbs(work, hr_dirs, scales):
    """A DIV2K-like layout under ``work`` (HR sub-images 480/240 and LR for each scale) made by lwsr-prepare-div2k."""
    import shutil
    import subprocess
    root = os.path.join(work, 'DIV2K_X' + '_'.join(map(str, scales)))  # one layout per scale set: nothing to redo
    hr_link = os.path.join(root, 'DIV2K_train_HR')
    if not os.path.isdir(hr_link):
        os.makedirs(hr_link)
        for folder in hr_dirs:
            for name in sorted(os.listdir(folder)):
                if name.lower().endswith('.png'):
                    shutil.copy(os.path.join(folder, name), os.path.join(hr_link, f'{os.path.basename(folder)}_{name}'))
    wanted = [os.path.join(root, f'DIV2K_train_LR_bicubic_X{s}_sub.lmdb') for s in scales]
    if not all(os.path.isdir(p) for p in wanted):
        cmd = [os.path.join(os.path.dirname(sys.executable), 'lwsr-prepare-div2k'), '--root', root, '--scales',
               *map(str, scales), '--splits', 'train', '--skip-small']
        subprocess.run(cmd, check=True)
    return root


def options_for(arch, path_kind, lmdb_root, device, compile_mode, workers=0):
    """The option dict BasicSR's parse_options would give for the shipped file, adapted to the path."""
    file, scale = ARCHS[arch]
    with open(os.path.join(REPO, 'options', file), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt['scale'] = scale
    train_set = opt['datasets']['train']
    train_set.update(name='bench', phase='train', scale=scale, io_backend={'type': 'lmdb'}, filename_tmpl='{}',
                     dataroot_gt=os.path.join(lmdb_root, 'DIV2K_train_HR_sub.lmdb'),
                     dataroot_lq=os.path.join(lmdb_root, f'DIV2K_train_LR_bicubic_X{scale}_sub.lmdb'),
                     num_worker_per_gpu=workers, prefetch_mode=None, persistent_workers=workers > 0,
                     dataset_enlarge_ratio=100)
    if opt['network_g'].get('num_in_ch', 3) == 1 or opt['network_g']['type'] == 'IDN':
        train_set['color'] = 'y'
    train_opt = opt['train']
    for key in ('amp', 'channels_last', 'compile'):
        train_opt.pop(key, None)
    if path_kind == 'default':
        train_set['type'] = 'PairedImageDataset'
        if opt['model_type'] == 'LWSRModel':
            opt['model_type'] = 'SRModel'
    else:
        train_set['type'] = 'InMemoryPairedImageDataset'
        train_set['cache_dir'] = os.path.join(lmdb_root, 'cache')
        if opt['model_type'] == 'SRModel':
            opt['model_type'] = 'LWSRModel'
        train_opt.update(amp='auto', channels_last=True, compile=compile_mode or False)
    opt['datasets'] = {'train': train_set}
    opt.pop('val', None)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=0 if device == 'cpu' else 1,
               name=f'bench_{arch}_{path_kind}', manual_seed=0)
    opt['path'] = {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                   'models': os.devnull, 'training_states': os.devnull}
    opt['logger'] = {'print_freq': 10**9, 'save_checkpoint_freq': 10**9, 'use_tb_logger': False}
    return opt


class PluginPath:
    """BasicSR's per-iteration calls on a model and loader built as train_pipeline builds them."""

    def __init__(self, opt):
        from basicsr.data import build_dataloader, build_dataset
        from basicsr.data.data_sampler import EnlargedSampler
        from basicsr.data.prefetch_dataloader import CPUPrefetcher
        from basicsr.models import build_model
        ds_opt = opt['datasets']['train']
        dataset = build_dataset(ds_opt)
        sampler = EnlargedSampler(dataset, 1, 0, ds_opt['dataset_enlarge_ratio'])
        loader = build_dataloader(dataset, ds_opt, num_gpu=opt['num_gpu'], dist=False, sampler=sampler, seed=0)
        self.prefetcher = CPUPrefetcher(loader)
        self.model = build_model(opt)
        self.batch = ds_opt['batch_size_per_gpu']
        self.iter = 0
        self.prefetcher.reset()

    def step(self):
        t0 = time.perf_counter()
        data = self.prefetcher.next()
        if data is None:
            self.prefetcher.reset()
            data = self.prefetcher.next()
        t1 = time.perf_counter()
        self.iter += 1
        self.model.update_learning_rate(self.iter, warmup_iter=-1)
        self.model.feed_data(data)
        self.model.optimize_parameters(self.iter)
        return t1 - t0


class PlainPath:
    """A plain PyTorch loop: NCHW fp32, Adam, the option file's pixel loss, batches cut from decoded images."""

    def __init__(self, opt, device):
        import random

        import numpy as np
        import torch
        from basicsr.archs import build_network
        from basicsr.data.transforms import augment, paired_random_crop
        from basicsr.utils import bgr2ycbcr, img2tensor
        self.torch, self.device = torch, torch.device(device)
        ds_opt = opt['datasets']['train']
        self.net = build_network(copy.deepcopy(opt['network_g'])).to(self.device).train()
        optim = dict(opt['train']['optim_g'])
        optim.pop('type')
        self.optimizer = torch.optim.Adam(self.net.parameters(), **optim)
        from basicsr.losses import build_loss
        self.loss = build_loss(copy.deepcopy(opt['train']['pixel_opt']))  # the recipe's own loss, as the models use
        from basicsr.utils import FileClient, imfrombytes
        from basicsr.data.data_util import paired_paths_from_lmdb
        paths = paired_paths_from_lmdb([ds_opt['dataroot_lq'], ds_opt['dataroot_gt']], ['lq', 'gt'])[:64]
        client = FileClient('lmdb', db_paths=[ds_opt['dataroot_lq'], ds_opt['dataroot_gt']], client_keys=['lq', 'gt'])
        self.pairs = [(imfrombytes(client.get(p['gt_path'], 'gt'), float32=True),
                       imfrombytes(client.get(p['lq_path'], 'lq'), float32=True)) for p in paths]
        gt_size = opt['train'].get('two_stage', {}).get('stage1_gt_size', ds_opt['gt_size'])
        y = ds_opt.get('color') == 'y'

        def batch():
            gts, lqs = [], []
            for _ in range(ds_opt['batch_size_per_gpu']):
                gt, lq = random.choice(self.pairs)
                gt, lq = paired_random_crop(gt, lq, gt_size, opt['scale'])
                gt, lq = augment([gt, lq], True, True)
                if y:
                    gt, lq = bgr2ycbcr(gt, y_only=True)[..., None], bgr2ycbcr(lq, y_only=True)[..., None]
                g, q = img2tensor([gt, lq], bgr2rgb=not y, float32=True)
                gts.append(g)
                lqs.append(q)
            return torch.stack(lqs), torch.stack(gts)

        self.batches = [batch() for _ in range(8)]  # pre-cut: this path measures compute only
        self.i = 0
        self.batch = ds_opt['batch_size_per_gpu']
        del np

    def step(self):
        lq, gt = self.batches[self.i % len(self.batches)]
        self.i += 1
        lq, gt = lq.to(self.device), gt.to(self.device)
        self.optimizer.zero_grad()
        loss = self.loss(self.net(lq), gt)
        loss.backward()
        self.optimizer.step()
        return 0.0


def run_arch(arch, args, lmdb_root):
    import torch
    device = args.device
    paths = {
        'plain': PlainPath(options_for(arch, 'default', lmdb_root, device, None), device),
        'plugin default': PluginPath(options_for(arch, 'default', lmdb_root, device, None, args.workers)),
        'plugin fast': PluginPath(options_for(arch, 'fast', lmdb_root, device, args.compile, args.workers)),
    }
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    for name, path in paths.items():  # warm-up: compile, allocator, cudnn autotuning, worker start
        for _ in range(args.warmup):
            path.step()
        sync()
    stats = {name: {'iter': [], 'wait': [], 'busy': [], 'peak': 0.0} for name in paths}
    base_rss = rss_mb()
    for _ in range(args.rounds):
        for name, path in paths.items():
            if device == 'cuda':
                torch.cuda.reset_peak_memory_stats()
            with PeakRSS() as peak:
                for _ in range(args.iters):
                    if device == 'cuda':
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    t0 = time.perf_counter()
                    if device == 'cuda':
                        start.record()
                    wait = path.step()
                    if device == 'cuda':
                        end.record()
                    sync()
                    elapsed = time.perf_counter() - t0
                    stats[name]['iter'].append(elapsed)
                    stats[name]['wait'].append(wait)
                    if device == 'cuda':
                        stats[name]['busy'].append(start.elapsed_time(end) / 1000 / elapsed)
            mem = torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else peak.peak - base_rss
            stats[name]['peak'] = max(stats[name]['peak'], mem)
    return paths, stats


def report(arch, paths, stats, device):
    base = statistics.median(stats['plain']['iter'])
    rows = []
    for name, st in stats.items():
        med = statistics.median(st['iter'])
        wait = sum(st['wait']) / sum(st['iter'])
        busy = f'{statistics.median(st["busy"]) * 100:.0f} %' if st['busy'] else '-'
        spread = f'{min(st["iter"]) * 1000:,.0f}-{max(st["iter"]) * 1000:,.0f}'
        rows.append(f'| {arch} | {name} | {med * 1000:,.0f} ({spread}) | {base / med:.2f}x | '
                    f'{paths[name].batch / med:,.1f} | {wait * 100:.1f} % | {st["peak"]:,.0f} | {busy} |')
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archs', nargs='+', default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds (default 5)')
    parser.add_argument('--iters', type=int, default=3, help='iterations per path per round (default 3)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations per path first (default 3)')
    parser.add_argument('--compile', nargs='?', const='default', default=None, help='add compile to the fast path')
    parser.add_argument('--workers', type=int, default=0,
                        help='DataLoader workers of the plugin paths (default 0: loading counted in the iteration)')
    parser.add_argument('--work', default=os.path.join(os.path.expanduser('~'), '.cache', 'lwsr_bench'),
                        help='where the LMDBs and caches are made once')
    parser.add_argument('--hr', nargs='+', default=[os.path.join(SHARED, 'datasets', n, 'HR') for n in
                                                   ('Urban100', 'BSD200')], help='HR image folders for the LMDB')
    args = parser.parse_args(argv)
    import torch

    import lwsr_plugin  # noqa: F401
    import basicsr  # noqa: F401  (registers the plugin)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA GPU is visible.')
    scales = sorted({ARCHS[a][1] for a in args.archs})
    lmdb_root = build_lmdbs(args.work, [h for h in args.hr if os.path.isdir(h)], scales)
    from basicsr.utils import get_root_logger
    get_root_logger().setLevel('WARNING')
    lines = []
    for arch in args.archs:
        print(f'{arch} ...', file=sys.stderr, flush=True)
        paths, stats = run_arch(arch, args, lmdb_root)
        lines += report(arch, paths, stats, args.device)
        del paths
    from lwsr_plugin.ops.device import machine_line
    print('\n' + machine_line([__file__] + (sys.argv[1:] if argv is None else list(argv)),
                              gpu=0 if args.device == 'cuda' else None))
    print(f'Device {args.device}; {args.workers} DataLoader workers; {args.rounds} rounds x {args.iters} '
          'iterations per path, interleaved '
          f'(after {args.warmup} warm-up); ms/iter median (min-max); speed-up = plain median / path median; data wait '
          '= share of the iteration spent getting the batch; peak MB: CUDA max allocated, CPU peak RSS above the '
          'start.\n')
    print('| arch | path | ms/iter | speed-up | patches/s | data wait | peak MB | GPU busy |')
    print('|---|---|---|---|---|---|---|---|')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
