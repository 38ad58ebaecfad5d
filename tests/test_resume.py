"""Exact resume (lwsr_plugin/patches/resume.py): real lwsr-train / torchrun runs killed with SIGKILL (before an
iteration, or while a checkpoint file is being written), restarted with --auto_resume, and compared tensor by tensor
and loss by loss with the uninterrupted run. scripts/check_resume.py runs the same cases 20 times each."""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'scripts'))

import check_resume  # noqa: E402

ITERS, FREQ = 12, 4


def _assert_identical(row):
    assert not row['problem'], row
    assert row['killed'], f'the first run was not killed: {row}'
    assert row['resumed_from'] > 0, f'nothing to resume from: {row}'
    assert row['log'] == 'exact', row
    assert row['tensors'] > 100 and row['different'] == 0, row
    assert row['curve_equal'], row


@pytest.mark.slow
def test_kill_and_auto_resume_is_bit_identical(tmp_path, datasets_dir):
    """0 workers: killed before iteration 7 (resumes from 4), and killed while the state of iteration 8 is half
    written (resumes from 4, the partial file never used)."""
    root = str(tmp_path)
    check_resume.reference(root, datasets_dir, ITERS, FREQ, workers=0)
    for label, kill in (('iter', '7'), ('save', 'save:4')):
        row = check_resume.run_case(root, datasets_dir, label, ITERS, FREQ, 0, kill)
        _assert_identical(row)
        assert row['resumed_from'] == 4


@pytest.mark.slow
def test_resume_with_workers_and_worker_count_does_not_change_the_data(tmp_path, datasets_dir):
    """2 DataLoader workers: a killed run resumes exactly; and because every sample is keyed by its position, the
    uninterrupted runs with 0 and with 2 workers train on the same patches and end with the same weights."""
    root = str(tmp_path)
    check_resume.reference(root, datasets_dir, ITERS, FREQ, workers=2)
    row = check_resume.run_case(root, datasets_dir, 'w2', ITERS, FREQ, 2, '11')  # epoch 1 (5 batches per epoch)
    _assert_identical(row)
    assert row['resumed_from'] == 8
    check_resume.reference(root, datasets_dir, ITERS, FREQ, workers=0)
    final = os.path.join('experiments', check_resume.NAME, 'models', f'net_g_{ITERS}.pth')
    a, b = (torch.load(os.path.join(root, ref, final), weights_only=True)['params']
            for ref in ('ref-w0-p1', 'ref-w2-p1'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchrun_two_processes_killed_rank_resumes_exactly(tmp_path, datasets_dir):
    """2-process gloo torchrun; rank 1 is killed before iteration 6, torchrun stops rank 0; --auto_resume restores
    both ranks' generators and positions and ends equal to the uninterrupted 2-process run."""
    root = str(tmp_path)
    check_resume.reference(root, datasets_dir, ITERS, FREQ, workers=0, nproc=2)
    row = check_resume.run_case(root, datasets_dir, 'ddp', ITERS, FREQ, 0, '6', nproc=2)
    _assert_identical(row)


def test_keyed_sample_seeds_and_generator_isolation():
    import random

    import numpy as np

    from lwsr_plugin.patches.resume import KeyedSamples, generator_state, sample_seed, set_generator_state

    class Draws(torch.utils.data.Dataset):

        def __len__(self):
            return 3

        def __getitem__(self, index):
            return index, random.random(), float(np.random.rand()), float(torch.rand(()))

    data = KeyedSamples(Draws(), seed=5)
    before = generator_state()
    first = data[(2, 1, 7)]
    after = generator_state()
    assert data[(2, 1, 7)] == first  # a key always gives the same draws
    assert data[(2, 1, 8)] != first and data[(2, 2, 7)] != first  # position and epoch both matter
    assert KeyedSamples(Draws(), seed=6)[(2, 1, 7)] != first
    # the caller's generators are untouched
    assert after['python'] == before['python'] and torch.equal(after['torch'], before['torch'])
    assert torch.equal(after['numpy'][1], before['numpy'][1])
    assert len({sample_seed(0, 0, p) for p in range(10000)}) == 10000
    # a state round trip through torch.save / weights_only load restores every generator
    import io
    buffer = io.BytesIO()
    torch.save(generator_state(), buffer)
    expected = random.random(), float(np.random.rand()), float(torch.rand(()))
    buffer.seek(0)
    set_generator_state(torch.load(buffer, weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_auto_resume_skips_a_state_whose_weights_are_missing_or_damaged(tmp_path, datasets_dir):
    """The newest state's network file deleted, the one before truncated: --auto_resume says so for each and resumes
    from the newest state whose weights can be read."""
    work = str(tmp_path)
    opt_path = check_resume.prepare(work, datasets_dir, check_resume.options(6, 2, 0))
    assert check_resume.train(work, opt_path).returncode == 0
    models = os.path.join(work, 'experiments', check_resume.NAME, 'models')
    os.remove(os.path.join(models, 'net_g_6.pth'))
    with open(os.path.join(models, 'net_g_4.pth'), 'r+b') as f:
        f.truncate(200)
    out = check_resume.train(work, opt_path, resume=True).stdout
    assert 'skipping training state' in out and 'net_g_6.pth, which is missing' in out, out[-3000:]
    assert 'net_g_4.pth, which cannot be read' in out
    assert 'Resuming training from epoch: 0, iter: 2.' in out
