"""Data preparation (issue 3): DIV2K / 291 / benchmark commands, LMDB checks, interruption and bad inputs.

Everything runs on real images from ../shared/datasets; DIV2K is not available, so a DIV2K-shaped folder is built
from BSD200 images (with a 120/60 crop grid, since BSD images are smaller than DIV2K's 480 crops).
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import lmdb
import numpy as np
import pytest
import torch

import lwsr_plugin  # noqa: F401  (registers PairedGrayImageDataset, IMDN)
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY
from conftest import REPO

from lwsr_plugin.data import benchmark, check_lmdb, div2k, lmdb_io, set291
from lwsr_plugin.data.images import crop_positions, mod_crop
from lwsr_plugin.data.lmdb_io import read_meta_info
from lwsr_plugin.data.resize import bicubic_downscale

BSD_NAMES = ['100075', '100080', '100098']


def lmdb_image(path, key):
    env = lmdb.open(path, readonly=True, lock=False, readahead=False)
    with env.begin() as txn:
        raw = txn.get(key.encode())
    env.close()
    return cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)


def basicsr_lr(hr, scale):
    """The reference: basicsr's MATLAB imresize on [0, 1] data, x255, rounded once."""
    return np.clip(np.round(imresize(hr.astype(np.float32) / 255., 1 / scale) * 255.), 0, 255).astype(np.uint8)


@pytest.fixture
def div2k_root(tmp_path, datasets_dir):
    """DIV2K-shaped folder: DIV2K_train_HR with 3 BSD200 images, X2 LR given (``0001x2.png`` layout), X3/X4 not;
    DIV2K_valid_HR with 1 image and X4 LR given in the ``0004.png`` layout."""
    root = tmp_path / 'DIV2K'
    (root / 'DIV2K_train_HR').mkdir(parents=True)
    (root / 'DIV2K_train_LR_bicubic' / 'X2').mkdir(parents=True)
    (root / 'DIV2K_valid_HR').mkdir()
    (root / 'DIV2K_valid_LR_bicubic' / 'X4').mkdir(parents=True)
    for i, name in enumerate(BSD_NAMES + ['103041'], 1):
        hr = cv2.imread(os.path.join(datasets_dir, 'BSD200', f'{name}.png'))
        split, key = ('train', f'{i:04d}') if i <= 3 else ('valid', f'{i:04d}')
        cv2.imwrite(str(root / f'DIV2K_{split}_HR' / f'{key}.png'), hr)
        if split == 'train':
            cv2.imwrite(str(root / 'DIV2K_train_LR_bicubic' / 'X2' / f'{key}x2.png'), basicsr_lr(hr, 2))
        else:
            cv2.imwrite(str(root / 'DIV2K_valid_LR_bicubic' / 'X4' / f'{key}.png'), basicsr_lr(mod_crop(hr, 4), 4))
    return root


def train_opt(gt, lq, scale, gt_size):
    return {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lq,
            'io_backend': {'type': 'lmdb'}, 'filename_tmpl': '{}', 'gt_size': gt_size, 'use_hflip': True,
            'use_rot': True, 'phase': 'train', 'scale': scale}


def run_basicsr_training(dataset, scale, num_in_ch=3, iters=2):
    """A few SRModel iterations (tiny IMDN, L1, Adam) on batches of ``dataset``: BasicSR reading the LMDBs in
    training. Returns the losses."""
    from basicsr.models import build_model
    opt = {'model_type': 'SRModel', 'is_train': True, 'dist': False, 'num_gpu': 0, 'scale': scale, 'rank': 0,
           'network_g': {'type': 'IMDN', 'num_in_ch': num_in_ch, 'num_out_ch': num_in_ch, 'num_feat': 16,
                         'num_block': 1, 'upscale': scale},
           'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
           'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                     'total_iter': iters, 'warmup_iter': -1,
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}}}
    model = build_model(opt)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=0)
    losses = []
    for it, batch in zip(range(1, iters + 1), loader):
        model.feed_data(batch)
        model.optimize_parameters(it)
        losses.append(model.get_current_log()['l_pix'])
    return losses


def test_div2k_lmdbs_read_by_basicsr_training(div2k_root, tmp_path):
    out = tmp_path / 'out'
    assert div2k.main(['--root', str(div2k_root), '--out', str(out), '--crop-size', '120', '--step', '60',
                       '--workers', '2']) == 0
    names = ['DIV2K_train_HR_sub'] + [f'DIV2K_train_LR_bicubic_X{s}_sub' for s in (2, 3, 4)]
    metas = [read_meta_info(str(out / f'{n}.lmdb')) for n in names]
    assert all(set(m) == set(metas[0]) for m in metas)  # identical key sets
    # 481x321 (or 321x481) -> mod 12 -> 480x312: 7 x (4 + 1 flush) windows of 120 per image
    assert len(metas[0]) == 3 * 7 * 5 and metas[0]['0001_s001'][0] == (120, 120, 3)
    assert metas[3]['0001_s001'][0] == (30, 30, 3)
    # generated LR (X3, X4) == basicsr imresize of the mod-cropped HR, cropped at the same place; given X2 is kept
    hr = mod_crop(cv2.imread(str(div2k_root / 'DIV2K_train_HR' / '0002.png')), 12)
    boxes = [(y, x) for y in crop_positions(hr.shape[0], 120, 60) for x in crop_positions(hr.shape[1], 120, 60)]
    assert boxes[-1] == (hr.shape[0] - 120, hr.shape[1] - 120)
    for s in (3, 4):
        ref = basicsr_lr(hr, s)
        for key, (y, x) in [('0002_s001', boxes[0]), ('0002_s010', boxes[9]), ('0002_s035', boxes[34])]:
            rec = lmdb_image(str(out / f'DIV2K_train_LR_bicubic_X{s}_sub.lmdb'), key)
            np.testing.assert_array_equal(rec, ref[y // s:(y + 120) // s, x // s:(x + 120) // s])
            np.testing.assert_array_equal(lmdb_image(str(out / 'DIV2K_train_HR_sub.lmdb'), key),
                                          hr[y:y + 120, x:x + 120])
    np.testing.assert_array_equal(lmdb_image(str(out / 'DIV2K_train_LR_bicubic_X2_sub.lmdb'), '0002_s001'),
                                  basicsr_lr(cv2.imread(str(div2k_root / 'DIV2K_train_HR' / '0002.png')), 2)[:60, :60])
    # valid: whole images, given X4 in the "0004.png" layout
    assert read_meta_info(str(out / 'DIV2K_valid_HR.lmdb')) == {'0004': ((312, 480, 3), 1)}
    assert read_meta_info(str(out / 'DIV2K_valid_LR_bicubic_X4.lmdb'))['0004'][0] == (78, 120, 3)
    assert check_lmdb.main([str(out / f'{n}.lmdb') for n in names]) == 0
    # BasicSR reads them in training
    ds = PairedImageDataset(train_opt(str(out / f'{names[0]}.lmdb'), str(out / f'{names[2]}.lmdb'), 3, 48))
    sample = ds[0]
    assert sample['gt'].shape == (3, 48, 48) and sample['lq'].shape == (3, 16, 16)
    ds = PairedImageDataset(train_opt(str(out / f'{names[0]}.lmdb'), str(out / f'{names[1]}.lmdb'), 2, 32))
    losses = run_basicsr_training(ds, 2)
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_291_augmentation_count_and_lr(tmp_path, datasets_dir):
    # the full set: 291 uniquely named images -> 11,640 records (the full run takes minutes, see the docs)
    folders = [os.path.join(datasets_dir, 'T91'), os.path.join(datasets_dir, 'BSD200')]
    keys = set291.check_keys([p for f in folders for p in set291.list_images(f)])
    versions = list(set291.augment_versions(np.zeros((24, 36, 3), np.uint8)))
    assert len(keys) == 291 and len(versions) == 40 and len(keys) * len(versions) == 11640
    assert len({suffix for suffix, _ in versions}) == 40
    # a real run on one image of each folder
    src = tmp_path / 'src'
    for folder, name in [('T91', 't1'), ('BSD200', '100075')]:
        (src / folder).mkdir(parents=True)
        shutil.copy(os.path.join(datasets_dir, folder, f'{name}.png'), src / folder)
    out = tmp_path / 'out'
    assert set291.main(['--input', str(src / 'T91'), str(src / 'BSD200'), '--out', str(out), '--scales', '3',
                        '--workers', '2']) == 0
    hr_db, lr_db = str(out / '291_HR.lmdb'), str(out / '291_LR_bicubic_X3.lmdb')
    meta = read_meta_info(hr_db)
    assert len(meta) == 80 and set(meta) == set(read_meta_info(lr_db))
    orig = cv2.imread(os.path.join(datasets_dir, 'T91', 't1.png'))
    hr = lmdb_image(hr_db, 't1_d10_r090_f1')
    np.testing.assert_array_equal(hr, mod_crop(np.ascontiguousarray(np.rot90(orig)[:, ::-1]), 3))
    for key in ('t1_d10_r090_f1', '100075_d07_r180_f0', '100075_d06_r270_f1'):
        np.testing.assert_array_equal(lmdb_image(lr_db, key), basicsr_lr(lmdb_image(hr_db, key), 3))
    assert check_lmdb.main([hr_db, lr_db]) == 0


def test_291_min_size_leaves_out_small_versions(tmp_path, datasets_dir):
    """t20 is 78x78, the smallest T91 image: at 0.9 and below it is under 78 px, IDN's largest Table 1 patch, so
    --min-size 78 keeps only its 8 full-size versions."""
    src = tmp_path / 'src'
    src.mkdir()
    shutil.copy(os.path.join(datasets_dir, 'T91', 't20.png'), src)
    out = tmp_path / 'out'
    assert set291.main(['--input', str(src), '--out', str(out), '--scales', '2', '--workers', '1', '--min-size',
                        '78']) == 0
    meta = read_meta_info(str(out / '291_HR.lmdb'))
    assert len(meta) == 8 and all(shape[:2] == (78, 78) for shape, _ in meta.values())
    assert 't20_d10_r090_f1' in meta and 't20_d09_r000_f0' not in meta


def test_291_y_only_gives_one_channel_records(tmp_path, datasets_dir):
    src = tmp_path / 'src'
    src.mkdir()
    shutil.copy(os.path.join(datasets_dir, 'T91', 't2.png'), src)
    out = tmp_path / 'out'
    assert set291.main(['--input', str(src), '--out', str(out), '--scales', '2', '--y-only', '--workers', '1',
                        '--factors', '1.0', '0.6']) == 0
    hr_db, lr_db = str(out / '291_Y_HR.lmdb'), str(out / '291_Y_LR_bicubic_X2.lmdb')
    meta = read_meta_info(hr_db)
    assert len(meta) == 16 and all(shape[2] == 1 for shape, _ in meta.values())
    rec = lmdb_image(lr_db, 't2_d06_r000_f0')
    assert rec.ndim == 2
    np.testing.assert_array_equal(rec, basicsr_lr(lmdb_image(hr_db, 't2_d06_r000_f0'), 2))
    # BasicSR decodes grey PNGs as 3 equal channels; PairedGrayImageDataset hands the net one of them
    ds = PairedImageDataset(train_opt(hr_db, lr_db, 2, 32))
    sample = ds[0]
    assert sample['gt'].shape == (3, 32, 32) and torch.equal(sample['gt'][0], sample['gt'][2])
    opt = dict(train_opt(hr_db, lr_db, 2, 32), type='PairedGrayImageDataset')
    ds = DATASET_REGISTRY.get('PairedGrayImageDataset')(opt)
    assert ds[0]['gt'].shape == (1, 32, 32) and ds[0]['lq'].shape == (1, 16, 16)
    losses = run_basicsr_training(ds, 2, num_in_ch=1)
    assert len(losses) == 2 and all(np.isfinite(losses))
    with pytest.raises(ValueError, match='already one channel'):
        DATASET_REGISTRY.get('PairedGrayImageDataset')(dict(opt, color='y'))


TRAIN_YML = """
name: data_prep_smoke
model_type: SRModel
scale: 2
num_gpu: 0
manual_seed: 0
datasets:
  train:
    name: 291
    type: PairedImageDataset
    dataroot_gt: {gt}
    dataroot_lq: {lq}
    io_backend: {{type: lmdb}}
    gt_size: 32
    use_hflip: true
    use_rot: true
    num_worker_per_gpu: 1
    batch_size_per_gpu: 4
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
network_g: {{type: IMDN, num_feat: 16, num_block: 1, upscale: 2}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  ema_decay: 0
  optim_g: {{type: Adam, lr: !!float 1e-3}}
  scheduler: {{type: MultiStepLR, milestones: [100], gamma: 0.5}}
  total_iter: 3
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
logger: {{print_freq: 1, save_checkpoint_freq: !!float 1e9, use_tb_logger: false}}
"""


def test_basicsr_train_pipeline_reads_291_lmdb(tmp_path, small_src):
    """``python -m lwsr_plugin.train`` (BasicSR's train_pipeline) trains 3 iterations on a 291 LMDB pair."""
    out = tmp_path / 'out'
    assert set291.main(small_291_args(small_src, out)) == 0
    (tmp_path / 'smoke.yml').write_text(TRAIN_YML.format(gt=out / '291_HR.lmdb', lq=out / '291_LR_bicubic_X2.lmdb'))
    proc = subprocess.run([sys.executable, '-m', 'lwsr_plugin.train', '-opt', 'smoke.yml'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'iter:       3' in proc.stdout + proc.stderr
    assert 'End of training' in proc.stdout + proc.stderr


def test_benchmark_reproduces_shipped_set5(tmp_path, datasets_dir):
    out = tmp_path / 'Set5'
    assert benchmark.main(['--hr', os.path.join(datasets_dir, 'Set5', 'HR'), '--out', str(out), '--scales', '4',
                           '--workers', '1']) == 0
    same = total = 0
    for name in ['baby', 'bird', 'butterfly', 'head', 'woman']:
        shipped_hr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'HR', f'{name}.png'))
        np.testing.assert_array_equal(cv2.imread(str(out / 'HR' / f'{name}.png')), mod_crop(shipped_hr, 4))
        ours = cv2.imread(str(out / 'LR_bicubic' / 'X4' / f'{name}x4.png')).astype(int)
        shipped = cv2.imread(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', 'X4', f'{name}x4.png')).astype(int)
        assert ours.shape == shipped.shape
        assert np.abs(ours - shipped).max() <= 1
        same += (ours == shipped).sum()
        total += ours.size
    assert same / total > 0.99
    # refuses to overwrite
    assert benchmark.main(['--hr', os.path.join(datasets_dir, 'Set5', 'HR'), '--out', str(out), '--scales', '4',
                           '--workers', '1']) == 2


def test_resize_modes_agree_within_one_level(datasets_dir):
    img = cv2.imread(os.path.join(datasets_dir, 'Set5', 'HR', 'bird.png'))
    a, b = bicubic_downscale(img, 1 / 3), bicubic_downscale(img, 1 / 3, 'matlab')
    np.testing.assert_array_equal(a, basicsr_lr(img, 3))
    assert a.shape == b.shape == (96, 96, 3) and np.abs(a.astype(int) - b).max() <= 1


def small_291_args(src, out, *extra):
    return ['--input', str(src), '--out', str(out), '--scales', '2', '--factors', '1.0', '--workers', '1', *extra]


@pytest.fixture
def small_src(tmp_path, datasets_dir):
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('t3', 't4'):
        shutil.copy(os.path.join(datasets_dir, 'T91', f'{name}.png'), src)
    return src


def start_and_wait_for_tmp(src, out, sig, workers):
    """Start the 291 command in its own process group, send ``sig`` to the group 0.5 s after its temporary LMDBs
    appear, wait for it to end. SIGINT is reset to default in the child: a background shell may have ignored it.
    Two BSD images x 40 versions x 3 scales: several seconds of work, so the signal lands mid-write."""
    args = small_291_args(src, out, '--factors', '1.0', '0.9', '0.8', '0.7', '0.6', '--scales', '2', '3', '4',
                          '--workers', workers)
    # No preexec_fn (it can deadlock in a threaded parent): a new session gives the process group, and the child
    # re-arms Ctrl-C itself before running the command.
    code = ('import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
            'sys.argv = ["set291"] + sys.argv[1:]; '
            'runpy.run_module("lwsr_plugin.data.set291", run_name="__main__", alter_sys=True)')
    proc = subprocess.Popen([sys.executable, '-c', code, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any('.tmp-' in n for n in os.listdir(out)):
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, 'the run ended before it could be interrupted'
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    return proc


def test_interrupt_leaves_no_final_lmdb_and_rerun_finishes(tmp_path, small_src, monkeypatch, datasets_dir):
    out = tmp_path / 'out'
    final = out / '291_HR.lmdb'
    # KeyboardInterrupt in the middle of writing (in-process): cleaned up, nothing under the final name
    real_put = lmdb_io.AtomicLmdbWriter.put
    calls = []

    def put_then_interrupt(self, *args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_put(self, *args)

    monkeypatch.setattr(lmdb_io.AtomicLmdbWriter, 'put', put_then_interrupt)
    assert set291.main(small_291_args(small_src, out)) == 130
    monkeypatch.setattr(lmdb_io.AtomicLmdbWriter, 'put', real_put)
    assert not final.exists() and os.listdir(out) == []
    # Ctrl-C (SIGINT to the process group) and SIGKILL of a real run while it writes (all 5 factors: seconds of
    # work once the LMDBs are open). Ctrl-C cleans up; SIGKILL leaves a temporary folder; neither a final name.
    big_src = tmp_path / 'big'
    big_src.mkdir()
    for name in BSD_NAMES[:2]:
        shutil.copy(os.path.join(datasets_dir, 'BSD200', f'{name}.png'), big_src)
    for sig, workers in [(signal.SIGINT, '2'), (signal.SIGKILL, '1')]:
        proc = start_and_wait_for_tmp(big_src, out, sig, workers)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
        assert not final.exists()
        if sig == signal.SIGINT:
            assert os.listdir(out) == []
    assert not final.exists()
    assert any('.tmp-' in n for n in os.listdir(out))
    # a rerun finishes and removes the dead run's leftovers
    assert set291.main(small_291_args(small_src, out)) == 0
    assert sorted(os.listdir(out)) == ['291_HR.lmdb', '291_LR_bicubic_X2.lmdb']
    assert len(read_meta_info(str(final))) == 16
    # never overwritten without --overwrite; replaced with it
    assert set291.main(small_291_args(small_src, out)) == 2
    assert set291.main(small_291_args(small_src, out, '--overwrite')) == 0
    assert sorted(os.listdir(out)) == ['291_HR.lmdb', '291_LR_bicubic_X2.lmdb']


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_bad_inputs_give_one_clear_line(tmp_path, datasets_dir, capsys, div2k_root):
    out = str(tmp_path / 'out')
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert set291.main(['--input', str(empty), '--out', out]) == 2
    assert one_error_line(capsys) == f'error: {empty}: no images in the folder'

    junk = tmp_path / 'junk'
    junk.mkdir()
    shutil.copy(os.path.join(datasets_dir, 'T91', 't1.png'), junk)
    (junk / 'notes.txt').write_text('hello')
    assert set291.main(['--input', str(junk), '--out', out]) == 2
    assert one_error_line(capsys) == f'error: {junk / "notes.txt"}: not an image file ' \
                                     '(expected one of .png, .jpg, .jpeg, .bmp, .tif, .tiff, .ppm, .pgm, .webp)'

    (junk / 'notes.txt').unlink()
    (junk / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    assert set291.main(['--input', str(junk), '--out', out, '--workers', '2']) == 2
    assert one_error_line(capsys) == f'error: {junk / "broken.png"}: unreadable or corrupt image'
    assert not os.path.exists(out) or os.listdir(out) == []

    dup = tmp_path / 'dup'
    dup.mkdir()
    shutil.copy(os.path.join(datasets_dir, 'T91', 't1.png'), dup)
    (junk / 'broken.png').unlink()
    assert set291.main(['--input', str(junk), str(dup), '--out', out]) == 2
    assert one_error_line(capsys) == \
        f'error: {dup / "t1.png"}: duplicate base name "t1" (also {junk / "t1.png"}); LMDB keys would collide'

    # DIV2K: HR smaller than the crop (BSD images are 321 high; default crop 480)
    assert div2k.main(['--root', str(div2k_root), '--out', out, '--splits', 'train', '--workers', '1']) == 2
    line = one_error_line(capsys)
    assert line.startswith(f'error: {div2k_root / "DIV2K_train_HR" / "0001.png"}: HR ')
    assert line.endswith('(after mod-crop by 12) is smaller than the crop size 480')
    # DIV2K: given LR whose size is not HR/scale
    bad_lr = div2k_root / 'DIV2K_train_LR_bicubic' / 'X2' / '0002x2.png'
    cv2.imwrite(str(bad_lr), np.zeros((100, 100, 3), np.uint8))
    assert div2k.main(['--root', str(div2k_root), '--out', out, '--splits', 'train', '--crop-size', '120',
                       '--step', '60', '--workers', '1']) == 2
    h, w = cv2.imread(str(div2k_root / 'DIV2K_train_HR' / '0002.png')).shape[:2]
    assert one_error_line(capsys) == f'error: {bad_lr}: LR size 100x100 is not HR size {w}x{h} / 2'


def test_disk_full_leaves_existing_output_intact(tmp_path, small_src, capsys, monkeypatch):
    out = tmp_path / 'out'
    assert set291.main(small_291_args(small_src, out)) == 0
    before = read_meta_info(str(out / '291_HR.lmdb'))
    real_open = lmdb.open

    class FullTxn:
        def __init__(self, txn):
            self.txn = txn

        def put(self, *args):
            raise OSError(errno.ENOSPC, 'No space left on device')

        def __getattr__(self, name):
            return getattr(self.txn, name)

    class FullEnv:
        def __init__(self, env):
            self.env = env

        def begin(self, **kw):
            return FullTxn(self.env.begin(**kw))

        def __getattr__(self, name):
            return getattr(self.env, name)

    monkeypatch.setattr(lmdb_io.lmdb, 'open', lambda *a, **kw: FullEnv(real_open(*a, **kw)))
    assert set291.main(small_291_args(small_src, out, '--overwrite')) == 2
    line = one_error_line(capsys)
    assert line.startswith(f'error: {out / "291_HR.lmdb"}.tmp-') and 'no space left on the target disk' in line
    assert sorted(os.listdir(out)) == ['291_HR.lmdb', '291_LR_bicubic_X2.lmdb']
    assert read_meta_info(str(out / '291_HR.lmdb')) == before


def test_check_lmdb_reports_problems(tmp_path, small_src, capsys):
    out = tmp_path / 'out'
    assert set291.main(small_291_args(small_src, out, '--scales', '2', '4')) == 0
    hr, x2, x4 = (str(out / n) for n in ('291_HR.lmdb', '291_LR_bicubic_X2.lmdb',
                                         '291_LR_bicubic_X4.lmdb'))
    capsys.readouterr()
    # X4 records checked as X2: every size is wrong
    assert check_lmdb.main([hr, x4, '--scales', '2']) == 1
    assert 'is 1' in capsys.readouterr().out
    # a key missing from one side, a shape lie in meta_info, a record that does not decode
    with open(os.path.join(x2, 'meta_info.txt')) as f:
        lines = f.readlines()
    key0 = lines[0].split('.')[0]
    lines = lines[1:]
    lines[0] = lines[0].replace('(', '(9', 1)
    with open(os.path.join(x2, 'meta_info.txt'), 'w') as f:
        f.writelines(lines)
    env = lmdb.open(x2, map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(lines[1].split('.')[0].encode(), b'not a png')
    env.close()
    assert check_lmdb.main([hr, x2]) == 1
    report = capsys.readouterr().out
    assert f'key "{key0}" of the HR LMDB is missing' in report
    assert 'meta_info.txt says (9' in report and 'does not decode' in report and 'stored but not in' in report
