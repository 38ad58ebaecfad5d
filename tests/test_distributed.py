"""Training beyond one process group on one machine, simulated on CPU/gloo loopback: two torchrun "nodes", SLURM
tasks (srun's environment set by the test), elastic restarts after a SIGKILL, rank 0's choice of training state, and
the bad input of a multi-node start (a node that never comes, a port in use, different option files per node).

Run by torchrun as a script (``__main__`` below), this file is also the worker of the resume-agreement check."""
import glob
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from _utils import PY, free_port, link_datasets, write_options

HERE = os.path.dirname(os.path.abspath(__file__))
DUMP = os.path.join(HERE, 'dist_train_dump.py')
ENV = {'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}


def _torchrun(*args):
    return [PY, '-m', 'torch.distributed.run', *map(str, args)]


def _start(cmd, cwd, env=None, log='out.txt'):
    """A background process writing its output to ``cwd/log`` (a file: two nodes' pipes would need draining)."""
    full = dict(os.environ, **ENV, **(env or {}))
    out = open(os.path.join(cwd, log), 'w')
    # its own process group: on a timeout torchrun's workers go with it, not left training in the background
    return subprocess.Popen(cmd, cwd=cwd, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True), out


def _finish(procs, timeout):
    """Wait for every process (killing each one's process group on timeout); their exit codes."""
    deadline = time.time() + timeout
    try:
        return [proc.wait(timeout=max(1, deadline - time.time())) for proc, _ in procs]
    finally:
        for proc, out in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.close()


def _run(cmd, cwd, timeout, env=None, check=True, log='run.txt'):
    """(exit code, output) of one command run to its end."""
    (code, ) = _finish([_start(cmd, cwd, env, log)], timeout)
    out = _read(os.path.join(cwd, log))
    assert code == 0 or not check, f'{cmd} exited {code}:\n{out[-6000:]}'
    return code, out


def _read(path):
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read()


def _weights(pattern):
    import torch
    return {os.path.basename(p).split('_')[0]: torch.load(p, weights_only=True) for p in sorted(glob.glob(pattern))}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _nodes(tmp_path, datasets_dir, names, **updates):
    dirs = []
    for name in names:
        work = link_datasets(tmp_path / name, datasets_dir)
        write_options(tmp_path / name / 'opt.yml', **updates)
        dirs.append(str(work))
    return dirs


# ------------------------------------------------------------------------------------------- multi-node torchrun
@pytest.mark.slow
def test_two_nodes_of_two_processes_equal_one_node_of_four(tmp_path, datasets_dir):
    """Two torchrun invocations (--nnodes=2, node_rank 0/1, c10d rendezvous on 127.0.0.1), each in its own working
    directory like two machines without shared storage: the 4 ranks end with identical weights, equal to one node
    of 4 processes with the same seed and global batch; only global rank 0 writes experiments/ and tb_logger/;
    rank-0 validation mid-run (an arch with a buffer) does not desync the other node."""
    updates = {'network_g': {'type': 'IMDNWithBuffer', 'num_feat': 8, 'num_block': 1, 'upscale': 4},
               'train.total_iter': 4, 'val.val_freq': 2, 'logger.save_checkpoint_freq': 2}
    node0, node1, single = _nodes(tmp_path, datasets_dir, ['node0', 'node1', 'single'], **updates)
    port = free_port()
    procs = [_start(_torchrun('--nnodes=2', f'--node_rank={r}', '--nproc_per_node=2', '--rdzv_backend=c10d',
                              f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv-conf', 'join_timeout=240', DUMP,
                              '-opt', 'opt.yml', '--launcher', 'pytorch'), cwd)
             for r, cwd in enumerate((node0, node1))]
    codes = _finish(procs, timeout=480)
    outs = [_read(os.path.join(d, 'out.txt')) for d in (node0, node1)]
    assert codes == [0, 0], '\n'.join(o[-4000:] for o in outs)
    _run(_torchrun('--nnodes=1', '--nproc_per_node=4', '--rdzv_backend=c10d',
                   f'--rdzv_endpoint=127.0.0.1:{free_port()}', DUMP, '-opt', 'opt.yml', '--launcher', 'pytorch'),
         single, timeout=480)

    two = dict(_weights(os.path.join(node0, 'rank*_net_g.pth')), **_weights(os.path.join(node1, 'rank*_net_g.pth')))
    one = _weights(os.path.join(single, 'rank*_net_g.pth'))
    assert sorted(two) == sorted(one) == ['rank0', 'rank1', 'rank2', 'rank3']
    diffs = {rank: _max_diff(w, one['rank0']) for rank, w in two.items()}
    print(f'2 nodes x 2 vs 1 node x 4: max abs diff per rank {diffs}')
    assert all(d == 0 for d in diffs.values()), diffs
    assert all(_max_diff(w, one['rank0']) == 0 for w in one.values())

    home = node0 if os.path.isfile(os.path.join(node0, 'rank0_net_g.pth')) else node1
    other = node1 if home == node0 else node0
    import torch
    init = torch.load(os.path.join(home, 'experiments', 'tiny_imdn', 'models', 'net_g_2.pth'),
                      weights_only=True)['params']
    assert _max_diff(init, one['rank0']) > 0  # trained past the mid-run validation, together
    assert os.listdir(os.path.join(home, 'tb_logger', 'tiny_imdn'))
    assert not any(os.path.exists(os.path.join(other, d)) for d in ('experiments', 'tb_logger'))
    home_out = _read(os.path.join(home, 'out.txt'))
    assert 'World size (gpu number): 4' in home_out and home_out.count('# psnr:') >= 2


# ------------------------------------------------------------------------------------------------------ SLURM
@pytest.mark.parametrize('nodelist, hosts', [
    ('n01', ['n01']),
    ('a,b', ['a', 'b']),
    ('gpu[07-09,12]', ['gpu07', 'gpu08', 'gpu09', 'gpu12']),
    ('gpu[1-2]-ib,cpu5', ['gpu1-ib', 'gpu2-ib', 'cpu5']),
    ('r[1-2]n[01-02]', ['r1n01', 'r1n02', 'r2n01', 'r2n02']),
    ('node[8-10]', ['node8', 'node9', 'node10']),
])
def test_slurm_nodelist_forms(nodelist, hosts):
    from lwsr_plugin.patches.distributed import expand_nodelist
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize('nodelist', ['n[01-02', 'a,,b', 'n[a-c]', ''])
def test_slurm_nodelist_unreadable(nodelist):
    from lwsr_plugin.patches.distributed import expand_nodelist
    with pytest.raises(ValueError):
        expand_nodelist(nodelist)


def _slurm_env(monkeypatch, **values):
    """Only ``values`` set; every variable ``slurm_environment`` writes is restored after the test (monkeypatch
    tracks a variable once it has set it, so absent ones are set before being removed)."""
    written = ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')
    for key in [k for k in os.environ if k.startswith('SLURM_')] + list(written):
        monkeypatch.setenv(key, '')
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_slurm_environment_from_srun_variables(monkeypatch):
    from lwsr_plugin.patches.distributed import slurm_environment
    _slurm_env(monkeypatch, SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_LOCALID='1', SLURM_NODELIST='gpu[07-10]',
               SLURM_JOB_ID='123456')
    slurm_environment()
    assert [os.environ[k] for k in ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')] == \
        ['gpu07', '23456', '5', '8', '1']
    _slurm_env(monkeypatch, SLURM_PROCID='0', SLURM_NTASKS='2', SLURM_NODELIST='gpu07', MASTER_ADDR='10.0.0.7',
               MASTER_PORT='30000')
    slurm_environment(port=31000)  # dist_params.port wins over MASTER_PORT, a preset MASTER_ADDR is kept
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'], os.environ['LOCAL_RANK']) == \
        ('10.0.0.7', '31000', '0')


def test_slurm_environment_asks_scontrol_only_for_other_forms(monkeypatch, tmp_path):
    from lwsr_plugin.patches.distributed import slurm_environment
    fake = tmp_path / 'scontrol'
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/asked"\necho hostA\necho hostB\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    _slurm_env(monkeypatch, SLURM_PROCID='1', SLURM_NTASKS='2', SLURM_NODELIST='odd[1-2')
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    slurm_environment()
    assert os.environ['MASTER_ADDR'] == 'hostA' and (tmp_path / 'asked').read_text().split() == \
        ['show', 'hostnames', 'odd[1-2']
    monkeypatch.setenv('PATH', '/nonexistent')
    _slurm_env(monkeypatch, SLURM_PROCID='1', SLURM_NTASKS='2', SLURM_NODELIST='odd[1-2')
    with pytest.raises(SystemExit, match='scontrol is not installed; export MASTER_ADDR'):
        slurm_environment()
    _slurm_env(monkeypatch, SLURM_NTASKS='2')
    with pytest.raises(SystemExit, match=r'--launcher slurm: SLURM_PROCID not set; this is not an srun task'):
        slurm_environment()


def _slurm_task(procid, ntasks, cwd, extra=None, log=None):
    env = {'SLURM_PROCID': str(procid), 'SLURM_NTASKS': str(ntasks), 'SLURM_LOCALID': str(procid),
           'SLURM_NODEID': '0', 'SLURM_NODELIST': 'localhost', 'SLURM_JOB_ID': '4242', **(extra or {})}
    return _start([PY, '-m', 'lwsr_plugin.train', '-opt', 'opt.yml', '--launcher', 'slurm'], cwd, env=env,
                  log=log or f'task{procid}.txt')


@pytest.mark.slow
def test_slurm_job_of_two_tasks_trains(tmp_path, datasets_dir):
    """Two processes with the environment srun gives its tasks (no scontrol on this machine): --launcher slurm forms
    a gloo group from SLURM_*, with dist_params from the option file as BasicSR passes them."""
    port = free_port()
    (work, ) = _nodes(tmp_path, datasets_dir, ['job'], **{'train.total_iter': 3, 'logger.save_checkpoint_freq': 3,
                                                         'dist_params': {'backend': 'gloo', 'port': port}})
    codes = _finish([_slurm_task(i, 2, work) for i in range(2)], timeout=300)
    outs = [_read(os.path.join(work, f'task{i}.txt')) for i in range(2)]
    assert codes == [0, 0], '\n'.join(o[-4000:] for o in outs)
    assert 'World size (gpu number): 2' in outs[0] and re.search(r'iter:\s+3, lr', outs[0])
    assert os.path.isfile(os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_latest.pth'))


# ---------------------------------------------------------------------------------------------------- elastic
@pytest.mark.slow
def test_elastic_restart_after_sigkill_equals_resumed_and_uninterrupted_runs(tmp_path, datasets_dir):
    """torchrun --max-restarts=1 --auto_resume: rank 1 is SIGKILLed when iteration 6 starts (the state of
    iteration 4 is complete by then); torchrun restarts the group, which resumes from 4.state and reaches total_iter.
    Once on one node with torchrun's shared store (scoped per restart by the plugin), once on two nodes with the
    unshared store the plugin asks for there. The weights equal a run resumed from a copy of that state without a
    kill, and a run never stopped."""
    opts = {'train.total_iter': 12, 'logger.save_checkpoint_freq': 4, 'logger.use_tb_logger': False}
    killed, two_nodes, resumed, straight = _nodes(tmp_path, datasets_dir,
                                                  ['killed', 'two_nodes', 'resumed', 'straight'], **opts)
    kill = {'LWSR_TEST_KILL_RANK': '1', 'LWSR_TEST_KILL_ITER': '6'}
    args = [DUMP, '-opt', 'opt.yml', '--launcher', 'pytorch', '--auto_resume']

    def torchrun(cwd, *extra, env=None):
        return _run(_torchrun('--nproc_per_node=2', *extra, '--rdzv_backend=c10d',
                              f'--rdzv_endpoint=127.0.0.1:{free_port()}', *args), cwd, timeout=480, env=env)[1]

    out = torchrun(killed, '--max-restarts=1', env=dict(kill, TORCH_DISABLE_SHARE_RDZV_TCP_STORE='0'))
    assert 'rank 1: SIGKILL at iteration 6' in out and 'exitcode: -9' in out, out[-4000:]
    assert 'Resuming training from epoch: 0, iter: 4.' in out, out[-4000:]
    assert re.search(r'iter:\s+12, lr', out) and 'rank 0 done' in out and 'rank 1 done' in out

    port = free_port()  # two agents, one folder (storage both nodes share)
    procs = [_start(_torchrun('--nnodes=2', f'--node_rank={r}', '--nproc_per_node=1', '--max-restarts=1',
                              '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{port}', *args), two_nodes,
                    env=dict(kill, TORCH_DISABLE_SHARE_RDZV_TCP_STORE='1'), log=f'node{r}.txt') for r in (0, 1)]
    codes = _finish(procs, timeout=480)
    outs = ''.join(_read(os.path.join(two_nodes, f'node{r}.txt')) for r in (0, 1))
    assert codes == [0, 0] and 'rank 1: SIGKILL at iteration 6' in outs, outs[-4000:]
    assert 'Resuming training from epoch: 0, iter: 4.' in outs, outs[-4000:]

    states = os.path.join('experiments', 'tiny_imdn')
    for sub in ('models/net_g_4.pth', 'training_states/4.state'):
        os.makedirs(os.path.dirname(os.path.join(resumed, states, sub)), exist_ok=True)
        shutil.copy(os.path.join(killed, states, sub), os.path.join(resumed, states, sub))
    assert 'iter: 4.' in torchrun(resumed)
    torchrun(straight)

    final = {name: _weights(os.path.join(d, 'rank*_net_g.pth')) for name, d in
             (('killed', killed), ('two_nodes', two_nodes), ('resumed', resumed), ('straight', straight))}
    diffs = {f'{name} {rank}': _max_diff(w, final['resumed']['rank0'])
             for name, ranks in final.items() for rank, w in ranks.items()}
    print(f'elastic restarts vs the run resumed from 4.state without a kill: max abs diff {diffs}')
    assert len(diffs) == 8 and all(d == 0 for d in diffs.values()), diffs


def _agreement_worker(root):
    """Each rank in its own folder ``root/rank<r>`` (``path.root`` relative, as a node without shared storage sees
    it): the states it finds differ from rank 0's; it must resume from rank 0's choice or stop with the fix."""
    rank = os.environ['RANK']
    os.chdir(os.path.join(root, f'rank{rank}'))
    import basicsr.train

    from lwsr_plugin.patches import distributed
    distributed.init_dist('pytorch')
    opt = {'name': 'agree', 'auto_resume': True, 'root_path': '.', 'num_gpu': 0, 'path': {},
           'train': {'total_iter': 100}}
    try:
        state = basicsr.train.load_resume_state(opt)
    except SystemExit as err:
        print(f'rank {rank} stopped: {err}', flush=True)
        raise
    print(f'rank {rank} resumes iter {state and state["iter"]} from {opt["path"].get("resume_state")}', flush=True)


def _fake_states(folder, iters):
    import torch
    os.makedirs(os.path.join(folder, 'experiments', 'agree', 'training_states'))
    for i in iters:
        torch.save({'iter': i, 'epoch': 0, 'optimizers': [], 'schedulers': []},
                   os.path.join(folder, 'experiments', 'agree', 'training_states', f'{i}.state'))


@pytest.mark.slow
def test_every_rank_resumes_from_rank0_choice(tmp_path):
    """Ranks that see different training states (a file system that shows new files to one node first, or no shared
    folder): rank 1 loads rank 0's choice, not its own newest; a rank that cannot read rank 0's choice stops the
    group with the fix instead of resuming elsewhere and hanging in mismatched collectives."""
    def workers(root, check):
        return _run(_torchrun('--nproc_per_node=2', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{free_port()}',
                              os.path.abspath(__file__), root), root, timeout=240, check=check)

    _fake_states(tmp_path / 'lag' / 'rank0', [2])
    _fake_states(tmp_path / 'lag' / 'rank1', [2, 4])
    out = workers(str(tmp_path / 'lag'), check=True)[1]
    for rank in (0, 1):
        assert f'rank {rank} resumes iter 2 from ./experiments/agree/training_states/2.state' in out, out[-3000:]

    _fake_states(tmp_path / 'apart' / 'rank0', [2, 4])
    _fake_states(tmp_path / 'apart' / 'rank1', [2])
    code, out = workers(str(tmp_path / 'apart'), check=False)
    assert code != 0
    assert re.search(r'rank 1 on .+ cannot read \./experiments/agree/training_states/4\.state, the training state '
                     r'rank 0 resumes from \(.*\)\. Put experiments/ \(path\.root or LWSR_ROOT\) on storage',
                     out), out[-4000:]


EXIT_SCRIPT = r'''
import atexit, os, torch.distributed as dist
# registered before init_dist, so it runs after the plugin's exit handler (atexit runs handlers last in, first out)
atexit.register(lambda: print(f"rank {os.environ['RANK']} group alive at exit: {dist.is_initialized()}", flush=True))
from lwsr_plugin.patches import distributed
distributed.init_dist("pytorch")
box = [os.environ["RANK"]]
dist.broadcast_object_list(box, src=0)  # a collective, then the script ends as BasicSR's train.py does
print(f"rank {os.environ['RANK']} got {box[0]}", flush=True)
'''


def test_gloo_group_is_destroyed_at_exit(tmp_path):
    """A script that ends without destroy_process_group (BasicSR's train.py) leaves the gloo group to the plugin's
    exit handler, which destroys it before interpreter teardown (where a rank once aborted with 'terminate called
    without an active exception' and failed a finished run)."""
    script = tmp_path / 'exit_check.py'
    script.write_text(EXIT_SCRIPT)
    _, out = _run(_torchrun('--nproc_per_node=2', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{free_port()}',
                            script), str(tmp_path), timeout=240)
    for rank in (0, 1):
        assert f'rank {rank} got 0' in out and f'rank {rank} group alive at exit: False' in out, out[-3000:]


# -------------------------------------------------------------------------------------------------- bad input
def test_node_that_never_arrives_ends_at_the_rendezvous_timeout(tmp_path, datasets_dir):
    """--nnodes=2 with one node started: torchrun gives up after --rdzv-conf join_timeout (no worker starts)."""
    (work, ) = _nodes(tmp_path, datasets_dir, ['node0'])
    cmd = _torchrun('--nnodes=2', '--node_rank=0', '--nproc_per_node=1', '--rdzv_backend=c10d',
                    f'--rdzv_endpoint=127.0.0.1:{free_port()}', '--rdzv-conf', 'join_timeout=5', '-m',
                    'lwsr_plugin.train', '-opt', 'opt.yml', '--launcher', 'pytorch')
    code, out = _run(cmd, work, timeout=180, check=False)
    assert code != 0 and 'RendezvousTimeoutError' in out, out[-3000:]
    assert not os.path.exists(os.path.join(work, 'experiments'))


def _lines(text, needle):
    return [line for line in text.splitlines() if needle in line]


@pytest.mark.slow
def test_task_that_never_arrives_and_port_in_use_give_one_line(tmp_path, datasets_dir):
    """The plugin's own rendezvous (srun tasks): task 0 of 2 alone stops after LWSR_DIST_TIMEOUT with one line; a
    MASTER_PORT held by another program is named at once; torchrun's --master_port in use fails at once too."""
    (work, ) = _nodes(tmp_path, datasets_dir, ['job'])
    alone = _slurm_task(0, 2, work, {'MASTER_PORT': str(free_port()), 'LWSR_DIST_TIMEOUT': '5'})
    with socket.socket() as busy:
        busy.bind(('0.0.0.0', 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = _slurm_task(0, 1, work, {'MASTER_PORT': str(port)}, log='taken.txt')
        static = _start(_torchrun('--nproc_per_node=1', f'--master_port={port}', '-m', 'lwsr_plugin.train', '-opt',
                                  'opt.yml', '--launcher', 'pytorch'), work, log='static.txt')
        codes = _finish([alone, taken, static], timeout=180)
    assert codes[0] != 0 and codes[1] != 0 and codes[2] != 0
    alone_out, taken_out = _read(os.path.join(work, 'task0.txt')), _read(os.path.join(work, 'taken.txt'))
    assert len(_lines(alone_out, 'lwsr_plugin: --launcher slurm: rank 0 of 2 could not join')) == 1, alone_out[-3000:]
    assert 'not every process arrived before the timeout (LWSR_DIST_TIMEOUT' in alone_out
    assert len(_lines(taken_out, f'port {port} is taken by another program on this host; pick a free one')) == 1, \
        taken_out[-3000:]
    assert 'EADDRINUSE' in _read(os.path.join(work, 'static.txt'))
    assert not os.path.exists(os.path.join(work, 'experiments'))


@pytest.mark.slow
def test_different_option_files_on_two_nodes_stop_every_rank(tmp_path, datasets_dir):
    """Two nodes whose copies of opt.yml differ in total_iter: every rank stops right after the group forms, before
    anything is written, naming the rank, its node and the key."""
    node0, node1 = _nodes(tmp_path, datasets_dir, ['node0', 'node1'])
    write_options(os.path.join(node1, 'opt.yml'), **{'train.total_iter': 7})
    port = free_port()
    procs = [_start(_torchrun('--nnodes=2', f'--node_rank={r}', '--nproc_per_node=1', '--rdzv_backend=c10d',
                              f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv-conf', 'join_timeout=120', '-m',
                              'lwsr_plugin.train', '-opt', 'opt.yml', '--launcher', 'pytorch'), cwd)
             for r, cwd in enumerate((node0, node1))]
    codes = _finish(procs, timeout=300)
    outs = [_read(os.path.join(d, 'out.txt')) for d in (node0, node1)]
    assert codes[0] != 0 and codes[1] != 0, outs
    for out in outs:
        lines = _lines(out, 'lwsr_plugin: the ranks were started with different options: rank 1 on node ')
        assert len(lines) == 1, out[-3000:]
        expected = (r', -opt opt\.yml, differs from rank 0 on node \d \(.*\), -opt opt\.yml, in train\.total_iter '
                    r'\((7 vs 6|6 vs 7)\)\. Start every node with the same option file and arguments\.$')
        assert re.search(expected, lines[0]), lines[0]
    assert not any(os.path.exists(os.path.join(d, 'experiments')) for d in (node0, node1))


@pytest.mark.slow
def test_restarts_across_nodes_without_unshared_store_stop_with_the_fix(tmp_path, datasets_dir):
    """--max-restarts on two nodes with torchrun's shared agent store (PyTorch #135712): one line naming the variable
    that makes restarts safe, on every node, before anything is written."""
    node0, node1 = _nodes(tmp_path, datasets_dir, ['node0', 'node1'])
    port = free_port()
    procs = [_start(_torchrun('--nnodes=2', f'--node_rank={r}', '--nproc_per_node=1', '--max-restarts=1',
                              '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv-conf',
                              'join_timeout=120', '-m', 'lwsr_plugin.train', '-opt', 'opt.yml', '--launcher',
                              'pytorch'), cwd, env={'TORCH_DISABLE_SHARE_RDZV_TCP_STORE': '0'})
             for r, cwd in enumerate((node0, node1))]
    codes = _finish(procs, timeout=300)
    outs = [_read(os.path.join(d, 'out.txt')) for d in (node0, node1)]
    assert codes[0] != 0 and codes[1] != 0, outs
    for out in outs:
        assert 'lwsr_plugin: torchrun --max-restarts on several nodes needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in ' \
            "the environment of every node's torchrun" in out, out[-3000:]
    assert not any(os.path.exists(os.path.join(d, 'experiments')) for d in (node0, node1))


def test_options_fingerprint_ignores_file_location_and_local_rank(tmp_path):
    from lwsr_plugin.patches.distributed import options_fingerprint
    a = write_options(tmp_path / 'a.yml')
    os.makedirs(tmp_path / 'elsewhere')
    b = write_options(tmp_path / 'elsewhere' / 'a.yml')
    assert options_fingerprint(['-opt', a, '--launcher', 'pytorch', '--local_rank', '0'])[1] == \
        options_fingerprint(['-opt', b, '--launcher', 'pytorch', '--local-rank=3'])[1]
    assert options_fingerprint(['-opt', a, '--auto_resume'])[1] != options_fingerprint(['-opt', b])[1]
    forced = options_fingerprint(['-opt', a, '--force_yml', 'train:total_iter=9'])[1]
    assert forced['<command line>'] == repr('--force_yml train:total_iter=9')



# ------------------------------------------------------------------------------------------- tiny training sets
# stands in for whatever writes at exit (a process group's teardown, a logger, progress bars, shutdown warnings)
EXIT_NOISE = "import atexit, sys\natexit.register(lambda: print('teardown noise', file=sys.stderr, flush=True))\n"


def _one_pair_job(tmp_path, datasets_dir, batch, *torchrun_args, **updates):
    """(exit code, output) of ``torchrun --nproc_per_node=2`` training on one Set5 pair (a meta_info file listing
    baby.png) with ``batch_size_per_gpu: batch`` for 3 iterations."""
    work = str(link_datasets(tmp_path, datasets_dir))
    (tmp_path / 'one.txt').write_text('baby.png\n')
    write_options(tmp_path / 'opt.yml', **{'datasets.train.meta_info_file': 'one.txt', 'train.total_iter': 3,
                                            'datasets.train.batch_size_per_gpu': batch,
                                            'datasets.train.dataset_enlarge_ratio': 1}, **updates)
    return work, _run(_torchrun('--nproc_per_node=2', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{free_port()}',
                                *torchrun_args, '-m', 'lwsr_plugin.train', '-opt', 'opt.yml', '--launcher', 'pytorch'),
                      work, timeout=240, check=False)



@pytest.mark.parametrize('argv, env, num_gpu, pairs, batch, expected', [
    (['--launcher', 'pytorch'], {'WORLD_SIZE': '2', 'RANK': '0'}, 2, 1, 1, 'warning'),  # DDP: no num_gpu multiplier
    (['--launcher', 'pytorch'], {'WORLD_SIZE': '2', 'RANK': '1'}, 0, 1, 1, None),  # the warning is rank 0's
    (['--launcher=slurm'], {'SLURM_NTASKS': '3', 'SLURM_PROCID': '0'}, 0, 2, 2, '3 processes x a batch of 2 need 6'),
    ([], {'WORLD_SIZE': '2', 'RANK': '0'}, 0, 1, 1, None),  # torchrun without --launcher: independent runs
    ([], {}, 2, 1, 1, 'a batch of 2 (2 GPUs, num_gpu) is larger than the training set'),  # one DataParallel process
])
def test_batch_check_counts_each_process_share(monkeypatch, capsys, argv, env, num_gpu, pairs, batch, expected):
    from lwsr_plugin.options import OptionError
    from lwsr_plugin.options.checks import _check_batch
    for key in ('WORLD_SIZE', 'RANK', 'SLURM_NTASKS', 'SLURM_PROCID'):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, 'argv', ['lwsr-train', '-opt', 'x.yml', *argv])
    ds = {'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 1}
    if expected and expected != 'warning':
        with pytest.raises(OptionError, match=re.escape(expected)):
            _check_batch({'num_gpu': num_gpu}, 'datasets.train', ds, pairs)
        return
    _check_batch({'num_gpu': num_gpu}, 'datasets.train', ds, pairs)
    assert ('so ranks see repeated samples' in capsys.readouterr().err) == (expected == 'warning')


def test_one_pair_on_two_ranks_trains_with_a_warning(tmp_path, datasets_dir):
    """BasicSR's EnlargedSampler pads each of 2 ranks to ceil(1 / 2) = 1 sample, one batch of 1: the run trains to
    total_iter as BasicSR's own would, after one warning (rank 0) that the ranks see repeated samples."""
    work, (code, out) = _one_pair_job(tmp_path, datasets_dir, 1)
    assert code == 0, out[-6000:]
    warning = _lines(out, 'lwsr_plugin: warning: datasets.train: 2 processes x a batch of 1 draw 2 samples per step')
    assert len(warning) == 1 and 'so ranks see repeated samples' in warning[0], out[-6000:]
    assert 'iter:       3,' in out
    assert os.path.isfile(os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_latest.pth'))


def test_batch_no_rank_can_fill_is_refused_as_each_ranks_last_line(tmp_path, datasets_dir):
    """One pair, batch_size_per_gpu 2, 2 ranks: each rank's padded share (1 sample) is less than a batch, which
    BasicSR's loader drops, so no batch would ever be drawn: refused on every rank, naming processes x batch and the
    fix. The line is each rank's last (what writes at exit is quieted) and comes before torchrun's ChildFailedError."""
    (tmp_path / 'exit_noise.py').write_text(EXIT_NOISE)
    work, (code, out) = _one_pair_job(tmp_path, datasets_dir, 2, '--log-dir', str(tmp_path / 'logs'), '--tee', '3',
                                      user_modules=['exit_noise.py'])
    line = ('lwsr_plugin: error in opt.yml: datasets.train.batch_size_per_gpu: 2 processes x a batch of 2 need 4 '
            'samples, but each process draws only ceil(1 pairs x dataset_enlarge_ratio 1 / 2) = 1 per epoch')
    assert code != 0 and line in out and out.index(line) < out.index('ChildFailedError'), out[-6000:]
    assert 'Use batch_size_per_gpu: 1 (or less) or dataset_enlarge_ratio: 3 (or more), or start fewer processes.' in out
    assert 'teardown noise' not in out
    logs = glob.glob(str(tmp_path / 'logs' / '*' / 'attempt_0' / '*' / 'stderr.log'))
    assert len(logs) == 2
    # torchrun stops the other rank once one has failed: that rank may end before writing anything
    last = [_read(p).splitlines()[-1] for p in logs if _read(p).strip()]
    assert last and all(text.startswith(line) for text in last), [_read(p) for p in logs]
    assert not os.path.exists(os.path.join(work, 'experiments'))


if __name__ == '__main__':
    _agreement_worker(sys.argv[1])
