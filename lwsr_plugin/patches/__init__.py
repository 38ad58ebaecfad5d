"""Everything BasicSR 1.4.2 needs to run on today's stack, in one wing; :func:`apply` installs it once.

Nothing here edits BasicSR's files; every patch replaces a name at the place BasicSR looks it up, once, and no module
outside this folder replaces a BasicSR name. What is patched, and why:

1. ``torchvision.transforms.functional_tensor`` alias (via the start-up finder), so ``import basicsr`` works on
   torchvision >= 0.17.
2. CPU distributed training (:mod:`.distributed`): ``--launcher pytorch`` picks gloo when CUDA is absent (BasicSR
   hard-codes nccl and calls ``torch.cuda.set_device``, dying with ZeroDivisionError), DDP wraps CPU modules without
   ``device_ids``, ``--launcher slurm`` reads SLURM's variables, every rank checks that all ranks run the same
   options, and all ranks resume from the training state rank 0 picks.
3. Resume on CPU (:mod:`.checkpoints`): BasicSR's ``load_resume_state`` maps the state to
   ``torch.cuda.current_device()``; with ``--auto_resume`` an unreadable newest state falls back to the previous one.
4. Checkpoints (:mod:`.checkpoints`): written through a temporary name, official plain state dicts accepted as
   ``pretrain_network_g``, a checkpoint that does not fit ``network_g`` or an unknown arch/argument named with the fix,
   non-finite weights never saved.
5. Validation under DDP runs on rank 0 only; forwarding through the DDP wrapper there would broadcast buffers from
   rank 0 alone and desync the ranks, so validation forwards the bare network (:mod:`.pipeline`).
6. BasicSR's own ``train.py``/``test.py`` run as scripts are ``__main__``, whose functions no patch reaches, and they
   write into site-packages when BasicSR is installed: their first call, ``parse_options``, hands the run to
   ``lwsr_plugin.entry`` (the same run as ``lwsr-train``/``lwsr-test``) and exits with its status (:mod:`.pipeline`).
7. Progress: a training log line with it/s and ETA at least every ``logger.progress_interval`` seconds (default 10),
   not only every ``print_freq`` iterations; ``lwsr-test`` shows BasicSR's per-set progress bar (``val.pbar``).
8. Exact resume, the keyed data stream, ``train.accumulate``'s loader batch and the epoch count of a loader that
   drops its last batch (:mod:`.resume`).
9. Time- or iteration-budgeted training (:mod:`.budget`): ``lwsr-demo`` and ``lwsr-reproduce`` end BasicSR's training
   loop when their budget is spent and set the learning rate from the budget's progress.
10. Dataset reads that name an undecodable image, and validation/test images written through a temporary name
    (installed by :mod:`lwsr_plugin.entry` for its runs, :mod:`.pipeline`).
11. TensorBoard (:mod:`.tensorboard`): BasicSR writes only scalars of losses and metrics; every validation also writes
    LR | bicubic | SR | HR crops of its first images, and every logging step the it/s, the data-wait share and the
    learning rate.
12. Intra-op threads that fit the CPUs other processes leave free, re-checked during training, with a log line when
    they are lowered (``LWSR_THREADS=<n>`` fixes them): OpenMP threads spinning on cores another run needs made two
    trainings on the same cores each run at a quarter of their solo speed instead of a half (:mod:`.threads`).
"""
import sys

import _lwsr_plugin_startup

_lwsr_plugin_startup.install()  # the alias is needed even when the automatic hook is switched off

import basicsr  # noqa: E402,F401  (works now)
from basicsr.models import base_model as _base_model  # noqa: E402
from basicsr.utils import dist_util as _dist_util  # noqa: E402
from basicsr.utils import logger as _logger  # noqa: E402
from basicsr.utils import options as _options  # noqa: E402

from . import budget, checkpoints, distributed, pipeline, resume, tensorboard, threads  # noqa: E402

_PATCHED = '_lwsr_plugin_patched'


def apply():
    """Install every patch once (idempotent)."""
    if getattr(_base_model, _PATCHED, False):
        return
    _dist_util.init_dist = distributed.init_dist
    _options.init_dist = distributed.init_dist  # parse_options calls the name it imported
    BaseModel = _base_model.BaseModel
    BaseModel.model_to_device = distributed.model_to_device
    BaseModel.__init__ = pipeline.wrap_base_init(BaseModel.__init__)
    BaseModel.validation = pipeline.wrap_validation(BaseModel.validation)
    BaseModel.load_network = checkpoints.load_network
    BaseModel.update_learning_rate = pipeline.wrap_update_learning_rate(BaseModel.update_learning_rate)
    _base_model.torch = checkpoints.TorchWithAtomicSave()
    _logger.MessageLogger.__call__ = pipeline.wrap_message_logger_call(_logger.MessageLogger.__call__)
    tensorboard.install()  # outside the wraps above: it reads the timers before the line pops them
    parse_options = pipeline.wrap_parse_options(_options.parse_options)
    _options.parse_options = parse_options  # before basicsr.train/test import the name (and __main__ scripts)
    import basicsr.archs
    import basicsr.models.sr_model as _sr_model
    _sr_model.SRModel.save = checkpoints.wrap_sr_save(_sr_model.SRModel.save)
    wrapped = checkpoints.wrap_build_network(basicsr.archs.build_network)
    for module in [basicsr.archs, _sr_model] + [m for n, m in sys.modules.items() if n.startswith('basicsr.models.')]:
        if getattr(module, 'build_network', None) is wrapped.__wrapped__:
            module.build_network = wrapped
    import basicsr.test as test_mod
    import basicsr.train as train_mod
    train_mod.load_resume_state = checkpoints.load_resume_state
    resume.install()  # exact resume and the keyed data stream; wraps the load_resume_state just set
    budget.install()  # passes through unless a budget is active
    threads.install()  # after pipeline's wrap, so the thread check runs before the iteration's progress line
    for mod in (train_mod, test_mod):
        mod.parse_options = parse_options
        mod.get_root_logger = pipeline.wrap_get_root_logger(_logger.get_root_logger)
    setattr(_base_model, _PATCHED, True)


apply()
