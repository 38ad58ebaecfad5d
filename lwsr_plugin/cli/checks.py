"""Checks of an option file before BasicSR starts: mistakes fail in one message naming the option and the fix,
instead of a traceback minutes into a run (or after ``experiments/<name>`` was archived)."""
import argparse
import os
import sys

from lwsr_plugin.options import OptionError, load_yaml


def _dataset_paths(opt, root):
    for phase, ds in (opt.get('datasets') or {}).items():
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
            value = ds.get(key)
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                yield f'datasets.{phase}.{key}', os.path.join(root, os.path.expanduser(str(v)))


def check_options(opt_path, root=None, opt=None):
    """Validate the parts of an option file that BasicSR only discovers late (``opt``: the file already loaded).
    Returns the loaded dict."""
    import torch

    from lwsr_plugin.compat import load_state_dict_checked, read_state_dict, resolve_network
    root = root or os.getcwd()
    opt = load_yaml(opt_path) if opt is None else opt
    for key, path in _dataset_paths(opt, root):
        is_lmdb = path.rstrip('/').endswith('.lmdb')
        if not os.path.exists(path):
            hint = ' Build the LMDB with scripts/data_preparation (see docs/data_preparation.md).' if is_lmdb else ''
            raise OptionError(f'{key}: {path} does not exist (relative paths are read from {root}). Fix the path, '
                              f'or run from the folder that holds `datasets/`.{hint}')
        if is_lmdb and not os.path.isfile(os.path.join(path, 'meta_info.txt')):
            raise OptionError(f'{key}: {path} has no meta_info.txt, which BasicSR needs to list LMDB keys. '
                              'Recreate the LMDB with the plugin scripts (they write it).')
    num_gpu = opt.get('num_gpu', 1)
    if num_gpu not in (0, 'auto') and not torch.cuda.is_available():
        raise OptionError(f'num_gpu: {num_gpu}, but no CUDA GPU is visible. Use `num_gpu: 0` (CPU) or `num_gpu: auto`.')
    if opt.get('network_g'):
        # not basicsr's build_network: it logs, and an early get_root_logger() call would disable the log file
        net_opt = dict(opt['network_g'])
        cls = resolve_network(net_opt)
        with torch.device('meta'):  # runs the arch's own argument checks without allocating it
            net = cls(**{k: v for k, v in net_opt.items() if k != 'type'})
    _check_model_options(opt)
    scale = opt.get('scale')
    net_scale = (opt.get('network_g') or {}).get('upscale')
    if scale is not None and net_scale is not None and scale != net_scale:
        raise OptionError(f'scale: {scale} but network_g.upscale: {net_scale}. Set both to the same factor.')
    path_opt = opt.get('path') or {}
    pretrain = path_opt.get('pretrain_network_g')
    if pretrain and opt.get('network_g'):
        full = os.path.join(root, os.path.expanduser(pretrain))
        if not os.path.isfile(full):
            raise OptionError(f'path.pretrain_network_g: {pretrain} does not exist. Fix the path or set it to ~.')
        if path_opt.get('strict_load_g', True):
            loaded, _ = read_state_dict(full, path_opt.get('param_key_g', 'params'))
            try:  # assign=True: the meta-device network takes the tensors without copying
                load_state_dict_checked(net, loaded, True, 'path.pretrain_network_g', pretrain, assign=True)
            except ValueError as err:
                raise OptionError(str(err)) from None
    return opt


def _check_model_options(opt):
    """The plugin models' own options (train.amp, train.compile, logger.save_format, ...)."""
    from basicsr.utils.registry import MODEL_REGISTRY

    from lwsr_plugin.models.fast_training import TrainingOptionError
    from lwsr_plugin.models.lwsr_model import LWSRModel
    model_type = opt.get('model_type', 'SRModel')
    if model_type not in MODEL_REGISTRY:
        raise OptionError(f'model_type: {model_type!r} is not registered in BasicSR\'s MODEL_REGISTRY. Registered: '
                          f'{sorted(MODEL_REGISTRY.keys())}. For your own model, list its file under `user_modules:`.')
    if issubclass(MODEL_REGISTRY.get(model_type), LWSRModel):
        try:
            LWSRModel.parse_options(opt)
        except TrainingOptionError as err:
            raise OptionError(str(err)) from None


def opt_path(argv):
    """The ``-opt`` value of a BasicSR command line (None when absent)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', required=False)
    return parser.parse_known_args(argv)[0].opt


def check_cli_options(argv=None, opt=None):
    """Run ``check_options`` on the ``-opt`` of a BasicSR command line (``opt``: that file already loaded); exit
    with the message on failure."""
    path = opt_path(sys.argv[1:] if argv is None else argv)
    if not path:
        return None
    try:
        return check_options(path, opt=opt)
    except (OptionError, KeyError, TypeError, ValueError) as err:
        msg = err.args[0] if err.args else str(err)
        sys.exit(f'lwsr_plugin: error in {path}: {msg}')
