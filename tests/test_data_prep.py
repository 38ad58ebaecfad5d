"""Data preparation: DIV2K / 291 / benchmark commands, LMDB checks, interruption and bad inputs.

Everything runs on real images from ../shared/datasets; DIV2K is not available, so a DIV2K-shaped folder is built
from BSD200 images (with a 120/60 crop grid, since BSD images are smaller than DIV2K's 480 crops).
"""
import errno
import os
import shutil
import signal
import socket
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
from lwsr_plugin.data.images import DataPrepError, crop_positions, image_size, mod_crop
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


CTRL_C_DURING_IMPORT = '''
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from lwsr_plugin.data import pipeline
assert 'torch' not in sys.modules

class CtrlCOnTorchImport:  # Ctrl-C arrives as torch starts to import (a C++ extension's initialisation follows)
    def find_spec(self, name, path=None, target=None):
        if name == 'torch':
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCOnTorchImport())
try:
    pipeline._import_pixel_modules()
except KeyboardInterrupt:
    print('interrupted after the import' if 'lwsr_plugin.data.resize' in sys.modules else 'interrupted inside it')
else:
    print('not interrupted')
'''


def test_ctrl_c_while_torch_imports_is_raised_after_the_import():
    """A KeyboardInterrupt inside the C++ initialisation of a torch extension aborts the process (SIGABRT, temporary
    LMDBs left behind: 1 of 25 interrupted 291 runs on a loaded machine): the preparation commands hold Ctrl-C back
    while they import torch, then raise it."""
    proc = subprocess.run([sys.executable, '-c', CTRL_C_DURING_IMPORT], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == 'interrupted after the import'


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


def dead_pid():
    """The id of a process that has ended."""
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_runs_are_removed_before_a_run(tmp_path):
    """What dead runs left beside the outputs goes before a run writes: fileio's temporaries and the host-less
    ``.tmp-<pid>`` / ``.old-<pid>`` folders of earlier versions, beside the output and beside any other ``*.lmdb``.
    Temporaries of live processes and of other hosts stay, and so does what is not an LMDB's."""
    dead, live, host = dead_pid(), os.getppid(), socket.gethostname()
    gone = [f'291_HR.lmdb.tmp-{dead}', f'291_HR.lmdb.old-{dead}', f'291_HR.lmdb.tmp-{dead}@{host}',
            f'291_HR.lmdb.old-{dead}@{host}', f'other.lmdb.tmp-{dead}@{host}', f'other.lmdb.tmp-{dead}']
    kept = [f'291_HR.lmdb.tmp-{live}@{host}', f'291_HR.lmdb.tmp-{live}', f'291_HR.lmdb.tmp-{dead}@elsewhere',
            f'notes.txt.tmp-{dead}', 'other.lmdb']
    for name in gone + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / 'data.mdb').write_bytes(b'partial')
    lmdb_io.check_targets([str(tmp_path / '291_HR.lmdb')], overwrite=False)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


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

    # DIV2K: HR smaller than the crop (BSD images are 321 high; default crop 480): all listed, with the fixes
    assert div2k.main(['--root', str(div2k_root), '--out', out, '--splits', 'train', '--workers', '1']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ('error: 3 of 3 images are too small for the 480x480 crop (--crop-size) of DIV2K train; '
                      'nothing was written:')
    assert err[1] == f'  {div2k_root / "DIV2K_train_HR" / "0001.png"}: 481x321, needs both sides >= 480'
    assert err[-1] == 'fix: pass --skip-small to leave them out, or --crop-size 312 or less (a multiple of 12) to ' \
                      'keep them all'
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


# ------------------------------------------------------------------------ up-front size checks, -opt, light start-up
def tmp_leftovers(folder):
    """Temporary outputs (``*.tmp-<pid>@<host>`` / ``*.old-<pid>@<host>``) anywhere under ``folder``."""
    return [os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in dirs + files
            if '.tmp-' in n or '.old-' in n]


def test_image_size_reads_headers_like_opencv(tmp_path, datasets_dir):
    """Header sizes equal OpenCV's decoded sizes on the real sets and on the other formats (JPEG baseline and
    progressive, EXIF-rotated JPEG/PNG/WebP, BMP, PPM, TIFF, grey and 16-bit PNG) made from a real photo."""
    from PIL import Image
    paths = [os.path.join(datasets_dir, name, 'HR', f) for name in ('Set5', 'Set14', 'Urban100', 'BSD100')
             for f in sorted(os.listdir(os.path.join(datasets_dir, name, 'HR')))[:20]]
    paths += [os.path.join(datasets_dir, 'T91', f) for f in sorted(os.listdir(os.path.join(datasets_dir, 'T91')))]
    lr = os.path.join(datasets_dir, 'Set14', 'LR_bicubic', 'X3')
    paths += [os.path.join(lr, f) for f in sorted(os.listdir(lr))]
    woman = os.path.join(datasets_dir, 'Set5', 'HR', 'woman.png')  # 228x344: the swap of a rotation shows
    bgr = cv2.imread(woman)
    rotated = Image.Exif()
    rotated[0x0112] = 6  # "rotate 90 CW": OpenCV swaps the sides
    made = {'base.jpg': lambda p: cv2.imwrite(p, bgr),
            'prog.jpg': lambda p: Image.open(woman).convert('RGB').save(p, 'JPEG', progressive=True),
            'exif.jpg': lambda p: Image.open(woman).convert('RGB').save(p, 'JPEG', exif=rotated.tobytes()),
            'exif.png': lambda p: Image.open(woman).convert('RGB').save(p, 'PNG', exif=rotated.tobytes()),
            'exif.webp': lambda p: Image.open(woman).convert('RGB').save(p, 'WEBP', exif=rotated.tobytes()),
            'img.bmp': lambda p: cv2.imwrite(p, bgr), 'img.ppm': lambda p: cv2.imwrite(p, bgr),
            'img.tif': lambda p: cv2.imwrite(p, bgr), 'grey.png': lambda p: cv2.imwrite(p, bgr[..., 0]),
            'deep.png': lambda p: cv2.imwrite(p, bgr.astype(np.uint16) * 257)}
    for name, write in made.items():
        write(str(tmp_path / name))
        paths.append(str(tmp_path / name))
    for path in paths:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        assert image_size(path) == (img.shape[1], img.shape[0]), path
    assert image_size(str(tmp_path / 'exif.jpg')) == (344, 228)
    # PNG and JPEG headers are read without OpenCV, NumPy or Pillow
    code = ('import sys; from lwsr_plugin.data.images import scan_sizes; '
            f'sizes = scan_sizes({paths[:60] + [str(tmp_path / "exif.jpg")]!r}); '
            'print(len(sizes), sorted(m for m in ("cv2", "numpy", "PIL", "torch") if m in sys.modules))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ['61', '[]'], proc.stdout + proc.stderr
    # a broken PNG is reported as read_image reports it
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    with pytest.raises(DataPrepError, match='unreadable or corrupt image'):
        image_size(str(broken))


@pytest.fixture
def mixed_root(tmp_path, datasets_dir):
    """DIV2K_train_HR with 3 BSD200 images (481x321 / 321x481, too small for a 480 crop) as 0001-0003 and two
    Urban100 images (1024x644, 1024x768) as 0004, 0005."""
    root = tmp_path / 'mixed'
    (root / 'DIV2K_train_HR').mkdir(parents=True)
    for i, name in enumerate(BSD_NAMES, 1):
        shutil.copy(os.path.join(datasets_dir, 'BSD200', f'{name}.png'), root / 'DIV2K_train_HR' / f'{i:04d}.png')
    for i, name in enumerate(('img_001', 'img_002'), 4):
        shutil.copy(os.path.join(datasets_dir, 'Urban100', 'HR', f'{name}.png'),
                    root / 'DIV2K_train_HR' / f'{i:04d}.png')
    return root


def test_div2k_lists_every_small_image_before_any_work(mixed_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'out'

    def no_work(*args, **kwargs):
        raise AssertionError('an image was decoded or a job started before the size check')

    monkeypatch.setattr(div2k, 'read_image', no_work)
    monkeypatch.setattr(div2k, 'write_lmdbs', no_work)
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '--workers', '1', '--scales', '4']) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    hr_dir = mixed_root / 'DIV2K_train_HR'
    assert err == ['error: 3 of 5 images are too small for the 480x480 crop (--crop-size) of DIV2K train; nothing '
                   'was written:',
                   f'  {hr_dir / "0001.png"}: 481x321, needs both sides >= 480',
                   f'  {hr_dir / "0002.png"}: 321x481, needs both sides >= 480',
                   f'  {hr_dir / "0003.png"}: 481x321, needs both sides >= 480',
                   'fix: pass --skip-small to leave them out, or --crop-size 320 or less (a multiple of 4) to keep '
                   'them all']
    assert 'DIV2K: --crop-size 480 --step 240 --scales 4' in cap.out
    assert not out.exists() and tmp_leftovers(tmp_path) == []
    # the same from a fresh process: it stops before OpenCV, NumPy or torch is even imported
    code = ('import sys; from lwsr_plugin.data.div2k import main; '
            f'rc = main(["--root", {str(mixed_root)!r}, "--out", {str(out)!r}, "--scales", "4"]); '
            'print(rc, sorted(m for m in ("cv2", "numpy", "torch", "basicsr") if m in sys.modules))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == '2 []', proc.stdout + proc.stderr
    assert proc.stderr.count('needs both sides >= 480') == 3
    assert not out.exists() and tmp_leftovers(tmp_path) == []


def test_div2k_skip_small_leaves_them_out(mixed_root, tmp_path, capsys):
    out = tmp_path / 'out'
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '--workers', '2', '--scales', '4',
                       '--skip-small']) == 0
    assert 'DIV2K train: --skip-small leaves out 3 of 5 images with a side under 480 px: 0001.png, 0002.png, ' \
           '0003.png' in capsys.readouterr().out
    hr, lr = str(out / 'DIV2K_train_HR_sub.lmdb'), str(out / 'DIV2K_train_LR_bicubic_X4_sub.lmdb')
    meta = read_meta_info(hr)
    assert set(meta) == set(read_meta_info(lr))
    assert {key.split('_')[0] for key in meta} == {'0004', '0005'}
    # 1024x644 -> 2 x 4 windows of 480 (0, 164 / 0, 240, 480, 544); 1024x768 -> 3 x 4 (0, 240, 288 / ...)
    assert len(meta) == 8 + 12 and all(shape == (480, 480, 3) for shape, _ in meta.values())
    assert check_lmdb.main([hr, lr]) == 0
    assert sorted(os.listdir(out)) == ['DIV2K_train_HR_sub.lmdb', 'DIV2K_train_LR_bicubic_X4_sub.lmdb']
    # every image too small: nothing to write, said in one line
    assert div2k.main(['--root', str(mixed_root), '--out', str(tmp_path / 'none'), '--crop-size', '1032',
                       '--scales', '4', '--skip-small']) == 2
    assert one_error_line(capsys) == ('error: DIV2K train: every image has a side under 1032 px, so --skip-small '
                                      'leaves nothing to write; instead use --crop-size 320 or less (a multiple of '
                                      '4) to keep them all')
    assert not (tmp_path / 'none').exists()


def test_div2k_grid_from_train_options():
    # the rule: BasicSR's 480/240 when it holds gt_size and is a multiple of every scale, else the smallest
    # multiple of the lcm that holds gt_size; the step is half the crop, a multiple of the lcm too
    assert div2k.derive_grid(192, [4]) == (480, 240)
    assert div2k.derive_grid(96, [2, 3, 4]) == (480, 240)
    assert div2k.derive_grid(500, [4]) == (500, 248)
    assert div2k.derive_grid(192, [7]) == (476, 238)
    assert div2k.derive_grid(600, [2, 3, 4]) == (600, 300)
    for gt_size in range(8, 1000, 13):
        for scales in ([2], [3], [4], [8], [2, 3, 4], [3, 8], [5]):
            mod = np.lcm.reduce(scales)
            crop, step = div2k.derive_grid(gt_size, scales)
            assert crop >= gt_size and crop % mod == 0 and step % mod == 0 and 0 < step <= crop
            if gt_size <= 480 and 480 % mod == 0:
                assert (crop, step) == (480, 240)
    # every shipped train option file that has a gt_size gets a grid it can train on
    options = sorted(f for f in os.listdir(os.path.join(REPO, 'options')) if f.startswith('train_'))
    assert len(options) > 10
    for name in options:
        gt_size, scales = div2k.read_train_options([os.path.join(REPO, 'options', name)])
        crop, step = div2k.derive_grid(gt_size, scales)
        assert crop >= gt_size and crop % scales[0] == 0, name


def test_div2k_opt_derives_and_checks_crop(mixed_root, tmp_path, capsys):
    imdn_x4 = os.path.join(REPO, 'options', 'train_IMDN_x4.yml')
    imdn_x3 = os.path.join(REPO, 'options', 'train_IMDN_x3.yml')
    out = tmp_path / 'out'
    # derived values are stated; BSD images are too small for the derived 480 crop
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '-opt', imdn_x4, imdn_x3]) == 2
    cap = capsys.readouterr()
    assert cap.out.splitlines()[0] == (f'DIV2K: --crop-size 480 --step 240 --scales 3 4 (-opt {imdn_x4}, {imdn_x3}: '
                                       "gt_size 192, scale 3 4; BasicSR's 480 crop holds gt_size and is a multiple "
                                       'of 12; step = half the crop)')
    assert 'fix: pass --skip-small to leave them out, or --crop-size 312 or less' in cap.err
    # an explicit crop below gt_size: one line naming both
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '-opt', imdn_x4, '--crop-size', '120']) == 2
    assert one_error_line(capsys) == (f'error: --crop-size 120 is smaller than gt_size 192 of -opt {imdn_x4}: '
                                      "BasicSR's paired_random_crop cannot cut a 192 px patch from it; use "
                                      '--crop-size 480 (or any multiple of 4 from 192), or leave it out')
    # --scales that leave out the option file's scale
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '-opt', imdn_x4, '--scales', '2']) == 2
    assert one_error_line(capsys) == (f'error: --scales 2 leaves out scale 4, which -opt {imdn_x4} trains on; add '
                                      'it to --scales or leave --scales out')
    # not a train option file
    test_opt = os.path.join(REPO, 'options', 'test_IMDN_x4.yml')
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '-opt', test_opt]) == 2
    assert one_error_line(capsys) == (f'error: -opt {test_opt}: no datasets.train.gt_size (a positive integer); '
                                      'pass a BasicSR train option file, or --crop-size and --step')
    # an explicit crop at least gt_size wins, the step follows it
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '-opt', imdn_x4, '--crop-size', '300',
                       '--workers', '1']) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f'DIV2K: --crop-size 300 --step 148 --scales 4 (-opt '
                                                       f'{imdn_x4}: gt_size 192, scale 4; step = half the crop)')
    assert {shape for shape, _ in read_meta_info(str(out / 'DIV2K_train_HR_sub.lmdb')).values()} == {(300, 300, 3)}
    assert not out.joinpath('DIV2K_train_LR_bicubic_X2_sub.lmdb').exists()


def test_div2k_opt_with_large_gt_size_trains(mixed_root, tmp_path, capsys):
    """gt_size 500 > 480: the crop becomes 500 (a multiple of 4), step 248, and BasicSR's loader cuts 500 px
    patches from the sub-images."""
    opt = tmp_path / 'train_big.yml'
    opt.write_text(TRAIN_YML.format(gt='x', lq='y').replace('gt_size: 32', 'gt_size: 500').replace('scale: 2',
                                                                                                  'scale: 4'))
    out = tmp_path / 'out'
    assert div2k.main(['--root', str(mixed_root), '--out', str(out), '-opt', str(opt), '--skip-small',
                       '--workers', '2']) == 0
    assert capsys.readouterr().out.startswith(f'DIV2K: --crop-size 500 --step 248 --scales 4 (-opt {opt}: gt_size '
                                              '500, scale 4; crop = the smallest multiple of 4 >= gt_size; step = '
                                              'half the crop)')
    hr, lr = str(out / 'DIV2K_train_HR_sub.lmdb'), str(out / 'DIV2K_train_LR_bicubic_X4_sub.lmdb')
    assert {shape for shape, _ in read_meta_info(hr).values()} == {(500, 500, 3)}
    assert {shape for shape, _ in read_meta_info(lr).values()} == {(125, 125, 3)}
    sample = PairedImageDataset(train_opt(hr, lr, 4, 500))[0]
    assert sample['gt'].shape == (3, 500, 500) and sample['lq'].shape == (3, 125, 125)


def test_291_min_size_and_small_images(tmp_path, datasets_dir, capsys):
    """--min-size 110: t20 (78x78) has no version of 110 px, so --min-size leaves it out and names it; t1 (197x176)
    keeps its full-size versions, its 0.6 versions (106 px) are left out and counted up front. An image too small
    for the scales themselves (a 10x16 corner of t1 with scales 2 3 4: no version reaches 12 px) is listed and
    stops the command, or is left out by --skip-small."""
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('t1', 't20'):
        shutil.copy(os.path.join(datasets_dir, 'T91', f'{name}.png'), src)
    out = tmp_path / 'out'
    args = ['--input', str(src), '--out', str(out), '--scales', '2', '--workers', '1', '--min-size', '110',
            '--factors', '1.0', '0.6']
    assert set291.main(args) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[:2] == ['291: --min-size 110 leaves out 1 of 2 images with a side under 110 px: t20.png',
                          '291: 1 images x 16 versions = 16 HR records; 8 versions under 110 px left out -> 8 '
                          'records, scales [2]']
    meta = read_meta_info(str(out / '291_HR.lmdb'))
    assert set(meta) == set(read_meta_info(str(out / '291_LR_bicubic_X2.lmdb')))
    assert sorted(meta) == sorted(f't1_d10_r{r:03d}_f{f}' for r in (0, 90, 180, 270) for f in (0, 1))
    # too small for the scales: listed, nothing written; --skip-small leaves it out
    cv2.imwrite(str(src / 'corner.png'), cv2.imread(os.path.join(datasets_dir, 'T91', 't1.png'))[:10, :16])
    out = tmp_path / 'out2'
    args = ['--input', str(src), '--out', str(out), '--workers', '1', '--factors', '1.0', '0.6']
    assert set291.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: 1 of 3 images are too small for the scales 2 3 4 (even their largest version would be '
                   'under 12 px, the lcm of the scales); nothing was written:',
                   f'  {src / "corner.png"}: 16x10, needs both sides >= 12',
                   'fix: pass --skip-small to leave them out, or fewer or smaller --scales']
    assert not out.exists()
    assert set291.main(args + ['--skip-small']) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == '291: --skip-small leaves out 1 of 3 images with a side under 12 px: corner.png'
    # t20 at 0.6: ceil(78 * 0.6) = 47 -> 36 after the mod-crop by 12: kept (no --min-size)
    meta = read_meta_info(str(out / '291_HR.lmdb'))
    assert len(meta) == 32 and {key.split('_')[0] for key in meta} == {'t1', 't20'}
    assert meta['t20_d06_r000_f0'][0] == (36, 36, 3)


def test_benchmark_small_images_listed_or_skipped(tmp_path, datasets_dir, capsys):
    hr = tmp_path / 'hr'
    hr.mkdir()
    shutil.copy(os.path.join(datasets_dir, 'Set5', 'HR', 'bird.png'), hr)
    cv2.imwrite(str(hr / 'corner.png'), cv2.imread(os.path.join(datasets_dir, 'Set5', 'HR', 'baby.png'))[:3, :40])
    out = tmp_path / 'set'
    assert benchmark.main(['--hr', str(hr), '--out', str(out), '--scales', '4', '--workers', '1']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == 'error: 1 of 2 images are too small for scale 4 after the mod-crop by 4; nothing was written:'
    assert err[1] == f'  {hr / "corner.png"}: 40x3, needs both sides >= 4'
    assert not out.exists() and tmp_leftovers(tmp_path) == []
    assert benchmark.main(['--hr', str(hr), '--out', str(out), '--scales', '4', '--workers', '1',
                           '--skip-small']) == 0
    assert sorted(os.listdir(out / 'HR')) == ['bird.png'] and os.listdir(out / 'LR_bicubic' / 'X4') == ['birdx4.png']


COMMANDS = {'lwsr-prepare-div2k': 'lwsr_plugin.data.div2k', 'lwsr-prepare-291': 'lwsr_plugin.data.set291',
            'lwsr-prepare-benchmark': 'lwsr_plugin.data.benchmark', 'lwsr-check-lmdb': 'lwsr_plugin.data.check_lmdb',
            'lwsr-convert-idn': 'lwsr_plugin.convert.caffe_idn'}
HEAVY = ('torch', 'cv2', 'numpy', 'basicsr')


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_help_imports_no_heavy_module(command):
    """``--help`` builds the parser with Python, argparse and yaml: neither torch, BasicSR, OpenCV nor NumPy. Run
    both the console entry point (its ``main``) and ``python -X importtime -m <module> --help``."""
    module = COMMANDS[command]
    code = (f'import sys\nfrom {module} import main\ntry:\n    main(["--help"])\nexcept SystemExit as e:\n'
            f'    assert e.code == 0, e.code\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'usage:' in proc.stdout and proc.stdout.strip().splitlines()[-1] == '[]', proc.stdout
    proc = subprocess.run([sys.executable, '-X', 'importtime', '-m', module, '--help'], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and 'usage:' in proc.stdout
    imported = [line.split('|')[-1].strip() for line in proc.stderr.splitlines() if line.startswith('import time:')]
    assert imported and not [m for m in imported if m.split('.')[0] in HEAVY]


def test_check_lmdb_runs_without_torch(tmp_path, small_src):
    """The check needs OpenCV and NumPy only: BasicSR and torch (seconds to import) stay out, and its checks
    still run (here: clean, then one record that does not decode)."""
    out = tmp_path / 'out'
    assert set291.main(small_291_args(small_src, out)) == 0
    hr, x2 = str(out / '291_HR.lmdb'), str(out / '291_LR_bicubic_X2.lmdb')
    code = ('import sys; from lwsr_plugin.data.check_lmdb import main; '
            f'rc = main([{hr!r}, {x2!r}, "--workers", "2"]); '
            'print(rc, sorted(m for m in ("torch", "basicsr") if m in sys.modules))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == '0 []', proc.stdout + proc.stderr
    key = sorted(read_meta_info(x2))[3]
    env = lmdb.open(x2, map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(key.encode(), b'\x89PNG\r\n\x1a\n truncated')
    env.close()
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == '1 []' and f'{x2}: record "{key}" does not decode as an image' in lines, proc.stdout
