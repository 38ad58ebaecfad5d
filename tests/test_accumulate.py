"""``train.accumulate``: one global batch on any number of processes. Real lwsr-train / torchrun runs of a small IMDN
on Set5 patches; with keyed samples every run below sees the same 16 patches at each step."""
import os
import re
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'scripts'))

import check_resume  # noqa: E402

ITERS = 4


def _train(root, datasets_dir, label, batch, accumulate, nproc=1, model_type='LWSRModel'):
    opt = check_resume.options(ITERS, ITERS, workers=0, batch=batch, ratio=16)  # 80 samples: 5 steps of 16
    opt['model_type'] = model_type
    opt['train']['amp'] = False  # fp32: the runs differ by float summation order only
    opt['train']['accumulate'] = accumulate
    work = os.path.join(root, label)
    proc = check_resume.train(work, check_resume.prepare(work, datasets_dir, opt), nproc=nproc)
    return work, proc


def _weights(work):
    path = os.path.join(work, 'experiments', check_resume.NAME, 'models', f'net_g_{ITERS}.pth')
    return torch.load(path, weights_only=True)['params']


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_accumulate_equals_the_large_batch(tmp_path, datasets_dir):
    """1 process x batch 8 x accumulate 2 == 1 process x batch 16 (and != batch 8 alone: the check can fail)."""
    big, proc = _train(str(tmp_path), datasets_dir, 'b16', 16, 1)
    assert proc.returncode == 0, proc.stdout[-3000:]
    acc, proc = _train(str(tmp_path), datasets_dir, 'b8x2', 8, 2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'runs 2 forward/backward passes of 8 before one optimizer step; global batch 16 = 1 process(es) x 8 x 2' \
        in proc.stdout
    iters = [int(i) for i in re.findall(r'iter:\s+(\d+), lr', proc.stdout)]
    assert iters == list(range(1, ITERS + 1))  # iterations count optimizer steps
    diff = _max_diff(_weights(big), _weights(acc))
    print(f'max abs weight difference, 1x8x2 vs 1x16 after {ITERS} Adam steps: {diff:.3g}')
    assert diff < 1e-5
    small, proc = _train(str(tmp_path), datasets_dir, 'b8', 8, 1)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert _max_diff(_weights(big), _weights(small)) > 1e-4


@pytest.mark.slow
def test_two_processes_accumulate_equals_one_process_large_batch(tmp_path, datasets_dir):
    """2 gloo processes x batch 4 x accumulate 2 == 1 process x batch 16: rank r takes positions r, r+2, ... of the
    epoch order, so the 16 samples of a step are the same set."""
    big, proc = _train(str(tmp_path), datasets_dir, 'b16', 16, 1)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ddp, proc = _train(str(tmp_path), datasets_dir, 'p2b4x2', 4, 2, nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    diff = _max_diff(_weights(big), _weights(ddp))
    print(f'max abs weight difference, 2x4x2 vs 1x16 after {ITERS} Adam steps: {diff:.3g}')
    assert diff < 1e-5


def test_accumulate_needs_a_plugin_model(tmp_path, datasets_dir):
    """BasicSR's SRModel would silently train on the larger loader batch: refused before any folder is made. (Bad
    values: tests/test_fast_training.py.)"""
    work, proc = _train(str(tmp_path), datasets_dir, 'srmodel', 8, 2, model_type='SRModel')
    assert proc.returncode != 0 and 'train.accumulate needs a plugin model' in proc.stdout
    assert 'Traceback' not in proc.stdout
    assert not os.path.isdir(os.path.join(work, 'experiments', check_resume.NAME))


@pytest.mark.parametrize('accumulate, batch', [(2, 16), (None, 8), (0, 8), (1.5, 8), ('two', 8), (True, 8)])
def test_batch_check_reads_accumulate_like_the_model(accumulate, batch):
    """The batch check counts the loader batch as ``accumulate_steps`` reads it; a bad value (refused with its fix by
    the model's option check or apply_accumulate) counts as 1 instead of crashing the check."""
    from lwsr_plugin.options import OptionError
    from lwsr_plugin.options.checks import _check_batch
    opt = {'num_gpu': 0, 'train': {'accumulate': accumulate}}
    ds = {'batch_size_per_gpu': 8, 'dataset_enlarge_ratio': 1}
    _check_batch(opt, 'datasets.train', ds, batch)  # a set of exactly one batch: at least one iteration
    with pytest.raises(OptionError, match=f'a batch of {batch}'):
        _check_batch(opt, 'datasets.train', ds, batch - 1)
