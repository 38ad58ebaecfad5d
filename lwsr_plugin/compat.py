"""Everything BasicSR 1.4.2 needs to run on today's stack, in one place.

1. ``torchvision.transforms.functional_tensor`` alias (via the start-up finder), so ``import basicsr`` works on
   torchvision >= 0.17.
2. CPU distributed training: ``--launcher pytorch`` picks gloo when CUDA is absent (BasicSR hard-codes nccl and calls
   ``torch.cuda.set_device``, dying with ZeroDivisionError), and DDP wraps CPU modules without ``device_ids``.
3. Resume on CPU: BasicSR's ``load_resume_state`` maps the state to ``torch.cuda.current_device()``.
4. Validation under DDP runs on rank 0 only; forwarding through the DDP wrapper there would broadcast buffers from
   rank 0 alone and desync the ranks, so validation forwards the bare network.
5. BasicSR's own ``train.py``/``test.py`` run as scripts are ``__main__``, whose functions no patch reaches, and they
   write into site-packages when BasicSR is installed: their first call, ``parse_options``, hands the run to
   ``lwsr_plugin.entry`` (the same run as ``lwsr-train``/``lwsr-test``) and exits with its status.
6. Progress: a training log line with it/s and ETA at least every ``logger.progress_interval`` seconds (default 10),
   not only every ``print_freq`` iterations; ``lwsr-test`` shows BasicSR's per-set progress bar (``val.pbar``).
7. Exact resume, the keyed data stream and ``train.accumulate``'s loader batch: :mod:`lwsr_plugin.training_state`,
   installed from here.

Nothing here edits BasicSR's files; every patch replaces a name at the place BasicSR looks it up, once.
"""
import atexit
import contextlib
import datetime
import os
import sys
import time

import _lwsr_plugin_startup

_lwsr_plugin_startup.install()  # the alias is needed even when the automatic hook is switched off

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import basicsr  # noqa: E402,F401  (works now)
from basicsr.models import base_model as _base_model  # noqa: E402
from basicsr.utils import dist_util as _dist_util  # noqa: E402
from basicsr.utils import logger as _logger  # noqa: E402
from basicsr.utils import options as _options  # noqa: E402

_PATCHED = '_lwsr_plugin_patched'


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
    import argparse

    from lwsr_plugin.options import OptionError, load_yaml
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    parser.add_argument('--local_rank', '--local-rank')
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        flat = _flatten(load_yaml(known.opt), '', {}) if known.opt else {}
    except OptionError as err:
        flat = {'<option file>': str(err)}
    flat['<command line>'] = repr(' '.join(rest))
    return known.opt, flat


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


def _check_device(self):
    if self.opt.get('num_gpu', 0) != 0 and not torch.cuda.is_available():
        raise RuntimeError(f"num_gpu is {self.opt['num_gpu']} but no CUDA GPU is visible. Set `num_gpu: 0` (CPU) or "
                           '`num_gpu: auto` in the option file.')


def _wrap_base_init(original):

    def __init__(self, opt):
        original(self, opt)
        _check_device(self)

    __init__.__wrapped__ = original
    return __init__


def all_finite(net):
    """True when every floating-point parameter and buffer of ``net`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in list(net.parameters()) + list(net.buffers())
               if t.is_floating_point())


def _wrap_sr_save(original):
    """BasicSR's SRModel trains on through a NaN loss, writes all-NaN checkpoints and exits 0. A run whose weights are
    no longer finite stops at its next save instead, and the last finite checkpoint stays the newest. (Plugin models
    skip non-finite steps long before: ``train.max_nonfinite_steps``; their ``save`` never gets here with them.)"""

    def save(self, epoch, current_iter):
        nets = [self.net_g] + ([self.net_g_ema] if hasattr(self, 'net_g_ema') else [])
        if not all(all_finite(self.get_bare_model(n)) for n in nets):
            from basicsr.utils import get_root_logger
            message = (f'lwsr_plugin: training stopped at iter {current_iter}: the network\'s weights are no longer '
                       'finite (NaN/Inf), so no checkpoint was written; the newest one on disk holds the last finite '
                       'weights. Likely causes: a learning rate too high (train.optim_g.lr) or corrupt training data. '
                       'model_type: LWSRModel skips non-finite steps and stops with the iteration (docs/training.md).')
            get_root_logger().error(message)
            raise SystemExit(message)
        return original(self, epoch, current_iter)

    save.__wrapped__ = original
    return save


def _wrap_validation(original):
    """Run validation on the bare networks: rank 0 must not issue DDP collectives the other ranks never join."""

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        swapped = {}
        for name in ('net_g', 'net_d'):
            net = getattr(self, name, None)
            if net is not None and isinstance(net, torch.nn.parallel.DistributedDataParallel):
                swapped[name] = net
                setattr(self, name, net.module)
        try:
            return original(self, dataloader, current_iter, tb_logger, save_img)
        finally:
            for name, net in swapped.items():
                setattr(self, name, net)

    validation.__wrapped__ = original
    return validation


def load_resume_state(opt):
    """``basicsr.train.load_resume_state`` that maps the state to the model's device (CPU works) and, with
    --auto_resume, falls back to the previous state when the newest one cannot be read."""
    from os import path as osp

    from basicsr.utils import check_resume, scandir
    candidates = []
    if opt['auto_resume']:
        state_path = osp.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
        if not osp.isdir(state_path):  # BasicSR itself looks relative to the working directory
            state_path = osp.join('experiments', opt['name'], 'training_states')
        if osp.isdir(state_path):
            iters = sorted((int(float(v.split('.state')[0])) for v in scandir(state_path, suffix='state')),
                           reverse=True)
            candidates = [osp.join(state_path, f'{i}.state') for i in iters]
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
        if not osp.isfile(path):
            raise FileNotFoundError(f'path.resume_state: {path} does not exist. Point it to a <iter>.state file '
                                    'under experiments/<name>/training_states, or use --auto_resume.')
        candidates = [path]
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        device = torch.device('cuda', torch.cuda.current_device())
    else:
        device = torch.device('cpu')
    for path in candidates:
        try:
            resume_state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # a state cut short by a kill (written by BasicSR before this plugin saved atomically)
            if not opt['auto_resume']:
                raise RuntimeError(f'path.resume_state: {path} cannot be read ({type(err).__name__}: {err}). '
                                   'Pick an older state in the same folder.') from err
            print(f'lwsr_plugin: skipping unreadable training state {path} ({type(err).__name__}); '
                  'trying the previous one.', file=sys.stderr)
            continue
        opt['path']['resume_state'] = path
        check_resume(opt, resume_state['iter'])
        _resume_weights_format(opt)
        problem = _unreadable_network_file(opt)
        if problem:
            if not opt['auto_resume']:
                raise SystemExit(f'lwsr_plugin: path.resume_state: {path} needs {problem}. Pick an older state in '
                                 'the same folder.')
            print(f'lwsr_plugin: skipping training state {path}: {problem}; trying the previous one.',
                  file=sys.stderr)
            continue
        return resume_state
    return None


def _unreadable_network_file(opt):
    """'' when every network file a resume loads (``check_resume`` set them) is there and readable, else what is
    wrong: a state whose weights were lost would otherwise end the resumed run in a traceback."""
    for key, value in opt['path'].items():
        if not key.startswith('pretrain_network') or not isinstance(value, str):
            continue
        if not os.path.isfile(value):
            return f'{value}, which is missing'
        try:
            read_state_dict(value)
        except Exception as err:  # any reader failure (truncated zip, bad safetensors header, ...) means unusable
            return f'{value}, which cannot be read ({type(err).__name__})'
    return ''


def _resume_weights_format(opt):
    """BasicSR's ``check_resume`` names ``net_g_<iter>.pth``; a run saving safetensors wrote ``.safetensors``."""
    for key, value in list(opt['path'].items()):
        if key.startswith('pretrain_network') and isinstance(value, str) and value.endswith('.pth') and \
                not os.path.isfile(value) and os.path.isfile(value[:-4] + '.safetensors'):
            opt['path'][key] = value[:-4] + '.safetensors'


class CheckpointWriteError(SystemExit):
    """A checkpoint that could not be written (disk full, quota, I/O error). A ``SystemExit`` because BasicSR's save
    loop catches ``Exception``, logs "Just ignore it" and trains on without checkpoints; this stops the run."""


def remove_stale_tmp_files(path):
    """Delete ``<name>.tmp-<pid>[.ext]`` files beside ``path`` whose process no longer exists (killed saves)."""
    import re

    from lwsr_plugin.data.lmdb_io import pid_alive
    folder = os.path.dirname(os.path.abspath(path))
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(r'.+\.tmp-(\d+)(\.[A-Za-z0-9]+)?', name)
        full = os.path.join(folder, name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))) and os.path.isfile(full):
            with contextlib.suppress(OSError):
                os.remove(full)


def _write_failure(path, err):
    import shutil
    try:
        free = f'{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.0f} MiB free there'
    except OSError:
        free = 'free space unknown'
    cause = ' '.join(str(err).split())[:160]
    return CheckpointWriteError(
        f'lwsr_plugin: cannot write {path} ({type(err).__name__}: {cause}; {free}): stopped rather than train on '
        'without checkpoints. The previous complete file is kept; free disk space (or set path.root on another disk) '
        'and continue with --auto_resume.')


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # a full disk can surface only here (delayed allocation), before the rename makes it final
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_target(path, suffix='', fsync=True):
    """The one temp-and-rename mechanism of every file the plugin writes: yields ``<path>.tmp-<pid><suffix>`` beside
    ``path`` (``suffix`` keeps the extension a writer picks its format by) and, when the block completes, fsyncs it
    and renames it to ``path``; on any error, or a kill, nothing half-written is ever under ``path`` and the temp
    file is removed (or, after a kill, by the next writer of ``path``)."""
    path = os.fspath(path)
    remove_stale_tmp_files(path)
    tmp = f'{path}.tmp-{os.getpid()}{suffix}'
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    """``text`` (UTF-8, newlines as given) to ``path`` through ``atomic_target``."""
    with atomic_target(path) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
        f.write(text)


def atomic_save(obj, f, *args, **kwargs):
    """``torch.save`` to a temp file renamed into place: a process killed while saving never leaves a truncated file
    under the final name, and the leftovers of killed saves beside it are removed. A failed write (full disk) raises
    ``CheckpointWriteError`` (one line); the previous file under the final name stays as it was."""
    if not isinstance(f, (str, os.PathLike)):
        return torch.save(obj, f, *args, **kwargs)
    f = os.fspath(f)
    try:
        with atomic_target(f) as tmp:
            torch.save(obj, tmp, *args, **kwargs)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports ENOSPC as RuntimeError('unexpected pos')
        raise _write_failure(f, err) from None


_EXTRA_STATE = {}


@contextlib.contextmanager
def extra_training_state(**entries):
    """While active, the training state BasicSR's ``save_training_state`` writes also carries ``entries`` (e.g. a
    GradScaler's state), without copying BasicSR's function."""
    _EXTRA_STATE.update(entries)
    try:
        yield
    finally:
        for key in entries:
            _EXTRA_STATE.pop(key, None)


def _save_from_base_model(obj, f, *args, **kwargs):
    if _EXTRA_STATE and isinstance(obj, dict) and 'optimizers' in obj and 'iter' in obj:
        obj = dict(obj, **_EXTRA_STATE)
    return atomic_save(obj, f, *args, **kwargs)


class _TorchWithAtomicSave:
    """``torch`` as BasicSR's base_model sees it, except that ``save`` is ``atomic_save``: a run killed while saving
    never leaves a truncated ``.pth`` / ``.state`` under the final name (which --auto_resume would then pick and
    crash on). Training states get the entries of ``extra_training_state``."""

    def __getattr__(self, name):
        return getattr(torch, name)

    save = staticmethod(_save_from_base_model)


def require_safetensors(option):
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise SystemExit(f'lwsr_plugin: {option} needs the safetensors package: pip install safetensors') from None


def _safetensors_complete(path):
    """True when the file holds as many bytes as its header says (a write to a full device can report success)."""
    import json
    import struct
    size = os.path.getsize(path)
    with open(path, 'rb') as fh:
        head = fh.read(8)
        n = struct.unpack('<Q', head)[0] if len(head) == 8 else size
        if n > size - 8:
            return False
        header = json.loads(fh.read(n))
    end = max((v['data_offsets'][1] for k, v in header.items() if k != '__metadata__'), default=0)
    return size == 8 + n + end


def save_safetensors(tensors, path, metadata=None):
    """``safetensors.torch.save_file`` to a temp name renamed into place (never a truncated file under ``path``); a
    failed write raises ``CheckpointWriteError`` as ``atomic_save`` does."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    path = os.fspath(path)
    try:
        with atomic_target(path, fsync=False) as tmp:  # fsynced below, before the completeness check
            save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
            _fsync(tmp)
            if not _safetensors_complete(tmp):
                raise OSError(28, 'the file is shorter than its header says (No space left on device?)')
    except (OSError, SafetensorError) as err:  # SafetensorError carries the OS error as text
        raise _write_failure(path, err) from None


def _read_safetensors(load_path, param_key):
    """A plugin ``.safetensors`` checkpoint (keys ``params.<name>``, ``params_ema.<name>``) or a plain one."""
    require_safetensors(f'reading {load_path}')
    from safetensors.torch import load_file
    try:
        flat = load_file(load_path, device='cpu')
    except Exception as err:  # SafetensorError, or what a mangled header makes the loader raise
        raise ValueError(f'{load_path}: not a readable .safetensors file ({_one_line(err)}); the file is damaged or '
                         'of another format. Give a BasicSR .pth / .safetensors network file.') from None
    groups = {}
    for key, value in flat.items():
        prefix, _, name = key.partition('.')
        groups.setdefault(prefix, {})[name] = value
    if groups and set(groups) <= {'params', 'params_ema'}:
        key = param_key if param_key in groups else 'params' if 'params' in groups else 'params_ema'
        return groups[key], key
    return flat, None  # a plain state dict saved by someone else


def _one_line(err, limit=160):
    """``Type: first meaningful line`` of a loader's error; torch's weights-only refusal buries the cause (e.g.
    ``Unsupported global: GLOBAL posix.system``) after a paragraph of advice."""
    import re
    text = re.sub(r'Weights only load failed\..*?trusted source\.', '', str(err), flags=re.S)
    text = re.sub(r'Please file an issue.*?WeightsUnpickler error:', '', text, flags=re.S)
    text = re.sub(r'Check the documentation of torch\.load.*', '', text, flags=re.S)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), '') or str(err).strip()[:limit]
    return f'{type(err).__name__}: {line[:limit]}'


def _check_tensors(load_path, state):
    """The loaded object must be a flat {name: tensor} dict of finite values (a diverged run saves NaN weights that
    would silently give black images or NaN losses)."""
    if not isinstance(state, dict) or not state:
        raise ValueError(f'{load_path}: holds {type(state).__name__ if state is not None else "nothing"}, not a '
                         'state dict of tensors. Give a BasicSR .pth / .safetensors network file.')
    for name, value in state.items():
        if not isinstance(name, str) or not torch.is_tensor(value):
            raise ValueError(f'{load_path}: entry {str(name)[:60]!r} is a {type(value).__name__}, not a tensor: not a '
                             'network checkpoint. Give a BasicSR .pth / .safetensors network file.')
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(f'{load_path}: {name} holds {bad} NaN/Inf values of {value.numel()}; the run that '
                                 'saved it had diverged. Use an earlier checkpoint of that run (saved before its loss '
                                 'became NaN).')


def read_state_dict(load_path, param_key='params'):
    """The state dict in a checkpoint: under ``param_key`` (BasicSR's files), ``params``, or the root of a plain state
    dict (official releases); ``module.`` prefixes stripped. ``.pth`` files are read weights-only whatever
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says (an explicit ``weights_only=True`` wins over it: no code in a pickle
    runs); ``.safetensors`` files as the plugin writes them. Damaged files, non-tensor contents and NaN/Inf weights
    raise ValueError with one line. Returns (state_dict, key used)."""
    if str(load_path).endswith('.safetensors'):
        load_net, param_key = _read_safetensors(load_path, param_key)
    else:
        try:
            load_net = torch.load(load_path, map_location='cpu', weights_only=True)
        except Exception as err:
            raise ValueError(f'{load_path}: not a readable weights-only checkpoint ({_one_line(err)}); nothing in it '
                             'was run. Give a BasicSR .pth / .safetensors network file.') from None
        if param_key is not None and isinstance(load_net, dict):
            if param_key in load_net:
                load_net = load_net[param_key]
            elif 'params' in load_net:
                param_key, load_net = 'params', load_net['params']
            elif load_net and all(torch.is_tensor(v) for v in load_net.values()):
                param_key = None
            else:
                raise KeyError(f'{load_path} has no {param_key!r} entry (keys: {list(load_net)[:5]}). Set param_key_g '
                               'to one of its keys, or to ~ for a plain state dict.')
    _check_tensors(load_path, load_net)
    return {(k[7:] if k.startswith('module.') else k): v for k, v in load_net.items()}, param_key


def checkpoint_mismatch(own, loaded):
    """'' if ``loaded`` fits the state dict ``own`` exactly, else what differs (shapes first)."""
    bad = [f'{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}' for k, v in loaded.items()
           if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(loaded) - set(own))
    return '; '.join(bad[:3] + [f'missing {missing[:3]}'] * bool(missing) +
                     [f'unexpected {unexpected[:3]}'] * bool(unexpected))


def mismatch_message(label, load_path, net, details):
    return (f'{label}: {load_path} does not fit network_g ({type(net).__name__}): {details}. Pick the checkpoint '
            'made for this arch and scale (e.g. IMDN_x4.pth for upscale: 4), or set strict_load_g: false to load '
            'only the matching layers (fine-tuning across scales).')


def load_state_dict_checked(net, state_dict, strict, label, load_path, assign=False):
    """``net.load_state_dict`` whose failure names the option, what differs, and the fix. The arch's own loading
    hooks run (e.g. s-LWSR's mean shift consumes its extra keys), so strictness is torch's own."""
    try:
        net.load_state_dict(state_dict, strict=strict, assign=assign)
    except RuntimeError as err:
        details = checkpoint_mismatch(net.state_dict(), state_dict) or str(err).split('\n')[0]
        raise ValueError(mismatch_message(label, load_path, net, details)) from None


def load_network(self, net, load_path, strict=True, param_key='params'):
    """``BaseModel.load_network`` that also reads plain state dicts (the official IMDN/s-LWSR releases, saved without
    a ``params`` key) and names the option and the fix when the checkpoint does not fit ``network_g``."""
    from basicsr.utils import get_root_logger
    logger = get_root_logger()
    net = self.get_bare_model(net)
    label = 'path.pretrain_network_g' if net is self.get_bare_model(getattr(self, 'net_g', None)) else 'path.pretrain_*'
    if not os.path.isfile(load_path):
        raise FileNotFoundError(f'{label}: checkpoint {load_path} does not exist. Fix the path in the option file.')
    requested = param_key
    load_net, param_key = read_state_dict(load_path, param_key)
    if param_key != requested:
        logger.info(f'Loading: {requested} does not exist in {load_path}, use {param_key or "the root dict"}.')
    logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
    self._print_different_keys_loading(net, load_net, strict)  # with strict=False it drops mis-shaped keys
    load_state_dict_checked(net, load_net, strict, label, load_path)


def resolve_network(opt, option='network_g'):
    """The registered class for a network option dict; errors name the option: unknown ``type``, unknown kwarg."""
    import difflib
    import inspect

    from basicsr.utils.registry import ARCH_REGISTRY
    arch = opt.get('type')
    for name in (arch, f'{arch}_basicsr'):
        if name in ARCH_REGISTRY:
            cls = ARCH_REGISTRY.get(name)
            break
    else:
        close = difflib.get_close_matches(str(arch), list(ARCH_REGISTRY.keys()), n=3)
        raise KeyError(f'{option}.type: {arch!r} is not registered in BasicSR\'s ARCH_REGISTRY' +
                       (f'; did you mean {close}?' if close else '.') +
                       f' Registered: {sorted(ARCH_REGISTRY.keys())}. For your own arch, list its file or folder under '
                       '`user_modules:` in the option file (or in LWSR_USER_MODULES); see the README section '
                       'Your own arch.')
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in opt if k != 'type' and k not in params]
        if unknown:
            raise TypeError(f'{option}: {unknown} not accepted by {arch}. Remove or rename them; {arch} takes: '
                            f'{[k for k in params if k != "self"]}.')
    return cls


def _wrap_build_network(original):

    def build_network(opt):
        resolve_network(opt)
        return original(opt)

    build_network.__wrapped__ = original
    return build_network


_RUN = {}  # settings of the run that lwsr_plugin.entry started in this process


@contextlib.contextmanager
def run_settings(**settings):
    """While active, BasicSR's pipeline runs with ``settings``: ``root_note`` (first log line), ``kind``."""
    _RUN.update(settings)
    try:
        yield
    finally:
        _RUN.clear()


def _is_basicsr_script(frame):
    """True when ``frame`` is ``train_pipeline``/``test_pipeline`` of BasicSR's own script run as ``__main__``."""
    g = frame.f_globals
    folder = os.path.dirname(os.path.abspath(g.get('__file__') or ''))
    return (frame.f_code.co_name in ('train_pipeline', 'test_pipeline') and g.get('__name__') == '__main__' and
            os.path.basename(folder) == 'basicsr' and os.path.isfile(os.path.join(folder, '__init__.py')))


def _wrap_parse_options(original):

    def parse_options(root_path, is_train=True):
        if _is_basicsr_script(sys._getframe(1)):
            from lwsr_plugin.entry import run_basicsr_script
            sys.exit(run_basicsr_script('train' if is_train else 'test', root_path))
        opt, args = original(root_path, is_train)
        if is_train:
            from lwsr_plugin.training_state import apply_accumulate
            apply_accumulate(opt)
        if _RUN.get('kind') == 'test' and isinstance(opt.get('val'), dict):
            opt['val'].setdefault('pbar', True)  # BasicSR's own per-image tqdm bar, off by default
        return opt, args

    parse_options.__wrapped__ = original
    return parse_options


def _wrap_get_root_logger(original):
    """The pipeline's first ``get_root_logger`` call (the one that opens the log file) states the output root."""

    def get_root_logger(logger_name='basicsr', log_level=20, log_file=None):
        logger = original(logger_name, log_level, log_file)
        note = _RUN.pop('root_note', None)
        if note and log_file is not None:
            logger.info(note)
        return logger

    get_root_logger.__wrapped__ = original
    return get_root_logger


class TrainingProgress:
    """Iterations/s and ETA of the running training, logged at least every ``interval`` seconds of wall time.

    BasicSR logs every ``logger.print_freq`` iterations; on a slow machine that can be minutes of silence. The
    training loop calls ``update_learning_rate(current_iter)`` first thing in every iteration, so the time between
    those calls is the iteration time, data loading included."""

    def __init__(self, opt):
        self.interval = float((opt.get('logger') or {}).get('progress_interval', 10) or 0)
        self.total = int(opt['train']['total_iter'])
        self.name = opt.get('name', '')
        self.start = None  # (time, iteration) of the first observed iteration
        self.last_line = time.time()

    def rate(self, done, now=None):
        if self.start is None or done <= self.start[1]:
            return None
        return (done - self.start[1]) / max((now or time.time()) - self.start[0], 1e-9)

    def eta(self, done, now=None):
        rate = self.rate(done, now)
        return None if not rate else datetime.timedelta(seconds=int((self.total - done) / rate))

    def step(self, current_iter, logger_fn, log_dict=None):
        """Called at the start of iteration ``current_iter``; iteration ``current_iter - 1`` is complete."""
        now = time.time()
        done = current_iter - 1
        if self.start is None:
            self.start, self.last_line = (now, done), now
            return
        if not self.interval or now - self.last_line < self.interval:
            return
        rate = self.rate(done, now)
        losses = ' '.join(f'{k}: {v:.4e}' for k, v in (log_dict or {}).items())
        logger_fn(f'[{self.name[:5]}..][progress] iter:{done:8,d}/{self.total:,} | {rate:.3f} it/s | '
                  f'eta: {self.eta(done, now)} {losses}'.rstrip())
        self.last_line = now


def _wrap_update_learning_rate(original):

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        original(self, current_iter, warmup_iter)
        if not getattr(self, 'is_train', False) or self.opt.get('rank', 0) != 0:
            return
        progress = getattr(self, '_lwsr_progress', None)
        if progress is None:
            progress = self._lwsr_progress = TrainingProgress(self.opt)
            _RUN['progress'] = progress
        progress.step(current_iter, _logger.get_root_logger().info, getattr(self, 'log_dict', None))

    update_learning_rate.__wrapped__ = original
    return update_learning_rate


def _wrap_message_logger_call(original):
    """BasicSR's periodic line, with it/s added; it also restarts the progress interval."""

    def __call__(self, log_vars):
        progress = _RUN.get('progress')
        if progress is None:
            return original(self, log_vars)
        rate = progress.rate(log_vars.get('iter', 0))
        logger = self.logger
        suffix = f' [{rate:.3f} it/s]' if rate else ''
        self.logger = type('_Suffixed', (), {'info': staticmethod(lambda msg: logger.info(msg + suffix))})()
        try:
            return original(self, log_vars)
        finally:
            self.logger = logger
            progress.last_line = time.time()

    __call__.__wrapped__ = original
    return __call__


def apply():
    """Install every patch once (idempotent)."""
    if getattr(_base_model, _PATCHED, False):
        return
    _dist_util.init_dist = init_dist
    _options.init_dist = init_dist  # parse_options calls the name it imported
    BaseModel = _base_model.BaseModel
    BaseModel.model_to_device = model_to_device
    BaseModel.__init__ = _wrap_base_init(BaseModel.__init__)
    BaseModel.validation = _wrap_validation(BaseModel.validation)
    BaseModel.load_network = load_network
    BaseModel.update_learning_rate = _wrap_update_learning_rate(BaseModel.update_learning_rate)
    _base_model.torch = _TorchWithAtomicSave()
    _logger.MessageLogger.__call__ = _wrap_message_logger_call(_logger.MessageLogger.__call__)
    parse_options = _wrap_parse_options(_options.parse_options)
    _options.parse_options = parse_options  # before basicsr.train/test import the name (and __main__ scripts)
    import basicsr.archs
    import basicsr.models.sr_model as _sr_model
    _sr_model.SRModel.save = _wrap_sr_save(_sr_model.SRModel.save)
    wrapped = _wrap_build_network(basicsr.archs.build_network)
    for module in [basicsr.archs, _sr_model] + [m for n, m in sys.modules.items() if n.startswith('basicsr.models.')]:
        if getattr(module, 'build_network', None) is wrapped.__wrapped__:
            module.build_network = wrapped
    import basicsr.test as test_mod
    import basicsr.train as train_mod
    train_mod.load_resume_state = load_resume_state
    from lwsr_plugin import training_state
    training_state.install()  # exact resume and the keyed data stream; wraps the load_resume_state just set
    for mod in (train_mod, test_mod):
        mod.parse_options = parse_options
        mod.get_root_logger = _wrap_get_root_logger(_logger.get_root_logger)
    setattr(_base_model, _PATCHED, True)


apply()
