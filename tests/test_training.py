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


def _basicsr_train_py():
    import basicsr
    return os.path.join(os.path.dirname(basicsr.__file__), 'train.py')


@pytest.mark.parametrize('command, omp', [('basicsr/train.py', '1'), ('lwsr-train', None)],
                         ids=['basicsr-train-py-omp1', 'lwsr-train-default-threads'])
def test_auto_workers_fit_the_machine(tmp_path, datasets_dir, command, omp):
    """`num_worker_per_gpu: auto` on real images, through BasicSR's own train.py (handed to the plugin's entry) and
    lwsr-train: the loader gets the CPUs the training's threads leave free (0 on 2 cores with torch's default
    threads), PyTorch's warning about too many workers never comes, and the log file states the choice."""
    from lwsr_plugin.options.workers import MAX_AUTO_WORKERS, usable_cpus
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'datasets.train.num_worker_per_gpu': 'auto', 'train.total_iter': 3})
    cmd = [PY, _basicsr_train_py()] if command == 'basicsr/train.py' else [os.path.join(BIN, 'lwsr-train')]
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    if omp:
        env['OMP_NUM_THREADS'] = omp
    proc = subprocess.run(cmd + ['-opt', opt], cwd=work, env=dict(env, PYTHONUNBUFFERED='1'), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    assert 'suggested max number of worker' not in out and 'iter:       3, lr' in out
    [log] = glob.glob(os.path.join(work, 'experiments', 'tiny_imdn', 'train_tiny_imdn_*.log'))
    with open(log, encoding='utf-8') as f:
        text = f.read()
    m = re.search(r'datasets\.train\.num_worker_per_gpu: auto -> (\d+) \((\d+) CPUs usable - (\d+) intra-op threads?',
                  text)
    assert m, text[:3000]
    workers, cpus, threads = map(int, m.groups())
    assert cpus == usable_cpus() and workers == min(max(cpus - threads, 0), MAX_AUTO_WORKERS)
    if omp:
        assert threads == 1
    if cpus <= 2 and not omp:
        assert workers == 0 and 'the main process loads' in m.string[m.end():m.end() + 40]


def test_auto_workers_rule(tmp_path, datasets_dir):
    """The rule of options.workers: the process's CPUs (affinity), shared among LOCAL_WORLD_SIZE processes, minus the
    training's intra-op threads, at most MAX_AUTO_WORKERS, never below 0; GPU runs train with one intra-op thread
    unless OMP_NUM_THREADS says otherwise; BasicSR's one-process multi-GPU loader divides the number by num_gpu; and
    the option check takes `auto` or a count, refusing anything else in one line."""
    from unittest import mock

    from lwsr_plugin.options import OptionError
    from lwsr_plugin.options import workers
    assert workers.auto_workers(2, 1, 2)[0] == 0 and workers.auto_workers(2, 1, 1)[0] == 1
    assert workers.auto_workers(2, 2, 1)[0] == 0  # torchrun, 2 processes on 2 cores
    assert workers.auto_workers(32, 4, 1)[0] == 7 and workers.auto_workers(32, 1, 1)[0] == workers.MAX_AUTO_WORKERS
    assert workers.auto_workers(1, 1, 4)[0] == 0 and workers.auto_workers(12, 1, 2, loaders=2)[0] == 5
    assert workers.local_processes({'LOCAL_WORLD_SIZE': '4'}) == 4 and workers.local_processes({}) == 1

    def resolved(num_gpu, env, cpus=16, threads=6, dist=False):
        opt = {'num_gpu': num_gpu, 'dist': dist, 'datasets': {'train': {'num_worker_per_gpu': 'auto'},
                                                             'val': {'num_worker_per_gpu': 0}}}
        with mock.patch.object(workers, 'usable_cpus', return_value=cpus), \
                mock.patch('torch.get_num_threads', return_value=threads), \
                mock.patch('torch.set_num_threads') as set_threads:
            lines = workers.resolve_auto_workers(opt, env)
        return opt['datasets']['train']['num_worker_per_gpu'], lines, set_threads.call_args_list

    n, lines, set_calls = resolved(0, {})  # CPU run: the threads compute, the workers get the rest
    assert n == workers.MAX_AUTO_WORKERS and set_calls == []  # 16 - 6 = 10, capped
    assert lines == ['datasets.train.num_worker_per_gpu: auto -> 8 (16 CPUs usable - 6 intra-op threads, at most 8)']
    assert resolved(0, {'LOCAL_WORLD_SIZE': '2'})[0] == 2  # 16 / 2 - 6
    _, _, set_calls = resolved(1, {})  # GPU run: one intra-op thread, as torchrun sets
    assert [c.args for c in set_calls] == [(1, )]
    assert resolved(1, {'OMP_NUM_THREADS': '6'})[2] == []
    assert resolved(2, {}, cpus=16, threads=1)[0] == 7  # one process, 2 GPUs: (16 - 1) // 2
    assert resolved(2, {'LOCAL_WORLD_SIZE': '2'}, threads=1, dist=True)[0] == 7  # DDP: per process
    workers.check_num_workers('datasets.train', 'auto')
    workers.check_num_workers('datasets.train', 0)
    for bad in ('six', -1, 1.5, True):
        with pytest.raises(OptionError, match=r'^datasets\.train\.num_worker_per_gpu: .* Use a whole number >= 0'):
            workers.check_num_workers('datasets.train', bad)
    from lwsr_plugin.options.checks import check_options
    work = link_datasets(tmp_path, datasets_dir)
    check_options(write_options(tmp_path / 'auto.yml', **{'datasets.train.num_worker_per_gpu': 'auto'}), root=work)
    with pytest.raises(OptionError, match=r"^datasets\.train\.num_worker_per_gpu: 'all' is not a number of "):
        check_options(write_options(tmp_path / 'bad.yml', **{'datasets.train.num_worker_per_gpu': 'all'}), root=work)
