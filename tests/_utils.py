"""Helpers for tests that run the real commands in subprocesses."""
import copy
import os
import socket
import subprocess
import sys

import yaml

PY = sys.executable
BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(cmd, cwd, timeout=600, env=None, check=True):
    """Run a command; on failure the assertion shows its output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f'{cmd} exited {proc.returncode}:\n{proc.stdout[-6000:]}'
    return proc


def link_datasets(workdir, datasets_dir):
    """``<workdir>/datasets`` -> ../shared/datasets, the layout the shipped option files expect."""
    os.makedirs(workdir, exist_ok=True)
    link = os.path.join(workdir, 'datasets')
    if not os.path.exists(link):
        os.symlink(datasets_dir, link)
    return workdir


TINY = {
    'name': 'tiny_imdn',
    'model_type': 'SRModel',
    'scale': 4,
    'num_gpu': 0,
    'manual_seed': 0,
    'datasets': {
        'train': {
            # Set5's HR sides are multiples of 4 (Set14's are not, so it cannot be a x4 training set as it is)
            'name': 'Set5_train', 'type': 'PairedImageDataset',
            'dataroot_gt': 'datasets/Set5/HR', 'dataroot_lq': 'datasets/Set5/LR_bicubic/X4',
            'filename_tmpl': '{}x4', 'io_backend': {'type': 'disk'},
            'gt_size': 32, 'use_hflip': True, 'use_rot': True,
            'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 100, 'prefetch_mode': None,
        },
        'val': {
            'name': 'Set5', 'type': 'PairedImageDataset',
            'dataroot_gt': 'datasets/Set5/HR', 'dataroot_lq': 'datasets/Set5/LR_bicubic/X4',
            'filename_tmpl': '{}x4', 'io_backend': {'type': 'disk'},
        },
    },
    'network_g': {'type': 'IMDN', 'num_feat': 8, 'num_block': 1, 'upscale': 4},
    'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
    'train': {
        'ema_decay': 0,
        'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
        'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
        'total_iter': 6, 'warmup_iter': -1,
        'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
    },
    'val': {'val_freq': 1000, 'save_img': False,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}},
    'logger': {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': True,
               'wandb': {'project': None, 'resume_id': None}},
}


def write_options(path, base=None, **updates):
    """Write a copy of ``base`` (TINY by default) with dotted-key updates, e.g. ``{'train.total_iter': 4}``."""
    opt = copy.deepcopy(base or TINY)
    for dotted, value in updates.items():
        node = opt
        keys = dotted.split('.')
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def set_options(path, updates):
    """``write_options`` with keys that are not Python identifiers."""
    return write_options(path, **updates)


def make_pair_lmdbs(out, datasets_dir, pairs):
    """``(gt.lmdb, lq.lmdb)`` in ``out`` from ``pairs`` of (HR path, LR path, key) under ``datasets_dir``, written by
    BasicSR's own LMDB writer (same keys in both)."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    keys = [p[2] for p in pairs]
    make_lmdb_from_imgs(datasets_dir, str(out / 'gt.lmdb'), [p[0] for p in pairs], keys)
    make_lmdb_from_imgs(datasets_dir, str(out / 'lq.lmdb'), [p[1] for p in pairs], keys)
    return str(out / 'gt.lmdb'), str(out / 'lq.lmdb')
