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

Nothing here edits BasicSR's files; every patch replaces a name at the place BasicSR looks it up, once.
"""
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
        return resume_state
    return None


def _resume_weights_format(opt):
    """BasicSR's ``check_resume`` names ``net_g_<iter>.pth``; a run saving safetensors wrote ``.safetensors``."""
    for key, value in list(opt['path'].items()):
        if key.startswith('pretrain_network') and isinstance(value, str) and value.endswith('.pth') and \
                not os.path.isfile(value) and os.path.isfile(value[:-4] + '.safetensors'):
            opt['path'][key] = value[:-4] + '.safetensors'


def atomic_save(obj, f, *args, **kwargs):
    """``torch.save`` to a temp file renamed into place: a process killed while saving never leaves a truncated file
    under the final name."""
    if not isinstance(f, (str, os.PathLike)):
        return torch.save(obj, f, *args, **kwargs)
    tmp = f'{os.fspath(f)}.tmp-{os.getpid()}'
    try:
        torch.save(obj, tmp, *args, **kwargs)
        os.replace(tmp, f)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def save_safetensors(tensors, path, metadata=None):
    """``safetensors.torch.save_file`` to a temp name renamed into place (never a truncated file under ``path``)."""
    from safetensors.torch import save_file
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_safetensors(load_path, param_key):
    """A plugin ``.safetensors`` checkpoint (keys ``params.<name>``, ``params_ema.<name>``) or a plain one."""
    require_safetensors(f'reading {load_path}')
    from safetensors.torch import load_file
    flat = load_file(load_path, device='cpu')
    groups = {}
    for key, value in flat.items():
        prefix, _, name = key.partition('.')
        groups.setdefault(prefix, {})[name] = value
    if groups and set(groups) <= {'params', 'params_ema'}:
        key = param_key if param_key in groups else 'params' if 'params' in groups else 'params_ema'
        return groups[key], key
    return flat, None  # a plain state dict saved by someone else


def read_state_dict(load_path, param_key='params'):
    """The state dict in a checkpoint: under ``param_key`` (BasicSR's files), ``params``, or the root of a plain state
    dict (official releases); ``module.`` prefixes stripped. ``.pth`` files are read weights-only (no code runs);
    ``.safetensors`` files as the plugin writes them. Returns (state_dict, key used)."""
    if str(load_path).endswith('.safetensors'):
        load_net, param_key = _read_safetensors(load_path, param_key)
    else:
        try:
            load_net = torch.load(load_path, map_location='cpu', weights_only=True)
        except Exception as err:
            raise ValueError(f'{load_path} cannot be read as a weights-only checkpoint ({type(err).__name__}: '
                             f'{str(err).splitlines()[0][:200]}). Give a BasicSR .pth / .safetensors network '
                             'file.') from None
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
    BaseModel.load_network = load_network
    BaseModel.update_learning_rate = _wrap_update_learning_rate(BaseModel.update_learning_rate)
    _base_model.torch = _TorchWithAtomicSave()
    _logger.MessageLogger.__call__ = _wrap_message_logger_call(_logger.MessageLogger.__call__)
    parse_options = _wrap_parse_options(_options.parse_options)
    _options.parse_options = parse_options  # before basicsr.train/test import the name (and __main__ scripts)
    import basicsr.archs
    import basicsr.models.sr_model as _sr_model
    wrapped = _wrap_build_network(basicsr.archs.build_network)
    for module in [basicsr.archs, _sr_model] + [m for n, m in sys.modules.items() if n.startswith('basicsr.models.')]:
        if getattr(module, 'build_network', None) is wrapped.__wrapped__:
            module.build_network = wrapped
    import basicsr.test as test_mod
    import basicsr.train as train_mod
    train_mod.load_resume_state = load_resume_state
    for mod in (train_mod, test_mod):
        mod.parse_options = parse_options
        mod.get_root_logger = _wrap_get_root_logger(_logger.get_root_logger)
    setattr(_base_model, _PATCHED, True)


apply()
