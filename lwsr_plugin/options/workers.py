"""``datasets.<phase>.num_worker_per_gpu: auto``: the DataLoader workers that fit the CPUs this process may use.

The rule (:func:`auto_workers`), per process:

* ``cpus``: the CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where it does not exist);
* ``share``: ``cpus`` divided among the processes of this node (``LOCAL_WORLD_SIZE`` under torchrun, else 1),
  at least 1;
* ``threads``: the training's intra-op threads (``torch.get_num_threads()``), which compute on those CPUs too. On a
  GPU run (``num_gpu`` > 0) the plugin first sets them to 1, as torchrun does for its processes, unless
  ``OMP_NUM_THREADS`` says otherwise: the network runs on the GPU, and idle OpenMP threads spin on the CPUs that the
  workers need;
* workers per loader: ``share - threads``, at most :data:`MAX_AUTO_WORKERS`, never below 0 (0: the main process
  loads, which the in-memory dataset ``InMemoryPairedImageDataset`` makes cheap); BasicSR's one-process multi-GPU
  loader starts ``num_gpu`` times ``num_worker_per_gpu``, so there the number is divided by ``num_gpu``.

So a 2-core CPU run gets 0 workers (1 with ``OMP_NUM_THREADS=1``) and PyTorch's "suggested max number of worker"
warning never comes; a 32-core box with one GPU gets 8, and with torchrun on 4 GPUs 7 per process.
"""
import os

from lwsr_plugin.options import OptionError

AUTO = 'auto'
# BasicSR's examples and the shipped recipes used 6 per GPU, which keeps a GPU fed at these models' patch sizes; a
# worker is a whole process (interpreter, torch, a copy of the dataset object), so more only cost memory and start-up
MAX_AUTO_WORKERS = 8


def usable_cpus():
    """The CPUs this process may run on (its affinity mask; the machine's count where there is no mask)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_processes(environ=None):
    """Processes of this run on this node: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    value = (os.environ if environ is None else environ).get('LOCAL_WORLD_SIZE', '')
    return int(value) if value.isdigit() and int(value) > 0 else 1


def auto_workers(cpus, local_world, threads, loaders=1, threads_note=''):
    """``(workers, why)``: the ``num_worker_per_gpu`` of the module's rule for ``cpus`` usable CPUs shared by
    ``local_world`` processes, each training with ``threads`` intra-op threads; ``loaders``: the number that
    multiplies it (BasicSR's one-process multi-GPU loader: ``num_gpu``); ``threads_note`` follows the thread count
    in ``why``."""
    share = max(cpus // max(local_world, 1), 1)
    free = max(share - threads, 0) // max(loaders, 1)
    workers = min(free, MAX_AUTO_WORKERS)
    why = (f'{cpus} CPUs usable' + (f' / {local_world} local processes' if local_world > 1 else '') +
           f' - {threads} intra-op thread{"s" * (threads != 1)}{threads_note}' +
           (f', divided among the {loaders} GPUs of one loader' if loaders > 1 else '') +
           (f', at most {MAX_AUTO_WORKERS}' if free > MAX_AUTO_WORKERS else '') +
           ('; the main process loads' if workers == 0 else ''))
    return workers, why


def check_num_workers(label, value):
    """``datasets.<phase>.num_worker_per_gpu`` must be ``auto`` or a whole number >= 0; OptionError otherwise."""
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    raise OptionError(f'{label}.num_worker_per_gpu: {value!r} is not a number of DataLoader workers. Use a whole '
                      'number >= 0 (0: load in the main process) or `auto` (as many as the free CPUs allow).')


def resolve_auto_workers(opt, environ=None):
    """Replace every ``num_worker_per_gpu: auto`` of BasicSR's parsed ``opt`` (in place) by the module's rule; on a
    GPU run sets torch's intra-op threads first (see the module). Returns one log line per phase that was ``auto``."""
    datasets = opt.get('datasets') or {}
    phases = [p for p, ds in datasets.items() if isinstance(ds, dict) and ds.get('num_worker_per_gpu') == AUTO]
    if not phases:
        return []
    import torch
    environ = os.environ if environ is None else environ
    num_gpu = opt.get('num_gpu') if isinstance(opt.get('num_gpu'), int) else 0
    note = ''
    if num_gpu > 0 and not environ.get('OMP_NUM_THREADS'):
        torch.set_num_threads(1)
        note = ' (set for a GPU run)'
    loaders = 1 if opt.get('dist') or num_gpu <= 1 else num_gpu
    workers, why = auto_workers(usable_cpus(), local_processes(environ), torch.get_num_threads(), loaders, note)
    lines = []
    for phase in phases:
        datasets[phase]['num_worker_per_gpu'] = workers
        lines.append(f'datasets.{phase}.num_worker_per_gpu: auto -> {workers} ({why})')
    return lines
