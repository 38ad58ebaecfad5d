"""InMemoryPairedImageDataset against BasicSR's PairedImageDataset on real images: a real LMDB (Set5, two Set14
images, one of them grey, and an Urban100 image) and real disk folders; its cache (reuse, rebuild, concurrent
builders), spawned DataLoader workers, max_memory and bad input, and a real training run through lwsr_plugin.train."""
import functools
import gc
import glob
import multiprocessing as mp
import os
import pickle
import random
import shutil
import subprocess

import cv2
import lmdb
import numpy as np
import pytest
import torch
from basicsr.data import worker_init_fn
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.lmdb_util import LmdbMaker

from _utils import PY, link_datasets, make_pair_lmdbs, run, write_options
from lwsr_plugin.data.in_memory_paired_image_dataset import (InMemoryDatasetError, InMemoryPairedImageDataset,
                                                             format_size, parse_size, read_cache_header)

SET5 = ['baby', 'bird', 'butterfly', 'head', 'woman']
# bridge is a grey PNG (decoded to three channels by BasicSR); img_001 is large (1024x644)
PAIRS = ([(f'Set5/HR/{s}.png', f'Set5/LR_bicubic/X4/{s}x4.png', s) for s in SET5]
         + [(f'Set14/HR/{s}.png', f'Set14/LR_bicubic/X4/{s}x4.png', s) for s in ('baboon', 'bridge')]
         + [('Urban100/HR/img_001.png', 'Urban100/LR_bicubic/X4/img_001x4.png', 'img_001')])


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory, datasets_dir):
    """``(gt.lmdb, lq.lmdb)`` built from the real images with BasicSR's own LMDB writer (X4, same keys)."""
    return make_pair_lmdbs(tmp_path_factory.mktemp('lmdb'), datasets_dir, PAIRS)


def lmdb_opt(lmdbs, phase='train', **extra):
    opt = {'name': 'test', 'dataroot_gt': lmdbs[0], 'dataroot_lq': lmdbs[1], 'io_backend': {'type': 'lmdb'},
           'phase': phase, 'scale': 4}
    if phase == 'train':
        opt.update(gt_size=48, use_hflip=True, use_rot=True)
    opt.update(extra)
    return opt


def both(opt, cache_dir):
    """The BasicSR dataset and ours on the same options (BasicSR's gets its own copy: it edits io_backend)."""
    ref = PairedImageDataset({**opt, 'io_backend': dict(opt['io_backend'])})
    return ref, InMemoryPairedImageDataset({**opt, 'cache_dir': str(cache_dir)})


def assert_same_samples(ref, ours, indices, seed=0):
    """Draw ``indices`` from both datasets from the same ``random`` state: identical tensors and paths."""
    random.seed(seed)
    expected = [ref[i] for i in indices]
    state_after_ref = random.getstate()
    random.seed(seed)
    got = [ours[i] for i in indices]
    assert random.getstate() == state_after_ref  # the same number of draws, so later samples stay in step
    for i, a, b in zip(indices, expected, got):
        assert (a['lq_path'], a['gt_path']) == (b['lq_path'], b['gt_path'])
        assert a['lq'].dtype == b['lq'].dtype == torch.float32
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt']), f'index {i} differs'


@pytest.mark.parametrize('extra', [{}, {'color': 'y'}, {'mean': [0.45, 0.44, 0.40], 'std': [0.2, 0.3, 0.25]}],
                         ids=['rgb', 'y', 'mean_std'])
def test_lmdb_train_and_val_identical_to_basicsr(lmdbs, tmp_path, extra):
    ref, ours = both(lmdb_opt(lmdbs, **extra), tmp_path)
    assert len(ours) == len(ref) == len(PAIRS) and ours.paths == ref.paths
    assert_same_samples(ref, ours, [i % len(ref) for i in range(64)])  # crops, flips, transposes: all combos
    sample = ours[0]
    channels = 1 if extra.get('color') == 'y' else 3
    assert sample['lq'].shape == (channels, 12, 12) and sample['gt'].shape == (channels, 48, 48)

    ref, ours = both(lmdb_opt(lmdbs, phase='val', **extra), tmp_path)
    assert not ours.cache_built  # one cache serves train and val, RGB and Y
    assert_same_samples(ref, ours, range(len(ref)))


def test_disk_folders_identical_to_basicsr(datasets_dir, tmp_path):
    """Set14 as a validation folder (GTs not multiple of 4 are trimmed, a grey image), Set5 for training, and the
    meta_info_file mode."""
    val = {'name': 'Set14', 'dataroot_gt': f'{datasets_dir}/Set14/HR',
           'dataroot_lq': f'{datasets_dir}/Set14/LR_bicubic/X4', 'filename_tmpl': '{}x4',
           'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 4}
    ref, ours = both(val, tmp_path)
    assert len(ours) == 14 and ours.paths == ref.paths
    assert_same_samples(ref, ours, range(len(ref)))
    ref, ours = both({**val, 'color': 'y'}, tmp_path)
    assert_same_samples(ref, ours, range(len(ref)))

    train = {**val, 'dataroot_gt': f'{datasets_dir}/Set5/HR', 'dataroot_lq': f'{datasets_dir}/Set5/LR_bicubic/X4',
             'phase': 'train', 'gt_size': 64, 'use_hflip': True, 'use_rot': True}
    ref, ours = both(train, tmp_path)
    assert_same_samples(ref, ours, [i % 5 for i in range(40)], seed=3)
    for flags in ({'use_hflip': False}, {'use_rot': False}):  # fewer random draws per patch
        ref, ours = both({**train, **flags}, tmp_path)
        assert_same_samples(ref, ours, [i % 5 for i in range(20)], seed=4)

    meta = tmp_path / 'meta.txt'
    meta.write_text('bird.png (288,288,3)\nbaby.png (512,512,3)\n')
    ref, ours = both({**train, 'meta_info_file': str(meta)}, tmp_path)
    assert [os.path.basename(p['gt_path']) for p in ours.paths] == ['bird.png', 'baby.png']
    assert_same_samples(ref, ours, [0, 1] * 10)


def test_cache_reused_then_rebuilt_when_data_change(datasets_dir, tmp_path):
    """Default cache location (beside dataroot_gt); a second construction maps the same file; changing one image
    gives a new cache with the new pixels and removes the stale one."""
    root = tmp_path / 'Set5'
    shutil.copytree(f'{datasets_dir}/Set5/HR', root / 'HR')
    shutil.copytree(f'{datasets_dir}/Set5/LR_bicubic/X4', root / 'X4')
    opt = {'dataroot_gt': str(root / 'HR'), 'dataroot_lq': str(root / 'X4'), 'filename_tmpl': '{}x4',
           'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 4}
    builds = InMemoryPairedImageDataset.builds
    first = InMemoryPairedImageDataset(dict(opt))
    assert first.cache_built and InMemoryPairedImageDataset.builds == builds + 1
    assert os.path.dirname(first.cache_path) == str(root)
    mtime = os.stat(first.cache_path).st_mtime_ns
    second = InMemoryPairedImageDataset(dict(opt))
    assert not second.cache_built and second.cache_path == first.cache_path
    assert InMemoryPairedImageDataset.builds == builds + 1 and os.stat(first.cache_path).st_mtime_ns == mtime
    assert set(os.listdir(root)) == {'HR', 'X4', os.path.basename(first.cache_path)}  # no tmp or lock left

    lr = root / 'X4' / 'birdx4.png'
    cv2.imwrite(str(lr), cv2.imread(str(lr))[::-1].copy())  # same size, different pixels
    third = InMemoryPairedImageDataset(dict(opt))
    assert third.cache_built and third.cache_path != first.cache_path
    ref = PairedImageDataset({**opt, 'io_backend': {'type': 'disk'}})
    assert_same_samples(ref, third, range(5))
    # a dataset still alive (a running job whose workers map the file again each epoch) keeps the old cache...
    bird = [i for i, p in enumerate(third.paths) if p['lq_path'] == str(lr)][0]
    assert os.path.exists(first.cache_path) and not torch.equal(second[bird]['lq'], third[bird]['lq'])
    old = first.cache_path
    del first, second
    gc.collect()
    fourth = InMemoryPairedImageDataset(dict(opt))  # ... which goes once no dataset holds it
    assert not fourth.cache_built and not os.path.exists(old)
    assert set(os.listdir(root)) == {'HR', 'X4', os.path.basename(third.cache_path)}


def test_lmdb_rewritten_record_rebuilds(lmdbs, tmp_path):
    gt, lq = shutil.copytree(lmdbs[0], tmp_path / 'gt.lmdb'), shutil.copytree(lmdbs[1], tmp_path / 'lq.lmdb')
    opt = lmdb_opt((str(gt), str(lq)), phase='val')
    first = InMemoryPairedImageDataset(dict(opt))
    assert first.cache_built and os.path.dirname(first.cache_path) == str(tmp_path)
    assert not InMemoryPairedImageDataset(dict(opt)).cache_built
    env = lmdb.open(str(lq), map_size=1 << 30)
    with env.begin(write=True) as txn:
        img = cv2.imdecode(np.frombuffer(txn.get(b'head'), np.uint8), cv2.IMREAD_COLOR)
        txn.put(b'head', cv2.imencode('.png', img[:, ::-1].copy())[1].tobytes())
    env.close()
    second = InMemoryPairedImageDataset(dict(opt))
    assert second.cache_built and second.cache_path != first.cache_path
    ref = PairedImageDataset({**opt, 'io_backend': {'type': 'lmdb'}})
    assert_same_samples(ref, second, range(len(ref)))


def _construct(opt, barrier, queue):
    barrier.wait()  # start together: both find no cache
    ds = InMemoryPairedImageDataset(opt)
    queue.put((ds.cache_built, ds.cache_path))


def test_concurrent_processes_build_once(lmdbs, tmp_path):
    ctx = mp.get_context('fork')  # separate processes (own lock handles) without the seconds a spawn costs
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    opt = lmdb_opt(lmdbs, cache_dir=str(tmp_path))
    procs = [ctx.Process(target=_construct, args=(opt, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(built for built, _ in results) == [False, True]  # one decoded, the other waited and reused
    assert len({path for _, path in results}) == 1
    assert os.listdir(tmp_path) == [os.path.basename(results[0][1])]
    assert read_cache_header(results[0][1])['count'] == len(PAIRS)


def test_temporaries_of_killed_builds_removed(lmdbs, tmp_path, monkeypatch):
    """A dataset removes what killed builds on this host left in its cache folder: fileio's temporaries and the
    ``<cache>.tmp-<host>-<pid>-<id>`` files of earlier versions, whatever '-', '.' and digits the host name holds.
    Temporaries of live processes and of other hosts stay."""
    from lwsr_plugin import fileio
    host = 'ip-10-0-0-5.node-2.cluster'
    monkeypatch.setattr(fileio.socket, 'gethostname', lambda: host)
    proc = subprocess.Popen(['true'])
    proc.wait()
    dead, live = proc.pid, os.getppid()
    cache = 'HR__LR.0123abcd.00112233aabbccdd.lwsrcache'
    gone = [f'{cache}.tmp-{host}-{dead}-0a1b2c3d', f'{cache}.tmp-{dead}@{host}', f'{cache}.tmp-{dead}-7f@{host}']
    kept = [f'{cache}.tmp-{host}-{live}-0a1b2c3d', f'{cache}.tmp-{live}@{host}', f'{cache}.tmp-{dead}@other-7',
            f'{cache}.tmp-other-7.x-{dead}-0a1b2c3d']
    for name in gone + kept:
        (tmp_path / name).write_bytes(b'partial')
    ds = InMemoryPairedImageDataset(lmdb_opt(lmdbs, phase='val', cache_dir=str(tmp_path)))
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [os.path.basename(ds.cache_path)])


def test_spawned_workers_match_single_process(lmdbs, tmp_path):
    """num_workers=2 with BasicSR's worker seeding under the spawn start method gives the batches that
    num_workers=0 gives with the same seeding: worker w (seeded seed + w) makes batches w, w + 2, ..."""
    ds = InMemoryPairedImageDataset(lmdb_opt(lmdbs, cache_dir=str(tmp_path)))
    ds[0]  # maps the cache here: the mapping must not travel to the workers
    assert len(pickle.dumps(ds)) < 20000
    seed, batch, order = 10, 3, list(range(len(ds))) * 2
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=order, num_workers=2, multiprocessing_context='spawn',
        worker_init_fn=functools.partial(worker_init_fn, num_workers=2, rank=0, seed=seed))
    got = list(loader)

    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    expected = [None] * len(batches)
    for worker in (0, 1):
        mine = list(range(worker, len(batches), 2))
        random.seed(seed + worker)
        single = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=[i for b in mine for i in batches[b]],
                                             num_workers=0)
        for b, data in zip(mine, single):
            expected[b] = data
    assert len(got) == len(expected) == 6
    for a, b in zip(got, expected):
        assert a['gt_path'] == b['gt_path'] and torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])


def test_max_memory(lmdbs, tmp_path, datasets_dir):
    assert parse_size('8GB') == 8 * 10**9 and parse_size('500MB') == 5 * 10**8 and parse_size(1024) == 1024
    assert parse_size('1.5GiB') == 3 * 2**29 and parse_size('2g') == 2 * 2**30
    need = sum(cv2.imread(os.path.join(datasets_dir, p), cv2.IMREAD_COLOR).nbytes for pair in PAIRS for p in pair[:2])
    with pytest.raises(InMemoryDatasetError) as err:
        InMemoryPairedImageDataset(lmdb_opt(lmdbs, cache_dir=str(tmp_path), max_memory='1MB'))
    msg = str(err.value)
    assert '\n' not in msg
    assert f'max_memory is 1.00 MB but the decoded 8 GT/LQ pairs of {lmdbs[0]} need {format_size(need)} ({need} ' \
           'bytes); raise it (max_memory: ' in msg and 'PairedImageDataset' in msg
    assert os.listdir(tmp_path) == []  # refused before decoding anything
    ok = InMemoryPairedImageDataset(lmdb_opt(lmdbs, cache_dir=str(tmp_path), max_memory=need))
    assert read_cache_header(ok.cache_path)['data_nbytes'] == need
    with pytest.raises(InMemoryDatasetError, match=r"max_memory: '8 gigs' is not a size"):
        InMemoryPairedImageDataset(lmdb_opt(lmdbs, cache_dir=str(tmp_path), max_memory='8 gigs'))


@pytest.mark.parametrize('case, expected', [
    ('misaligned', 'at scale 4 (4 such pair(s)); GT must be exactly scale x LQ for training'),  # comic, flowers, ...
    ('no_gt_size', 'option gt_size is missing'),
    ('bad_gt_size', 'gt_size 50 is not a positive multiple of scale 4'),
    ('no_folder', 'dataroot_gt: /nonexistent/HR is not a folder'),
    ('not_lmdb', 'has no meta_info.txt; it is not a BasicSR LMDB'),
    ('corrupt', 'birdx4.png: cannot be decoded as an image'),
    ('corrupt_lmdb', "lq.lmdb record 'bird': cannot be decoded as an image"),
    ('color', "color: 'Y' is not known"),
])
def test_bad_input_one_line(datasets_dir, lmdbs, tmp_path, case, expected):
    opt = {'dataroot_gt': f'{datasets_dir}/Set14/HR', 'dataroot_lq': f'{datasets_dir}/Set14/LR_bicubic/X4',
           'filename_tmpl': '{}x4', 'io_backend': {'type': 'disk'}, 'phase': 'train', 'scale': 4, 'gt_size': 48,
           'use_hflip': True, 'use_rot': True, 'cache_dir': str(tmp_path / 'cache')}
    if case == 'no_gt_size':
        del opt['gt_size']
    elif case == 'bad_gt_size':
        opt['gt_size'] = 50
    elif case == 'no_folder':
        opt['dataroot_gt'] = '/nonexistent/HR'
    elif case == 'not_lmdb':
        opt['io_backend'] = {'type': 'lmdb'}
    elif case == 'corrupt':
        shutil.copytree(f'{datasets_dir}/Set5/HR', tmp_path / 'HR')
        shutil.copytree(f'{datasets_dir}/Set5/LR_bicubic/X4', tmp_path / 'X4')
        (tmp_path / 'X4' / 'birdx4.png').write_bytes(b'not a png')
        opt.update(dataroot_gt=str(tmp_path / 'HR'), dataroot_lq=str(tmp_path / 'X4'))
    elif case == 'corrupt_lmdb':
        maker = LmdbMaker(str(tmp_path / 'lq.lmdb'))
        for _, lq, key in sorted(PAIRS, key=lambda p: p[2]):
            img = cv2.imread(os.path.join(datasets_dir, lq), cv2.IMREAD_COLOR)
            maker.put(b'\x89PNG garbage' if key == 'bird' else cv2.imencode('.png', img)[1].tobytes(), key, img.shape)
        maker.close()
        opt.update(dataroot_gt=lmdbs[0], dataroot_lq=str(tmp_path / 'lq.lmdb'), io_backend={'type': 'lmdb'})
    elif case == 'color':
        opt['color'] = 'Y'
    with pytest.raises(InMemoryDatasetError) as err:
        InMemoryPairedImageDataset(opt)
    assert expected in str(err.value) and '\n' not in str(err.value)
    assert not glob.glob(str(tmp_path / 'cache' / '*'))  # nothing half-written is left


def test_basicsr_training_run(tmp_path, datasets_dir):
    """lwsr_plugin.train with both datasets of the tiny option file switched to InMemoryPairedImageDataset."""
    work = link_datasets(tmp_path, datasets_dir)
    cache = str(tmp_path / 'cache')
    opt = write_options(tmp_path / 'opt.yml', **{
        'datasets.train.type': 'InMemoryPairedImageDataset', 'datasets.train.cache_dir': cache,
        'datasets.val.type': 'InMemoryPairedImageDataset', 'datasets.val.cache_dir': cache,
        'train.total_iter': 4, 'val.val_freq': 4})
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work, timeout=300).stdout
    assert 'End of training.' in out and 'Validation Set5' in out, out[-3000:]
    assert 'decoding 5 GT/LQ pairs once' in out
    assert len(glob.glob(os.path.join(cache, '*.lwsrcache'))) == 1  # train and val share the Set5 X4 cache
    assert np.isfinite(float(out.split('# psnr: ')[1].split()[0]))
