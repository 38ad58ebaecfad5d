"""Does fast training cost accuracy? Seeded runs of the shipped IMDN x4 recipe through ``lwsr-train`` (batch 16, HR
patches 192, L1, Adam 2e-4): the papers' fp32 NCHW, ``amp: bf16`` + ``channels_last``, and fp32 + ``channels_last``
(same precision, other convolution kernels: how far two runs drift apart from rounding alone); Set5 Y-PSNR of each
after the same number of iterations (the target: bf16 within 0.05 dB of fp32 after 300).

Both runs read the same DIV2K-like LMDB (made once from ../shared/datasets by ``benchmark_training.build_lmdbs``)
through InMemoryPairedImageDataset with no workers, so they see the same patches in the same order.

    python scripts/check_amp_quality.py --iters 300
"""
import argparse
import os
import re
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchmark_training import REPO, SHARED, build_lmdbs  # noqa: E402


VARIANTS = {'fp32': (False, False), 'bf16_cl': ('bf16', True), 'fp32_cl': (False, True)}
LABELS = {'fp32': 'fp32, NCHW (papers)', 'bf16_cl': 'bf16 + channels_last', 'fp32_cl': 'fp32 + channels_last'}


def run(work, name, lmdb_root, iters, amp, channels_last):
    with open(os.path.join(REPO, 'options', 'train_IMDN_x4.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt['name'] = name
    opt['num_gpu'] = 0
    train = opt['datasets']['train']
    train.update(dataroot_gt=os.path.join(lmdb_root, 'DIV2K_train_HR_sub.lmdb'), num_worker_per_gpu=0,
                 dataroot_lq=os.path.join(lmdb_root, 'DIV2K_train_LR_bicubic_X4_sub.lmdb'), persistent_workers=False,
                 type='InMemoryPairedImageDataset', cache_dir=os.path.join(lmdb_root, 'cache'))
    opt['datasets']['val'].update(dataroot_gt=os.path.join(SHARED, 'datasets', 'Set5', 'HR'),
                                  dataroot_lq=os.path.join(SHARED, 'datasets', 'Set5', 'LR_bicubic', 'X4'))
    opt['train'].update(total_iter=iters, amp=amp, channels_last=channels_last)
    opt['val']['val_freq'] = iters
    opt['logger'].update(print_freq=max(iters // 10, 1), save_checkpoint_freq=10**9, use_tb_logger=False)
    path = os.path.join(work, f'{name}.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'lwsr-train'), '-opt', path], cwd=work,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode:
        raise SystemExit(f'{name} failed:\n{out.stdout[-3000:]}')
    psnr = float(re.findall(r'# psnr: ([\d.]+)', out.stdout)[0])
    per_iter = re.findall(r'time \(data\): ([\d.]+)', out.stdout)
    return psnr, float(per_iter[-1]) if per_iter else float('nan')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--work', default=os.path.join(os.path.expanduser('~'), '.cache', 'lwsr_bench'))
    args = parser.parse_args(argv)
    lmdb_root = build_lmdbs(args.work, [os.path.join(SHARED, 'datasets', n, 'HR') for n in ('Urban100', 'BSD200')],
                            [4])
    results = {v: run(args.work, f'amp_check_{v}', lmdb_root, args.iters, *VARIANTS[v]) for v in args.variants}
    print(f'\nIMDN x4, {args.iters} iterations, seed 0, batch 16, HR 192, Set5 Y-PSNR (border 4):\n')
    print('| run | Set5 Y-PSNR | vs fp32 NCHW | s/iter (last print) |\n|---|---|---|---|')
    ref = results.get('fp32', (None, None))[0]
    for v, (psnr, per_iter) in results.items():
        diff = f'{psnr - ref:+.4f} dB' if ref is not None else '-'
        print(f'| {LABELS[v]} | {psnr:.4f} | {diff} | {per_iter:.3f} |')


if __name__ == '__main__':
    main()
