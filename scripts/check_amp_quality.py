"""Does fast training cost accuracy? Two seeded runs of the shipped IMDN x4 recipe through ``lwsr-train`` (batch 16,
HR patches 192, L1, Adam 2e-4): one in the papers' fp32 NCHW, one with ``amp: bf16`` + ``channels_last``; Set5
Y-PSNR of both after the same number of iterations (issue 12: within 0.05 dB after 300).

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


def run(work, name, lmdb_root, iters, fast):
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
    opt['train'].update(total_iter=iters, amp='bf16' if fast else False, channels_last=fast)
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
    parser.add_argument('--work', default=os.path.join(os.path.expanduser('~'), '.cache', 'lwsr_bench'))
    args = parser.parse_args(argv)
    lmdb_root = build_lmdbs(args.work, [os.path.join(SHARED, 'datasets', n, 'HR') for n in ('Urban100', 'BSD200')],
                            [4])
    fp32 = run(args.work, 'amp_check_fp32', lmdb_root, args.iters, fast=False)
    fast = run(args.work, 'amp_check_bf16_cl', lmdb_root, args.iters, fast=True)
    print(f'\nIMDN x4, {args.iters} iterations, seed 0, batch 16, HR 192, Set5 Y-PSNR (border 4):\n')
    print('| run | Set5 Y-PSNR | s/iter (last print) |\n|---|---|---|')
    print(f'| fp32, NCHW | {fp32[0]:.4f} | {fp32[1]:.3f} |')
    print(f'| bf16 + channels_last | {fast[0]:.4f} | {fast[1]:.3f} |')
    print(f'| difference | {fast[0] - fp32[0]:+.4f} dB | |')


if __name__ == '__main__':
    main()
