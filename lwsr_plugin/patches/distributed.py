"""Distributed training on today's stack: ``--launcher pytorch`` (torchrun, one node or many) and ``slurm`` (srun tasks),
nccl on GPUs and gloo on CPU-only machines, CPU DDP, the same options on every rank, and one training state for all.

BasicSR 1.4.2 hard-codes nccl and calls ``torch.cuda.set_device`` (dying with ZeroDivisionError on a CPU-only
machine), passes ``device_ids`` to DDP for CPU modules, and lets every rank pick its own training state under
``--auto_resume``; the functions here replace those names (see :func:`lwsr_plugin.patches.apply`).
"""
import atexit
import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist

from lwsr_plugin.options import OptionError, load_yaml, opt_path


def default_backend():
    """nccl where CUDA is usable, gloo otherwise; ``LWSR_DIST_BACKEND`` overrides."""
    env = os.environ.get('LWSR_DIST_BACKEND')
    if env:
        return env
    return 'nccl' if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 'gloo'


def init_dist(launcher, backend=None, port=None, timeout=None, **kwargs):
    """Drop-in for ``basicsr.utils.dist_util.init_dist``: ``pytorch`` (torchrun, one node or many) and ``slurm``
    (srun tasks), nccl on GPUs, gloo on CPUs. ``backend``/``port``/``timeout`` come from the option file's
    ``dist_params`` (BasicSR passes them for slurm only); ``LWSR_DIST_TIMEOUT`` (seconds) sets the timeout too.

    Once the group exists, every rank checks that all ranks run the same options (``check_same_options``) and
    resumes from the training state rank 0 picks (``load_resume_state_agreed``)."""
    import torch.multiprocessing as mp
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if dist.is_available() and dist.is_initialized():
        return None
    if launcher == 'slurm':
        slurm_environment(port)
    elif launcher == 'pytorch':
        if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
            raise RuntimeError('--launcher pytorch needs the RANK/WORLD_SIZE environment of torchrun: start the job '
                               'with `torchrun --nproc_per_node=N -m lwsr_plugin.train -opt X.yml --launcher pytorch`, '
                               'or drop --launcher for a single process.')
    else:
        raise ValueError(f'--launcher {launcher}: unknown launcher. Use pytorch (under torchrun) or slurm (srun).')
    source = 'dist_params.backend' if backend else 'LWSR_DIST_BACKEND'
    backend = backend or default_backend()
    if backend == 'nccl':
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise RuntimeError(f'{source}=nccl needs CUDA GPUs; none is visible. Use gloo on CPU.')
        # LOCAL_RANK, not RANK: on node 2 of a multi-node job RANK is past this node's GPUs; the modulo covers a
        # scheduler that shows each task only its own GPU (CUDA_VISIBLE_DEVICES of one device)
        local_rank = int(os.environ.get('LOCAL_RANK', os.environ['RANK']))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    timeout, option = (timeout, 'dist_params.timeout') if timeout else (os.environ.get('LWSR_DIST_TIMEOUT'),
                                                                           'LWSR_DIST_TIMEOUT')
    if timeout:
        try:
            kwargs['timeout'] = datetime.timedelta(seconds=float(timeout))
        except (TypeError, ValueError):
            raise SystemExit(f'lwsr_plugin: {option}: {timeout!r} is not a number of seconds. Give e.g. 1800.') \
                from None
    try:
        if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True' and \
                int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', '0')) > 0:
            kwargs.update(restart_scoped_store(kwargs.get('timeout')))
        dist.init_process_group(backend=backend, **kwargs)
    except RuntimeError as err:  # torch's DistError (store timeouts, ports) and gloo's connect failures
        raise SystemExit(_join_failure(launcher, err)) from None
    if backend == 'gloo':
        atexit.register(_destroy_gloo_group)
    check_same_options()
    import basicsr.train as train_mod
    if not hasattr(train_mod.load_resume_state, '_lwsr_agreed'):
        train_mod.load_resume_state = load_resume_state_agreed(train_mod.load_resume_state)


def model_to_device(self, net):
    """``BaseModel.model_to_device`` with CPU DDP: ``device_ids`` only for CUDA modules."""
    net = net.to(self.device)
    if self.opt['dist']:
        from torch.nn.parallel import DistributedDataParallel
        find_unused = self.opt.get('find_unused_parameters', False)
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = torch.nn.DataParallel(net)
    return net


def expand_nodelist(nodelist):
    """The host names of a SLURM node list: ``n01``, ``a,b``, ``n[01-03,07]``, ``gpu[1-2]-ib,cpu5``,
    ``r[1-2]n[01-02]``; ValueError for anything else."""
    import re
    parts = re.findall(r'(?:[^,\[\]]|\[[^\[\]]*\])+', nodelist)
    if not parts or ','.join(parts) != nodelist:  # unbalanced brackets, empty names
        raise ValueError(f'cannot read the node list {nodelist!r}')
    return [host for part in parts for host in _expand_host(part)]


def _expand_host(part):
    import re
    match = re.search(r'\[([^\]]*)\]', part)
    if match is None:
        return [part]
    values = []
    for item in match.group(1).split(','):
        low, dash, high = item.partition('-')
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f'cannot read the range [{match.group(1)}]')
        values += [f'{i:0{len(low)}d}' for i in range(int(low), int(high or low) + 1)]
    tails = _expand_host(part[match.end():])
    return [part[:match.start()] + value + tail for value in values for tail in tails]


def slurm_environment(port=None):
    """Under ``srun``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for ``init_process_group`` from
    SLURM's variables. MASTER_ADDR: kept when set (e.g. a fabric address), else the first host of the step's node
    list, read here for the usual forms (``scontrol`` is asked only for others). MASTER_PORT: ``port``
    (``dist_params.port``), else kept when set, else 20000 + job id modulo 20000, so two jobs sharing a node do not
    collide on one port."""
    import shutil
    import subprocess
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS') if k not in os.environ]
    nodelist = next((os.environ[k] for k in ('SLURM_STEP_NODELIST', 'SLURM_NODELIST', 'SLURM_JOB_NODELIST')
                     if os.environ.get(k)), None)
    if missing or (nodelist is None and 'MASTER_ADDR' not in os.environ):
        raise SystemExit(f'lwsr_plugin: --launcher slurm: {", ".join(missing) or "SLURM_NODELIST"} not set; this is '
                         'not an srun task. Start each task with `srun lwsr-train -opt X.yml --launcher slurm` '
                         '(docs/distributed.md), or use --launcher pytorch under torchrun.')
    if 'MASTER_ADDR' not in os.environ:
        try:
            os.environ['MASTER_ADDR'] = expand_nodelist(nodelist)[0]
        except ValueError as err:
            if shutil.which('scontrol') is None:
                raise SystemExit(f'lwsr_plugin: --launcher slurm: {err} and scontrol is not installed; export '
                                 'MASTER_ADDR=<host of task 0> in the job script.') from None
            out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True, text=True)
            os.environ['MASTER_ADDR'] = (out.stdout.split() or [''])[0]
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    elif 'MASTER_PORT' not in os.environ:
        job = os.environ.get('SLURM_JOB_ID', '')
        os.environ['MASTER_PORT'] = str(20000 + int(job) % 20000 if job.isdigit() else 29500)
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', os.environ['SLURM_PROCID'])


def restart_scoped_store(timeout=None):
    """``init_process_group`` arguments whose store keys are private to this restart of the worker group.

    torchrun's agent keeps one TCPStore for every restart of a group (``TORCHELASTIC_USE_AGENT_STORE``), so a
    restarted group can read the addresses the killed group published and fail to connect (gloo) or hang (nccl):
    PyTorch issue #135712, seen here with torch 2.14.1 in 4 of 5 restarts on a loaded machine. On one node every
    worker has the same ``TORCHELASTIC_RESTART_COUNT``, which then scopes the keys; across nodes it differs (an agent
    that restarts because another node failed does not count it), so there the agent's store must not be shared."""
    if os.environ.get('GROUP_WORLD_SIZE', '1') != '1':
        raise SystemExit('lwsr_plugin: torchrun --max-restarts on several nodes needs '
                         "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the environment of every node's torchrun (PyTorch "
                         "issue #135712: a restarted group reads the previous group's addresses and fails or hangs); "
                         'export it and start again.')
    store, rank, world_size = next(dist.rendezvous('env://', **({'timeout': timeout} if timeout else {})))
    prefix = f"lwsr_restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return {'store': dist.PrefixStore(prefix, store), 'rank': rank, 'world_size': world_size}


def _join_failure(launcher, err):
    """One line for a process group that could not form (``init_process_group`` raised ``err``)."""
    text = ' '.join(str(err).split())
    addr = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    who = f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}"
    if 'EADDRINUSE' in text or 'address already in use' in text:
        fix = ('port {} is taken by another program on this host; pick a free one (MASTER_PORT, --master_port, or '
               'dist_params.port)').format(os.environ.get('MASTER_PORT'))
    elif 'timed out' in text.lower() or 'timeout' in text.lower():
        fix = ('not every process arrived before the timeout (LWSR_DIST_TIMEOUT or dist_params.timeout, seconds); '
               'check that every node was started, with the same MASTER_ADDR/port, and that it can reach that port')
    else:
        fix = 'check MASTER_ADDR/MASTER_PORT and that every node can reach them'
    return f'lwsr_plugin: --launcher {launcher}: {who} could not join the process group at {addr}: {fix} ' \
           f'({type(err).__name__}: {text[:200]}).'


def _node_name():
    import socket
    node = os.environ.get('GROUP_RANK', os.environ.get('SLURM_NODEID'))
    return f'node {node} ({socket.gethostname()})' if node is not None else socket.gethostname()


def _flatten(value, prefix, out):
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f'{prefix}.{key}' if prefix else str(key), out)
    else:
        out[prefix] = repr(value)
    return out


def options_fingerprint(argv=None):
    """``(option file, {key: value})`` that every rank of a run must share: the option file as written plus the
    command-line arguments, less the option file's path (nodes may mount it elsewhere) and ``--local_rank``."""
    path, rest = opt_path(sys.argv[1:] if argv is None else argv, rest=True)
    try:
        flat = _flatten(load_yaml(path), '', {}) if path else {}
    except OptionError as err:
        flat = {'<option file>': str(err)}
    flat['<command line>'] = repr(' '.join(rest))
    return path, flat


def _destroy_gloo_group():
    """At exit, the gloo process group is destroyed while the interpreter is still whole. BasicSR's train.py ends
    without ``destroy_process_group``; gloo's worker threads may then still hold finished work whose tensors are
    released during interpreter teardown, and a rank aborted there ('terminate called without an active exception',
    SIGABRT; torchrun then reports the finished run as failed: seen once in this project's CI, after a broadcast).
    Destroying a gloo group is local to the rank (no collective), so it cannot hang on ranks that already left."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == 'gloo':
        with contextlib.suppress(Exception):  # exiting anyway: a failed teardown must not mask the exit status
            dist.destroy_process_group()


def check_same_options(argv=None):
    """Stop every rank, with one line naming the first rank that differs and how, when the ranks of the process
    group were not started with the same options (e.g. nodes holding different copies of the option file): they
    would otherwise train different models, or hang in mismatched collectives."""
    world = dist.get_world_size()
    if world == 1:
        return
    path, flat = options_fingerprint(argv)
    gathered = [None] * world
    dist.all_gather_object(gathered, (_node_name(), path, flat))
    node0, path0, flat0 = gathered[0]
    differing = [r for r, (_, _, f) in enumerate(gathered) if f != flat0]
    if not differing:
        return
    rank = differing[0]
    node, path_r, flat_r = gathered[rank]
    keys = [k for k in list(flat0) + [k for k in flat_r if k not in flat0] if flat0.get(k) != flat_r.get(k)]
    what = ', '.join(f'{k} ({flat_r.get(k, "absent")} vs {flat0.get(k, "absent")})' for k in keys[:3])
    more = f' and {len(keys) - 3} more keys' if len(keys) > 3 else ''
    others = f' ({len(differing) - 1} more ranks differ too)' if len(differing) > 1 else ''
    message = (f'lwsr_plugin: the ranks were started with different options: rank {rank} on {node}, -opt {path_r}, '
               f'differs from rank 0 on {node0}, -opt {path0}, in {what}{more}{others}. Start every node with the '
               'same option file and arguments.')
    dist.destroy_process_group()
    raise SystemExit(message if os.environ.get('LOCAL_RANK', '0') == '0' else 1)


def load_resume_state_agreed(load):
    """``load`` (``load_resume_state`` as installed) with rank 0's choice of training state loaded by every rank.

    With --auto_resume every rank would scan ``training_states/`` itself; ranks that see different files (a network
    file system that shows a new file to one node first, or a folder that is not shared) would resume from different
    iterations and hang in mismatched collectives. Rank 0 picks; the others load that very file, and a rank that
    cannot read it stops the group with the fix (experiments/ on shared storage)."""

    def load_resume_state(opt):
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return load(opt)
        rank = dist.get_rank()
        choice = [None, '']
        if rank == 0:
            try:
                state = load(opt)
            except BaseException as err:  # the others wait in the broadcast below: tell them before failing
                choice[1] = f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'
                dist.broadcast_object_list(choice, src=0)
                raise
            choice[0] = opt['path'].get('resume_state') if state is not None else None
        dist.broadcast_object_list(choice, src=0)
        path, failure = choice
        if failure:
            raise SystemExit(f'lwsr_plugin: rank {rank} stops: rank 0 could not load its training state ({failure}).')
        error = ''
        if rank != 0:
            state = None
            if path is not None:
                auto = opt['auto_resume']
                opt['auto_resume'], opt['path']['resume_state'] = False, path
                try:
                    state = load(opt)
                except Exception as err:
                    error = f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'
                finally:
                    opt['auto_resume'] = auto
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, (_node_name(), error))
        failed = [(r, node, e) for r, (node, e) in enumerate(errors) if e]
        if failed:
            r, node, e = failed[0]
            raise SystemExit(f'lwsr_plugin: rank {r} on {node} cannot read {path}, the training state rank 0 resumes '
                             f'from ({e[:200]}). Put experiments/ (path.root or LWSR_ROOT) on storage that every node '
                             'mounts at the same path.')
        return state

    load_resume_state._lwsr_agreed = True
    load_resume_state.__wrapped__ = load
    return load_resume_state
