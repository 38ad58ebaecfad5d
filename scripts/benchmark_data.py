"""Training patches per second of BasicSR's ``PairedImageDataset`` against the plugin's ``InMemoryPairedImageDataset``
on the same LMDB, with the same DataLoader (batch 16, gt_size 192, x4, flips and rotations, random sampling) and the
same numbers of workers. Prints a Markdown table.

    python scripts/benchmark_data.py                                   # DIV2K-like LMDB made from Urban100 (x4)
    python scripts/benchmark_data.py --gt-lmdb datasets/DIV2K/DIV2K_train_HR_sub.lmdb \\
        --lq-lmdb datasets/DIV2K/DIV2K_train_LR_bicubic_X4_sub.lmdb     # your own LMDB pair
    python scripts/benchmark_data.py --workers 0 2 4 --seconds 20

Without ``--gt-lmdb``/``--lq-lmdb`` the script builds, in a temporary folder, what BasicSR's
``extract_subimages.py`` + ``create_lmdb.py`` make of DIV2K: 480x480 HR sub-images with step 240 and the matching
120x120 crops of the x4 LR images (Urban100's HR and LR_bicubic/X4 here), PNG compression level 1, same keys.
Each configuration first draws a few warm-up batches (worker start-up, cache mapping), then counts the patches of
``--seconds`` seconds; the ``--rounds`` are interleaved and the best one counts. Besides patches/s (wall time, which
other jobs on the machine lower) it gives CPU ms per patch (this process and its workers), which they hardly change.
The in-memory cache is built before timing; its build time and size are printed. The main process runs with one torch
thread by default (``--torch-threads``), as DataLoader workers do: with ``workers 0`` it collates the batches, and a
multi-threaded ``torch.stack`` is several times slower than a single-threaded one on a loaded CPU.
"""
import argparse
import glob
import os
import random
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SOURCE = os.path.join(HERE, '..', '..', 'shared', 'datasets', 'Urban100')


def windows(size, crop, step):
    """BasicSR extract_subimages.py positions (thresh_size 0): every ``step``, plus one flush with the border."""
    pos = list(range(0, size - crop + 1, step))
    if size - (pos[-1] + crop) > 0:
        pos.append(size - crop)
    return pos


def build_div2k_like_lmdb(source, out, scale=4, crop=480, step=240):
    """``(gt.lmdb, lq.lmdb)`` of sub-images of ``source/HR/*.png`` and ``source/LR_bicubic/X<scale>/*x<scale>.png``,
    written with BasicSR's own LmdbMaker."""
    from basicsr.utils.lmdb_util import LmdbMaker
    gt_path, lq_path = os.path.join(out, 'bench_HR_sub.lmdb'), os.path.join(out, f'bench_LR_bicubic_X{scale}_sub.lmdb')
    gt_maker, lq_maker = LmdbMaker(gt_path, map_size=8 << 30), LmdbMaker(lq_path, map_size=2 << 30)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    count = 0
    for hr_file in sorted(glob.glob(os.path.join(source, 'HR', '*.png'))):
        stem = os.path.splitext(os.path.basename(hr_file))[0]
        lr_file = os.path.join(source, 'LR_bicubic', f'X{scale}', f'{stem}x{scale}.png')
        hr, lr = cv2.imread(hr_file, cv2.IMREAD_COLOR), cv2.imread(lr_file, cv2.IMREAD_COLOR)
        if lr is None or hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
            print(f'skipping {stem}: no x{scale} LR image of HR size / {scale}')
            continue
        n = 0
        for y in windows(hr.shape[0], crop, step):
            for x in windows(hr.shape[1], crop, step):
                n += 1
                key = f'{stem}_s{n:03d}'
                for maker, img in ((gt_maker, hr[y:y + crop, x:x + crop]),
                                   (lq_maker, lr[y // scale:(y + crop) // scale, x // scale:(x + crop) // scale])):
                    maker.put(cv2.imencode('.png', img, params)[1].tobytes(), key, img.shape)
                count += 1
    gt_maker.close()
    lq_maker.close()
    if not count:
        sys.exit(f'error: {source}: no HR/LR_bicubic/X{scale} image pairs found; pass --source or --gt-lmdb/--lq-lmdb')
    print(f'built {gt_path} and {lq_path}: {count} sub-image pairs ({crop}x{crop} HR, step {step})')
    return gt_path, lq_path


def _worker_cpu_seconds(it):
    """CPU seconds (user + system) used so far by the worker processes of a DataLoader iterator (Linux /proc)."""
    total = 0.0
    for proc in getattr(it, '_workers', []):
        try:
            with open(f'/proc/{proc.pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        except (OSError, ValueError, IndexError):
            return float('nan')
    return total


def patches_per_second(dataset, workers, batch, seconds, start_method, seed=0):
    """``(patches/s, CPU ms per patch)`` of a DataLoader over ``dataset`` after warm-up (random sampling with
    replacement); the CPU time is this process's plus its workers', which other jobs on the machine do not inflate
    as they do the wall time."""
    from functools import partial

    from basicsr.data import worker_init_fn
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**8, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        multiprocessing_context=start_method if workers else None,
                        worker_init_fn=partial(worker_init_fn, num_workers=workers, rank=0, seed=seed) if workers
                        else None)
    random.seed(seed)
    it = iter(loader)
    for _ in range(max(2, 2 * workers)):
        next(it)
    done, start = 0, time.perf_counter()
    cpu_start = time.process_time() + _worker_cpu_seconds(it)
    while time.perf_counter() - start < seconds or done < 3:
        next(it)
        done += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() + _worker_cpu_seconds(it) - cpu_start
    del it
    return done * batch / elapsed, cpu * 1000 / (done * batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--gt-lmdb', help='GT LMDB (with --lq-lmdb); default: build a DIV2K-like one from --source')
    parser.add_argument('--lq-lmdb', help='LQ LMDB with the same keys')
    parser.add_argument('--source', default=DEFAULT_SOURCE, help='folder with HR/ and LR_bicubic/X<scale>/')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--gt-size', type=int, default=192)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    parser.add_argument('--seconds', type=float, default=6.0, help='timed seconds per configuration')
    parser.add_argument('--rounds', type=int, default=2, help='repeat all configurations; the best round counts')
    parser.add_argument('--start-method', default='fork', choices=['fork', 'spawn', 'forkserver'],
                        help='DataLoader worker start method (BasicSR under torchrun uses spawn)')
    parser.add_argument('--torch-threads', type=int, default=1,
                        help='intra-op threads of this process, where workers=0 collates batches (DataLoader workers '
                        'always use 1); 0 keeps torch\'s default, whose torch.stack crawls on a busy CPU')
    parser.add_argument('--work-dir', help='where the LMDB and the cache go (default: a temporary folder, removed)')
    args = parser.parse_args(argv)
    if bool(args.gt_lmdb) != bool(args.lq_lmdb):
        parser.error('--gt-lmdb and --lq-lmdb go together')

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    import basicsr  # noqa: F401  (registers the plugin's datasets)
    from basicsr.data.paired_image_dataset import PairedImageDataset

    from lwsr_plugin.data.in_memory_paired_image_dataset import InMemoryPairedImageDataset, format_size

    work = args.work_dir or tempfile.mkdtemp(prefix='lwsr_bench_data_')
    os.makedirs(work, exist_ok=True)
    try:
        if args.gt_lmdb:
            gt, lq = args.gt_lmdb, args.lq_lmdb
        else:
            gt, lq = build_div2k_like_lmdb(args.source, work, args.scale)
        opt = {'name': 'bench', 'dataroot_gt': gt, 'dataroot_lq': lq, 'io_backend': {'type': 'lmdb'},
               'phase': 'train', 'scale': args.scale, 'gt_size': args.gt_size, 'use_hflip': True, 'use_rot': True}
        start = time.perf_counter()
        in_memory = InMemoryPairedImageDataset({**opt, 'cache_dir': work})
        build = time.perf_counter() - start
        size = os.path.getsize(in_memory.cache_path)
        print(f'cache: {len(in_memory)} pairs, {format_size(size)}, '
              f'{"built" if in_memory.cache_built else "reused"} in {build:.1f} s: {in_memory.cache_path}')
        datasets = {'PairedImageDataset': lambda: PairedImageDataset({**opt, 'io_backend': {'type': 'lmdb'}}),
                    'InMemoryPairedImageDataset': lambda: InMemoryPairedImageDataset({**opt, 'cache_dir': work})}
        best, cpu = {}, {}
        for _ in range(args.rounds):
            for workers in args.workers:
                for name, make in datasets.items():
                    rate, ms = patches_per_second(make(), workers, args.batch, args.seconds, args.start_method)
                    best[name, workers] = max(rate, best.get((name, workers), 0.0))
                    cpu[name, workers] = min(ms, cpu.get((name, workers), float('inf')))
                    print(f'  {name}, {workers} workers: {rate:.0f} patches/s, {ms:.2f} CPU ms/patch', flush=True)

        print(f'\n{len(in_memory)} LMDB pairs, batch {args.batch}, gt_size {args.gt_size}, x{args.scale}, flips + '
              f'rotations; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end; '
              f'worker start method {args.start_method}; {torch.get_num_threads()} torch thread(s) in the main '
              f'process; torch {torch.__version__}, numpy {np.__version__}, '
              f'OpenCV {cv2.__version__}\n')
        print('| workers | PairedImageDataset (patches/s) | InMemoryPairedImageDataset (patches/s) | speed-up | '
              'CPU ms/patch (Paired / InMemory) | CPU ratio |')
        print('|---:|---:|---:|---:|---:|---:|')
        for workers in args.workers:
            base, fast = best['PairedImageDataset', workers], best['InMemoryPairedImageDataset', workers]
            base_ms, fast_ms = cpu['PairedImageDataset', workers], cpu['InMemoryPairedImageDataset', workers]
            print(f'| {workers} | {base:.0f} | {fast:.0f} | {fast / base:.1f}x | {base_ms:.2f} / {fast_ms:.2f} | '
                  f'{base_ms / fast_ms:.1f}x |')
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
