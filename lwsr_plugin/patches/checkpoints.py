"""Checkpoints and training states in BasicSR's own save and load paths.

* Every ``.pth`` / ``.state`` BasicSR's ``BaseModel`` writes goes through :func:`lwsr_plugin.fileio.atomic_save`
  (a kill while saving never leaves a truncated file under the final name, which ``--auto_resume`` would pick), and a
  training state carries the entries of :func:`extra_training_state` (the plugin's resume data, a GradScaler).
* ``load_network`` reads official plain state dicts (no ``params`` key) and names the option and the fix when a
  checkpoint does not fit ``network_g``; ``build_network`` names an unknown arch or argument.
* ``load_resume_state`` maps the state to the model's device (BasicSR maps it to ``torch.cuda.current_device()``)
  and, under ``--auto_resume``, passes over a state that cannot be read, or whose network files are gone, to the
  previous one.
* ``SRModel.save`` stops a run whose weights are no longer finite instead of writing NaN checkpoints.
"""
import contextlib
import os
import sys

import torch

from lwsr_plugin.fileio import (DamagedFileError, all_finite, atomic_save, check_seal, load_state_dict_checked,
                                 read_state_dict)
from lwsr_plugin.data.manifest import release_note
from lwsr_plugin.registration import resolve_network


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


class TorchWithAtomicSave:
    """``torch`` as BasicSR's base_model sees it, except that ``save`` is ``atomic_save``: a run killed while saving
    never leaves a truncated ``.pth`` / ``.state`` under the final name (which --auto_resume would then pick and
    crash on). Training states get the entries of ``extra_training_state``."""

    def __getattr__(self, name):
        return getattr(torch, name)

    save = staticmethod(_save_from_base_model)


def load_network(self, net, load_path, strict=True, param_key='params'):
    """``BaseModel.load_network`` that also reads plain state dicts (the official IMDN/s-LWSR releases, saved without
    a ``params`` key), refuses a sealed file whose bytes changed, names an official release (or warns about a file
    with a release's name but not its SHA-256), and names the option and the fix when the checkpoint does not fit
    ``network_g``."""
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
    note = release_note(load_path)
    if note:
        getattr(logger, note[0])(note[1])
    self._print_different_keys_loading(net, load_net, strict)  # with strict=False it drops mis-shaped keys
    load_state_dict_checked(net, load_net, strict, label, load_path)


def wrap_build_network(original):

    def build_network(opt):
        resolve_network(opt)
        return original(opt)

    build_network.__wrapped__ = original
    return build_network


def wrap_sr_save(original):
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
            check_seal(path)
        except DamagedFileError as err:
            if not opt['auto_resume']:
                raise RuntimeError(f'path.resume_state: {err}') from None
            print(f'lwsr_plugin: skipping training state {path}: damaged (its bytes no longer match the SHA-256 '
                  'written into it); trying the previous one.', file=sys.stderr)
            continue
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
        except DamagedFileError:
            return f'{value}, which is damaged (its bytes no longer match the SHA-256 written into it)'
        except Exception as err:  # any reader failure (truncated zip, bad safetensors header, ...) means unusable
            return f'{value}, which cannot be read ({type(err).__name__})'
    return ''


def _resume_weights_format(opt):
    """BasicSR's ``check_resume`` names ``net_g_<iter>.pth``; a run saving safetensors wrote ``.safetensors``."""
    for key, value in list(opt['path'].items()):
        if key.startswith('pretrain_network') and isinstance(value, str) and value.endswith('.pth') and \
                not os.path.isfile(value) and os.path.isfile(value[:-4] + '.safetensors'):
            opt['path'][key] = value[:-4] + '.safetensors'
