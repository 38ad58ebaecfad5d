"""Everything BasicSR 1.4.2 needs to run on today's stack, in one place.

1. ``torchvision.transforms.functional_tensor`` alias (via the start-up finder), so ``import basicsr`` works on
   torchvision >= 0.17.
2. CPU distributed training: ``--launcher pytorch`` picks gloo when CUDA is absent (BasicSR hard-codes nccl and calls
   ``torch.cuda.set_device``, dying with ZeroDivisionError), and DDP wraps CPU modules without ``device_ids``.
3. Resume on CPU: BasicSR's ``load_resume_state`` maps the state to ``torch.cuda.current_device()``.
4. Validation under DDP runs on rank 0 only; forwarding through the DDP wrapper there would broadcast buffers from
   rank 0 alone and desync the ranks, so validation forwards the bare network.

Nothing here edits BasicSR's files; every patch replaces a name at the place BasicSR looks it up, once.
"""
import os
import sys

import _lwsr_plugin_startup

_lwsr_plugin_startup.install()  # the alias is needed even when the automatic hook is switched off

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import basicsr  # noqa: E402,F401  (works now)
from basicsr.models import base_model as _base_model  # noqa: E402
from basicsr.utils import dist_util as _dist_util  # noqa: E402
from basicsr.utils import options as _options  # noqa: E402

_PATCHED = '_lwsr_plugin_patched'


def default_backend():
    """nccl where CUDA is usable, gloo otherwise; ``LWSR_DIST_BACKEND`` overrides."""
    env = os.environ.get('LWSR_DIST_BACKEND')
    if env:
        return env
    return 'nccl' if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 'gloo'


def init_dist(launcher, backend=None, **kwargs):
    """Drop-in for ``basicsr.utils.dist_util.init_dist`` that also works without GPUs (gloo)."""
    import torch.multiprocessing as mp
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if launcher != 'pytorch':
        return _original_init_dist(launcher, backend or 'nccl', **kwargs)
    if dist.is_available() and dist.is_initialized():
        return None
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        raise RuntimeError('--launcher pytorch needs the RANK/WORLD_SIZE environment of torchrun: start the job with '
                           '`torchrun --nproc_per_node=N -m lwsr_plugin.train -opt X.yml --launcher pytorch`, or drop '
                           '--launcher for a single process.')
    backend = backend or default_backend()
    if backend == 'nccl':
        if not torch.cuda.is_available():
            raise RuntimeError('LWSR_DIST_BACKEND=nccl needs CUDA GPUs; none is visible. Use gloo on CPU.')
        local_rank = int(os.environ.get('LOCAL_RANK', int(os.environ['RANK']) % torch.cuda.device_count()))
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, **kwargs)


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
    """``basicsr.train.load_resume_state`` that maps the state to the model's device (CPU works)."""
    from os import path as osp

    from basicsr.utils import check_resume, scandir
    resume_state_path = None
    if opt['auto_resume']:
        state_path = osp.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
        if not osp.isdir(state_path):  # BasicSR itself looks relative to the working directory
            state_path = osp.join('experiments', opt['name'], 'training_states')
        if osp.isdir(state_path):
            states = [float(v.split('.state')[0]) for v in scandir(state_path, suffix='state', recursive=False)]
            if states:
                resume_state_path = osp.join(state_path, f'{max(states):.0f}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        return None
    if not osp.isfile(resume_state_path):
        raise FileNotFoundError(f'path.resume_state: {resume_state_path} does not exist. Point it to a '
                                '<iter>.state file under experiments/<name>/training_states, or use --auto_resume.')
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        device = torch.device('cuda', torch.cuda.current_device())
    else:
        device = torch.device('cpu')
    resume_state = torch.load(resume_state_path, map_location=device)
    check_resume(opt, resume_state['iter'])
    return resume_state


_original_init_dist = _dist_util.init_dist


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
    train_mod = sys.modules.get('basicsr.train')
    if train_mod is None:
        import basicsr.train as train_mod
    train_mod.load_resume_state = load_resume_state
    setattr(_base_model, _PATCHED, True)


apply()
