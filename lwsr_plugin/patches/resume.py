"""Exact continuation of a training run, and one data stream whatever the number of processes or workers.

BasicSR's training state holds the epoch, the iteration, the optimizers and the schedulers. A run resumed from it
starts its epoch again from the first batch, with random generators seeded afresh, so it trains on other patches than
the run it replaces (BasicSR's resume alone, in ``scripts/check_resume.py``'s setting: 33 of 36 IMDN tensors differed
after a kill and ``--auto_resume``).
This module adds what is missing, at the places BasicSR looks the names up, without copying its training loop:

1. **Keyed samples.** Every training sample is made with Python's, NumPy's and torch's generators seeded from
   ``(manual_seed, epoch, global position in the epoch's shuffled order)``; the generators of the process that loads
   it are put back afterwards. A sample then does not depend on which DataLoader worker loads it, how far the loader
   prefetched, whether the run was restarted, or how many processes share the epoch: rank ``r`` of ``P`` takes
   positions ``r, r + P, ...`` of BasicSR's ``EnlargedSampler`` order, so ``P`` processes x batch ``b`` see the same
   samples at a step as one process x batch ``P*b``. ``datasets.train.keyed_samples: false`` keeps BasicSR's stream
   (each worker reseeded with the same seed every epoch; resuming is then not exact).
2. **The position in the epoch**: batches of the current epoch already trained; a resumed run skips them.
3. **The main process's generators** of every rank (python, numpy, torch CPU, CUDA), put back when the first
   iteration after resuming starts (building the model drew from them). With keyed samples the training loader draws
   its per-epoch base seed from a generator of its own, so the global ones advance only with the model's own draws
   (e.g. the two-stage model's crops).
4. **``train.accumulate: k``** (plugin models): the loader batch is ``k x batch_size_per_gpu``; the model runs ``k``
   forward/backward passes of ``batch_size_per_gpu`` samples and steps once. Iterations, ``total_iter`` and the
   learning-rate schedule count optimizer steps.
5. The number of epochs BasicSR derives from ``total_iter`` counts the partial batch its loader drops; it is
   recomputed from the loader, so every run reaches ``total_iter``.

Everything is written into BasicSR's ``.state`` file under ``lwsr_resume`` (tensors, numbers and tuples only, so the
file still loads with ``weights_only=True``).
"""
import contextlib
import random

import numpy as np
import torch
import torch.distributed as dist

from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from lwsr_plugin.options.keys import default
from lwsr_plugin.patches.checkpoints import extra_training_state

STATE_KEY = 'lwsr_resume'
_M64 = (1 << 64) - 1

_LOADER = {}  # the training loader of this process: sampler, loader batch, keyed, seed, batches per epoch
_PENDING = {}  # what a resumed run restores at the first batch: {'entry': ..., 'rank': ...}


# ------------------------------------------------------------------------------------------------ keyed samples
def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def sample_seed(seed, epoch, position):
    """A 63-bit seed of one training sample; neighbouring positions give unrelated seeds."""
    h = 0
    for value in (seed, epoch, position):
        h = _splitmix64(h ^ (int(value) & _M64))
    return h >> 1


@contextlib.contextmanager
def seeded_generators(seed):
    """Python, NumPy and torch's CPU generator seeded with ``seed`` inside the block, as they were after it. CUDA
    generators are left alone (``torch.manual_seed`` would reseed them too)."""
    saved = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.default_generator.set_state(saved[2])


class KeyedSamples(torch.utils.data.Dataset):
    """A training dataset read by ``(index, epoch, position)`` keys; each sample's random crop and flips are drawn
    from generators seeded by :func:`sample_seed`. A plain index reads the dataset as it is."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch, position = key
        with seeded_generators(sample_seed(self.seed, epoch, position)):
            return self.dataset[index]

    def __getattr__(self, name):  # the wrapped dataset's attributes (opt, paths, ...); not while unpickling
        if name == 'dataset' or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _sampler_iter(original):

    def __iter__(self):
        info = getattr(self, '_lwsr_train', None)
        if info is None:
            return original(self)
        indices = list(original(self))
        start = _resume_position(self, info)
        if not info['keyed']:
            return iter(indices[start:])
        # the global position: rank r of P holds positions r, r + P, ... of the epoch's order
        return iter([(index, self.epoch, self.rank + self.num_replicas * pos)
                     for pos, index in enumerate(indices) if pos >= start])

    __iter__.__wrapped__ = original
    return __iter__


def _wrap_build_dataloader(original):

    def build_dataloader(dataset, dataset_opt, num_gpu=1, dist=False, sampler=None, seed=None):
        if dataset_opt.get('phase') != 'train' or not isinstance(sampler, EnlargedSampler):
            return original(dataset, dataset_opt, num_gpu, dist, sampler, seed)
        keyed = dataset_opt.get('keyed_samples', default('datasets.*.keyed_samples'))
        if not isinstance(keyed, bool):
            raise SystemExit(f'lwsr_plugin: datasets.train.keyed_samples: {keyed!r} must be true or false.')
        data = KeyedSamples(dataset, seed or 0) if keyed else dataset
        loader = original(data, dataset_opt, num_gpu, dist, sampler, seed)
        if keyed:
            # the loader's per-epoch base-seed draw would otherwise advance torch's global generator (which a resumed
            # run restores); with keyed samples the workers' own seeds play no part
            loader.generator = torch.Generator().manual_seed(int(seed or 0))
        batch = loader.batch_size
        sampler._lwsr_train = {'keyed': keyed}
        _LOADER.clear()
        _LOADER.update(sampler=sampler, batch=batch, keyed=keyed, seed=int(seed or 0),
                       per_epoch=sampler.num_samples // batch if loader.drop_last else -(-sampler.num_samples // batch))
        return loader

    build_dataloader.__wrapped__ = original
    return build_dataloader


def _wrap_create_train_val_dataloader(original):
    """BasicSR counts an epoch's iterations with ``ceil`` while its training loader drops the last partial batch, so
    a run whose per-process sample count is not a multiple of the batch stopped short of ``total_iter`` (e.g. 20
    samples, 2 processes x batch 4: 2 iterations per epoch, counted as 3, 10 of 12 iterations trained). The number of
    epochs is recomputed from the loader's real length."""

    def create_train_val_dataloader(opt, logger):
        import math
        train_loader, train_sampler, val_loaders, total_epochs, total_iters = original(opt, logger)
        per_epoch = _LOADER.get('per_epoch')
        if per_epoch and train_loader is not None:
            needed = math.ceil(total_iters / per_epoch)
            if needed > total_epochs:
                logger.info(f'Iterations per epoch: {per_epoch} (the loader drops the last partial batch), so '
                            f'{needed} epochs, not {total_epochs}, reach total_iter {total_iters}.')
                total_epochs = needed
        return train_loader, train_sampler, val_loaders, total_epochs, total_iters

    create_train_val_dataloader.__wrapped__ = original
    return create_train_val_dataloader


# --------------------------------------------------------------------------------------------------- saving
def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _set_numpy_state(state):
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def generator_state():
    """This process's generators, in types ``torch.load(weights_only=True)`` reads back."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {'python': random.getstate(), 'numpy': _numpy_state(), 'torch': torch.get_rng_state(), 'cuda': cuda}


def set_generator_state(state):
    random.setstate(_python_state(state['python']))
    _set_numpy_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


def _python_state(state):
    version, internal, gauss = state  # lists after a round trip through some loaders; random wants tuples
    return version, tuple(internal), gauss


def resume_entry(epoch, current_iter):
    """The ``lwsr_resume`` entry of the state saved at ``current_iter``; collective when distributed (every rank
    calls it, rank 0 gets all ranks' generators)."""
    rank, world = get_dist_info()
    mine = generator_state()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    entry = {'version': 1, 'world_size': world, 'generators': gathered}
    if _LOADER:
        per_epoch = _LOADER['per_epoch']
        done = current_iter - epoch * per_epoch
        if 0 <= done <= per_epoch:  # otherwise an earlier inexact resume broke BasicSR's epoch arithmetic
            sampler = _LOADER['sampler']
            entry['data'] = {'epoch': int(epoch), 'batches': int(done), 'batch_size': int(_LOADER['batch']),
                             'num_samples': int(sampler.num_samples), 'keyed': bool(_LOADER['keyed']),
                             'seed': _LOADER['seed'], 'world_size': world}
    return entry


def _wrap_save_training_state(original):

    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:  # BasicSR writes no state for the final "latest" save
            return original(self, epoch, current_iter)
        entry = resume_entry(epoch, current_iter)
        with extra_training_state(**{STATE_KEY: entry}):
            return original(self, epoch, current_iter)

    save_training_state.__wrapped__ = original
    return save_training_state


# ------------------------------------------------------------------------------------------------- resuming
def prepare_resume(resume_state):
    """Called with the state a run resumes from: what it holds is restored at the first batch."""
    _PENDING.clear()
    entry = (resume_state or {}).get(STATE_KEY)
    if resume_state is None:
        return
    if entry is None:
        get_root_logger().warning(f"Resuming from a state without {STATE_KEY} (written by BasicSR or an older plugin): "
                                  'the epoch restarts from its first batch and the random generators are fresh, as '
                                  'in BasicSR; the run will not equal an uninterrupted one.')
        return
    _PENDING.update(entry=entry, rank=get_dist_info()[0])


def _resume_position(sampler, info):
    """Samples of the resumed epoch to skip: 0 unless this iterator is for the epoch the saved state was in. Every
    iterator of that epoch made before training goes on skips them (with DataLoader workers BasicSR's prefetcher
    makes one for epoch 0 that it throws away)."""
    data = _PENDING.get('entry', {}).get('data')
    if data is None or sampler.epoch != data['epoch']:
        return 0
    now = {'batch_size': _LOADER.get('batch'), 'num_samples': sampler.num_samples, 'keyed': info['keyed'],
           'seed': _LOADER.get('seed'), 'world_size': sampler.num_replicas}
    changed = [f'{key} {data[key]} -> {now[key]}' for key in now if data[key] != now[key]]
    if changed:
        _PENDING['why'] = ', '.join(changed)
        return 0
    _PENDING['skipped'] = data['batches']
    return data['batches'] * data['batch_size']


def _finish_resume():
    """At the first iteration after resuming: restore the generators and say whether the run continues exactly."""
    entry, rank = _PENDING['entry'], _PENDING['rank']
    world = get_dist_info()[1]
    generators = entry.get('generators') or []
    if entry.get('world_size') == world and rank < len(generators):
        set_generator_state(generators[rank])
        restored = True
    else:
        restored = False
        _PENDING.setdefault('why', f'saved by {entry.get("world_size")} processes, now {world}')
    data = entry.get('data')
    if data is None:
        _PENDING.setdefault('why', 'the state has no position in its epoch')
    elif not data['keyed'] or not (_LOADER and _LOADER['keyed']):
        _PENDING.setdefault('why', 'datasets.train.keyed_samples: false')
    skipped = _PENDING.get('skipped')
    logger = get_root_logger()
    if skipped is not None and restored and 'why' not in _PENDING:
        logger.info(f'Resume exact: epoch {data["epoch"]} continued after its first {skipped} batches; random '
                    'generators restored.')
    else:
        where = (f'the epoch continued after its first {skipped} batches' if skipped is not None else
                 'the epoch restarted from its first batch as in BasicSR')
        logger.warning(f'Resume not exact ({_PENDING.get("why", "?")}): {where}; random generators '
                       f'{"restored" if restored else "not restored"}.')
    _PENDING.clear()


def _wrap_update_learning_rate(original):

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        if _PENDING:
            _finish_resume()
        return original(self, current_iter, warmup_iter)

    update_learning_rate.__wrapped__ = original
    return update_learning_rate


def _wrap_load_resume_state(original):

    def load_resume_state(opt):
        state = original(opt)
        prepare_resume(state)
        return state

    load_resume_state.__wrapped__ = original
    return load_resume_state


# ---------------------------------------------------------------------------------------------------- install
def install():
    """Patch BasicSR's sampler, train loader builder, resume loader and state writer (once)."""
    import basicsr.train as train_mod
    from basicsr.models import base_model
    if getattr(EnlargedSampler.__iter__, '__wrapped__', None) is not None:
        return
    EnlargedSampler.__iter__ = _sampler_iter(EnlargedSampler.__iter__)
    train_mod.build_dataloader = _wrap_build_dataloader(train_mod.build_dataloader)
    train_mod.create_train_val_dataloader = _wrap_create_train_val_dataloader(train_mod.create_train_val_dataloader)
    train_mod.load_resume_state = _wrap_load_resume_state(train_mod.load_resume_state)
    BaseModel = base_model.BaseModel
    BaseModel.save_training_state = _wrap_save_training_state(BaseModel.save_training_state)
    BaseModel.update_learning_rate = _wrap_update_learning_rate(BaseModel.update_learning_rate)
