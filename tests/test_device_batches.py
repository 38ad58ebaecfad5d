"""DeviceBatches (InMemoryPairedImageDataset with on_device: true) on real images, on the CPU device (the same code as
on a GPU): every patch against a numpy crop + flip/transpose of the cached image, GT/LQ alignment, the distribution
of positions and flips, color: y against BasicSR's bgr2ycbcr, mean/std, seeding, one-line errors, and a real
training run through lwsr_plugin.train."""
import glob
import os

import numpy as np
import pytest
import torch
from basicsr.utils import bgr2ycbcr
from torchvision.transforms.functional import normalize

from _utils import PY, link_datasets, make_pair_lmdbs, run, write_options
from lwsr_plugin.data import device_batches as db
from lwsr_plugin.data.device_batches import DeviceBatches
from lwsr_plugin.data.in_memory_paired_image_dataset import (GT, LQ, InMemoryDatasetError, InMemoryPairedImageDataset,
                                                             _flip, format_size, read_cache_header)

CPU = torch.device('cpu')
# Set5, a grey Set14 image (bridge, decoded to three channels) and a large Urban100 image (1024x644)
PAIRS = ([(f'Set5/HR/{s}.png', f'Set5/LR_bicubic/X4/{s}x4.png', s) for s in ('baby', 'bird', 'woman')]
         + [('Set14/HR/bridge.png', 'Set14/LR_bicubic/X4/bridgex4.png', 'bridge'),
            ('Urban100/HR/img_001.png', 'Urban100/LR_bicubic/X4/img_001x4.png', 'img_001')])
BIG = 4  # img_001 (its key sorts last)


@pytest.fixture(scope='module')
def opt(tmp_path_factory, datasets_dir):
    """Train options of a real x4 LMDB pair (BasicSR's own writer), with its cache already built."""
    out = tmp_path_factory.mktemp('lmdb')
    gt, lq = make_pair_lmdbs(out, datasets_dir, PAIRS)
    opt = {'name': 'test', 'dataroot_gt': gt, 'dataroot_lq': lq,
           'io_backend': {'type': 'lmdb'}, 'phase': 'train', 'scale': 4, 'gt_size': 48, 'use_hflip': True,
           'use_rot': True, 'on_device': True, 'cache_dir': str(out / 'cache')}
    InMemoryPairedImageDataset(dict(opt))
    return opt


def augment_np(img, hflip, vflip, rot90):
    """basicsr.data.transforms.augment on one HWC image with the given draws (the in-memory dataset's views, which
    test_in_memory_dataset checks against BasicSR's augment bit for bit)."""
    return _flip(img, hflip, vflip, rot90)


def dihedral(img):
    """The 8 (hflip, vflip, rot90) variants of an HWC image."""
    return {(h, v, r): augment_np(img, h, v, r) for h in (0, 1) for v in (0, 1) for r in (0, 1)}


def to_tensor_np(img):
    """img2tensor(imfrombytes(float32=True), bgr2rgb=True) of a uint8 BGR HWC patch."""
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / 255.)


def crops(cutter, i, top, left):
    """The uint8 LQ crop at (top, left) and the GT crop at scale x that, from the cached images of pair i."""
    ds, p, s = cutter.dataset, cutter.lq_size, cutter.scale
    lq, gt = ds._image(i, LQ), ds._image(i, GT)
    return lq[top:top + p, left:left + p], gt[top * s:(top + p) * s, left * s:(left + p) * s]


def test_patches_are_aligned_crops_of_the_source(opt):
    cutter = DeviceBatches(opt, CPU, seed=1)
    indices = torch.arange(len(cutter)).repeat(13)  # 65 samples: every pair, all 8 flip/transpose combinations
    batch, params = cutter(indices, return_params=True)
    assert batch['lq'].shape == (65, 3, 12, 12) and batch['gt'].shape == (65, 3, 48, 48)
    assert batch['lq'].dtype == batch['gt'].dtype == torch.float32 and batch['lq'].device == CPU
    combos = set()
    for n in range(len(indices)):
        i, top, left = int(params['index'][n]), int(params['top'][n]), int(params['left'][n])
        flags = tuple(int(params[k][n]) for k in ('hflip', 'vflip', 'rot90'))
        combos.add(flags)
        lq_h, lq_w = cutter.dataset._image(i, LQ).shape[:2]
        assert 0 <= top <= lq_h - 12 and 0 <= left <= lq_w - 12
        lq_crop, gt_crop = crops(cutter, i, top, left)
        # the drawn augmentation, exactly (same float conversion as imfrombytes + img2tensor)
        assert torch.equal(batch['lq'][n], to_tensor_np(augment_np(lq_crop, *flags)))
        assert torch.equal(batch['gt'][n], to_tensor_np(augment_np(gt_crop, *flags)))
        # and independently of the flags: some dihedral variant of the crop at the drawn position, the same one for
        # GT and LQ (so the GT patch is the scale-aligned counterpart of the LQ patch)
        lq_match = {k for k, v in dihedral(lq_crop).items() if torch.equal(batch['lq'][n], to_tensor_np(v))}
        gt_match = {k for k, v in dihedral(gt_crop).items() if torch.equal(batch['gt'][n], to_tensor_np(v))}
        assert lq_match & gt_match
    assert len(combos) == 8

    # plain index lists and tensors of another integer type give the same, reproducible, batches
    again = DeviceBatches(opt, CPU, seed=1)(indices.tolist())
    assert torch.equal(again['lq'], batch['lq']) and torch.equal(again['gt'], batch['gt'])
    other = DeviceBatches(opt, CPU, seed=2)(indices.int())
    assert not torch.equal(other['gt'], batch['gt'])

    # mean/std: torchvision's normalize of the same patches, as the dataset applies it
    mean, std = [0.45, 0.44, 0.40], [0.2, 0.3, 0.25]
    normed = DeviceBatches({**opt, 'mean': mean, 'std': std}, CPU, seed=1)(indices)
    assert torch.equal(normed['lq'], normalize(batch['lq'], mean, std))
    assert torch.equal(normed['gt'], normalize(batch['gt'], mean, std))


def test_distribution_of_positions_and_flips(opt):
    cutter = DeviceBatches(opt, CPU, seed=0)
    lq_h, lq_w = cutter.dataset._image(BIG, LQ).shape[:2]  # 161 x 256: 150 x 245 valid positions
    params = [cutter(torch.full((500,), BIG), return_params=True)[1] for _ in range(8)]
    top, left = (torch.cat([p[k] for p in params]).double() for k in ('top', 'left'))
    for values, span in ((top, lq_h - 12), (left, lq_w - 12)):
        assert values.min() == 0 and values.max() == span  # both ends reachable, nothing beyond
        assert abs(values.mean().item() - span / 2) < 0.04 * span  # uniform: mean span/2, sd span/sqrt(12)/63
        counts = torch.histc(values, bins=5, min=0, max=span + 1)
        assert (counts - 800).abs().max() < 120  # about 4.7 sd of a bin count
    for key in ('hflip', 'vflip', 'rot90'):
        freq = torch.cat([p[key] for p in params]).double().mean().item()
        assert abs(freq - 0.5) < 0.035, (key, freq)  # 4000 draws: sd 0.008
    # augment's switches: no horizontal flip without use_hflip, no vertical flip or transposition without use_rot
    _, p = DeviceBatches({**opt, 'use_hflip': False}, CPU, seed=0)(torch.zeros(400, dtype=torch.long),
                                                                    return_params=True)
    assert not p['hflip'].any() and p['vflip'].any() and p['rot90'].any()
    _, p = DeviceBatches({**opt, 'use_rot': False}, CPU, seed=0)(torch.zeros(400, dtype=torch.long),
                                                                  return_params=True)
    assert p['hflip'].any() and not p['vflip'].any() and not p['rot90'].any()


def test_y_channel_matches_basicsr_bgr2ycbcr(opt):
    cutter = DeviceBatches({**opt, 'color': 'y'}, CPU, seed=3)
    indices = torch.arange(len(cutter)).repeat(4)
    batch, params = cutter(indices, return_params=True)
    assert batch['lq'].shape == (20, 1, 12, 12) and batch['gt'].shape == (20, 1, 48, 48)
    worst = 0.
    for n in range(len(indices)):
        flags = tuple(bool(params[k][n]) for k in ('hflip', 'vflip', 'rot90'))
        for key, crop in zip(('lq', 'gt'), crops(cutter, int(params['index'][n]), int(params['top'][n]),
                                                 int(params['left'][n]))):
            # PairedImageDataset's order: imfrombytes float32, augment, bgr2ycbcr(y_only=True)
            expected = bgr2ycbcr(augment_np(crop.astype(np.float32) / 255., *flags), y_only=True)
            worst = max(worst, np.abs(batch[key][n, 0].numpy() - expected).max())
    assert worst < 1e-6


def test_dataset_gives_indices_only(opt):
    ds = InMemoryPairedImageDataset(dict(opt))
    assert ds[3] == {'index': 3} and ds._buffer is None  # nothing read per item
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, drop_last=True)
    data = next(iter(loader))
    assert set(data) == {'index'} and data['index'].dtype == torch.long
    batch = DeviceBatches(opt, CPU, seed=0)(data['index'])
    assert batch['gt'].shape == (4, 3, 48, 48)


def test_seed_sources_and_ranks(opt, monkeypatch):
    torch.manual_seed(5)
    first = DeviceBatches(opt, CPU)  # no seed: one draw from torch's global generator (BasicSR's manual_seed)
    torch.manual_seed(5)
    assert DeviceBatches(opt, CPU).seed == first.seed
    assert DeviceBatches({**opt, 'seed': 7}, CPU).seed == 7
    rank0 = DeviceBatches(opt, CPU, seed=9)
    assert rank0.seed == 9
    monkeypatch.setattr(db, 'get_dist_info', lambda: (1, 2))  # rank 1 of 2 draws differently from rank 0
    rank1 = DeviceBatches(opt, CPU, seed=9)
    assert rank1.seed == 10 and not torch.equal(rank1(torch.arange(5))['gt'], rank0(torch.arange(5))['gt'])


@pytest.mark.parametrize('case, expected', [
    ('not_bool', "on_device: 'yes' is not true or false"),
    ('val', "on_device: true works in the train phase only (this is phase 'val')"),
    ('seed', "seed: -1 is not a non-negative integer"),
    ('seed_without', 'seed is read with on_device: true only'),
    ('memory', 'on_device: true needs '),
    ('index', 'pair indices must be in [0, 5), got 0..5'),
])
def test_bad_options_one_line(opt, monkeypatch, case, expected):
    bad = dict(opt)
    if case == 'not_bool':
        bad['on_device'] = 'yes'
    elif case == 'val':
        bad['phase'] = 'val'
    elif case == 'seed':
        bad['seed'] = -1
    elif case == 'seed_without':
        bad.update(seed=3, on_device=False)
    with pytest.raises((InMemoryDatasetError, IndexError)) as err:
        if case == 'memory':  # a 2 GB GPU with 1 GB free: the set (3.2 MB) + the 1 GiB kept for training do not fit
            monkeypatch.setattr(db, 'device_memory', lambda device: (10**9, 2 * 10**9))
            DeviceBatches(bad, CPU)
        elif case == 'index':
            DeviceBatches(bad, CPU)(torch.arange(6))
        else:
            InMemoryPairedImageDataset(bad)
    msg = str(err.value)
    assert expected in msg and '\n' not in msg, msg
    if case == 'memory':
        ds = InMemoryPairedImageDataset(dict(opt))
        need = read_cache_header(ds.cache_path)['data_nbytes'] + len(ds) * 2 * 4 * 8  # images + int64 index
        assert f'needs {format_size(need)} ({need} bytes) on cpu for the decoded 5 GT/LQ pairs' in msg
        assert 'but 1.00 GB are free there; set on_device: false' in msg


def test_basicsr_training_run(tmp_path, datasets_dir):
    """lwsr_plugin.train with LWSRModel and the train set on the (CPU) device: trains and saves a checkpoint."""
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{
        'model_type': 'LWSRModel',
        'datasets.train.type': 'InMemoryPairedImageDataset', 'datasets.train.on_device': True,
        'datasets.train.cache_dir': str(tmp_path / 'cache'),
        'train.total_iter': 3, 'logger.save_checkpoint_freq': 3, 'val.val_freq': 1000})
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work, timeout=300).stdout
    assert 'End of training.' in out and 'l_pix:' in out, out[-3000:]
    assert '(Set5_train): 5 GT/LQ pairs' in out and 'mapped in place; training batches are cut on cpu.' in out
    models = glob.glob(str(tmp_path / 'experiments' / 'tiny_imdn' / 'models' / '*'))
    assert {os.path.basename(m) for m in models} >= {'net_g_3.pth', 'net_g_latest.pth'}, models
    state = torch.load(os.path.join(os.path.dirname(models[0]), 'net_g_3.pth'), map_location='cpu', weights_only=True)
    assert all(torch.isfinite(v).all() for v in state['params'].values())
