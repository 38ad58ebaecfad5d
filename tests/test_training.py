"""Real BasicSR training loops on CPU: lwsr-train with kill + --auto_resume, resume from a path, a truncated state, and
a 2-process torchrun run over gloo (BasicSR's own train.py: test_entry_points.py)."""
import glob
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from _utils import BIN, PY, free_port, link_datasets, run, write_options

HERE = os.path.dirname(os.path.abspath(__file__))


def _states(work, name):
    return sorted(int(os.path.basename(p).split('.')[0])
                  for p in glob.glob(os.path.join(work, 'experiments', name, 'training_states', '*.state')))


def test_cpu_train_kill_and_auto_resume(tmp_path, datasets_dir):
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'train.total_iter': 40, 'logger.save_checkpoint_freq': 3,
                                                 'logger.print_freq': 1})
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not _states(work, 'tiny_imdn') and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = _states(work, 'tiny_imdn')
    assert saved, 'no checkpoint was written before the kill'
    last = max(saved)
    assert last < 40, 'the first run finished before it could be killed'
    # the training state and the weights of that iteration are both there (written before the state)
    assert os.path.isfile(os.path.join(work, 'experiments', 'tiny_imdn', 'models', f'net_g_{last}.pth'))

    out = run([os.path.join(BIN, 'lwsr-train'), '-opt', opt, '--auto_resume'], cwd=work).stdout
    assert f'Resuming training from epoch: ' in out and f'iter: {last}.' in out
    iters = [int(i) for i in re.findall(r'iter:\s+(\d+), lr', out)]
    assert iters[0] == last + 1 and iters[-1] == 40
    assert os.path.isfile(os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_latest.pth'))
    assert not glob.glob(os.path.join(work, 'experiments', 'tiny_imdn_archived_*'))  # resumed, not restarted


def test_resume_state_path_on_cpu(tmp_path, datasets_dir):
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'train.total_iter': 2, 'logger.save_checkpoint_freq': 2})
    run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work)
    state = os.path.join(work, 'experiments', 'tiny_imdn', 'training_states', '2.state')
    opt2 = write_options(tmp_path / 'opt2.yml', **{'train.total_iter': 4, 'path.resume_state': state})
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt2], cwd=work).stdout
    assert 'Resuming training from epoch: 0, iter: 2.' in out
    assert 'iter:       3, lr' in out


def test_auto_resume_skips_truncated_state(tmp_path, datasets_dir):
    """A .state cut short (e.g. written by plain BasicSR when the job was killed) is skipped, not fatal."""
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'train.total_iter': 4, 'logger.save_checkpoint_freq': 2})
    run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work)
    states = os.path.join(work, 'experiments', 'tiny_imdn', 'training_states')
    with open(os.path.join(states, '4.state'), 'r+b') as f:
        f.truncate(100)
    opt2 = write_options(tmp_path / 'opt2.yml', **{'train.total_iter': 6, 'logger.save_checkpoint_freq': 2})
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt2, '--auto_resume'], cwd=work).stdout
    assert 'skipping unreadable training state' in out and '4.state' in out
    assert 'Resuming training from epoch: 0, iter: 2.' in out


@pytest.mark.slow
def test_torchrun_two_processes_gloo_identical_weights(tmp_path, datasets_dir):
    """torchrun + --launcher pytorch on a CPU-only machine: gloo, CPU DDP, spawned workers, rank-0 validation of an
    arch with a buffer; both ranks end with the same weights."""
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(
        tmp_path / 'opt.yml', **{
            'network_g': {'type': 'IMDNWithBuffer', 'num_feat': 8, 'num_block': 1, 'upscale': 4},
            'train.total_iter': 4, 'val.val_freq': 2, 'logger.save_checkpoint_freq': 2,
            'datasets.train.num_worker_per_gpu': 1, 'datasets.train.persistent_workers': True,
        })
    cmd = [PY, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           os.path.join(HERE, 'dist_train_dump.py'), '-opt', opt, '--launcher', 'pytorch']
    out = run(cmd, cwd=work, timeout=480, env={'OMP_NUM_THREADS': '1'}).stdout
    assert 'rank 0 done, DDP=DistributedDataParallel' in out and 'rank 1 done, DDP=DistributedDataParallel' in out
    assert 'World size (gpu number): 2' in out
    assert out.count('# psnr:') >= 2  # rank-0 validation ran at iters 2 and 4 without desync
    w0 = torch.load(os.path.join(work, 'rank0_net_g.pth'), weights_only=True)
    w1 = torch.load(os.path.join(work, 'rank1_net_g.pth'), weights_only=True)
    init = torch.load(os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_2.pth'),
                      weights_only=True)['params']
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert any(not torch.equal(w0[k], init[k]) for k in init)  # they trained past iteration 2, together


def test_progress_line_with_rate_and_eta(tmp_path, datasets_dir):
    """A progress line with it/s and ETA comes at least every logger.progress_interval seconds, between BasicSR's
    print_freq lines, which carry it/s too."""
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'train.total_iter': 8, 'logger.print_freq': 4,
                                                 'logger.progress_interval': 0.001})
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work).stdout
    progress = re.findall(r'\[progress\] iter:\s+(\d+)/8 \| ([\d.]+) it/s \| eta: \d+:\d\d:\d\d l_pix: ', out)
    assert len(progress) >= 4 and all(float(rate) > 0 for _, rate in progress), out[-3000:]
    assert re.search(r'iter:\s+8, lr:.* \[[\d.]+ it/s\]', out)
