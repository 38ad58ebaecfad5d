"""Checks of an option file before BasicSR starts: mistakes fail in one message naming the option and the fix,
instead of a traceback minutes into a run (or after ``experiments/<name>`` was archived).

What is checked without reading any pixel: required keys (``scale``, ``train.total_iter``, ``optim_g``, a loss,
``gt_size`` ...), registered types (arch, model, dataset, loss, metric, optimizer, scheduler), ``num_worker_per_gpu`` (a
count or ``auto``), and the data that BasicSR's paired datasets would read: folders that exist and hold only images, an
LR image for every GT image, LR x scale = GT (image headers, or ``meta_info.txt`` of an LMDB), ``gt_size`` against the
smallest image, a batch that the set can fill, PNG/JPEG files cut short, LMDB files cut short (SIGBUS otherwise) and
``meta_info.txt`` keys that are not stored.
"""
import os
import sys

from lwsr_plugin.options import OptionError, dataset_paths, keys, load_yaml, opt_path
from lwsr_plugin.options.workers import check_num_workers

# datasets that read dataroot_gt/dataroot_lq with BasicSR's pairing rules (filename_tmpl, meta_info, LMDB keys)
PAIRED_TYPES = ('PairedImageDataset', 'PairedGrayImageDataset', 'UpsampledPairedImageDataset',
                'InMemoryPairedImageDataset')
BASICSR_SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')
IO_BACKENDS = ('disk', 'lmdb', 'memcached')


def check_options(opt_path, root=None, opt=None, kind=None):
    """Validate the parts of an option file that BasicSR only discovers late (``opt``: the file already loaded;
    ``kind``: 'train' or 'test', by default 'train' when the file has ``datasets.train``). Returns the loaded dict."""
    import torch

    from lwsr_plugin.fileio import load_state_dict_checked, read_state_dict
    from lwsr_plugin.registration import resolve_network
    root = root or os.getcwd()
    opt = load_yaml(opt_path) if opt is None else opt
    if kind is None:
        kind = 'train' if 'train' in (opt.get('datasets') or {}) else 'test'
    _check_structure(opt, kind)
    for key, path in dataset_paths(opt, root):
        is_lmdb = path.rstrip('/').endswith('.lmdb')
        if not os.path.exists(path):
            hint = ' Build the LMDB with scripts/data_preparation (see docs/data_preparation.md).' if is_lmdb else ''
            raise OptionError(f'{key}: {path} does not exist (relative paths are read from {root}). Fix the path, '
                              f'or run from the folder that holds `datasets/`.{hint}')
        if is_lmdb and not os.path.isfile(os.path.join(path, 'meta_info.txt')):
            raise OptionError(f'{key}: {path} has no meta_info.txt, which BasicSR needs to list LMDB keys. '
                              'Recreate the LMDB with the plugin scripts (they write it).')
        if is_lmdb:
            from lwsr_plugin.data.lmdb_io import lmdb_file_problem
            problem = lmdb_file_problem(path)
            if problem:
                raise OptionError(f'{key}: {problem}.')
    num_gpu = opt.get('num_gpu', 1)
    if num_gpu not in (0, 'auto') and not torch.cuda.is_available():
        raise OptionError(f'num_gpu: {num_gpu}, but no CUDA GPU is visible. Use `num_gpu: 0` (CPU) or `num_gpu: auto`.')
    if isinstance(num_gpu, int) and num_gpu > 1 and torch.cuda.is_available() and num_gpu > torch.cuda.device_count():
        raise OptionError(f'num_gpu: {num_gpu}, but only {torch.cuda.device_count()} CUDA GPUs are visible. Use '
                          f'`num_gpu: {torch.cuda.device_count()}` or `num_gpu: auto`.')
    if opt.get('network_g'):
        # not basicsr's build_network: it logs, and an early get_root_logger() call would disable the log file
        net_opt = dict(opt['network_g'])
        cls = resolve_network(net_opt)
        with torch.device('meta'):  # runs the arch's own argument checks without allocating it
            net = cls(**{k: v for k, v in net_opt.items() if k != 'type'})
    _check_model_options(opt)
    if kind == 'train':
        _check_training(opt)
    scale = opt.get('scale')
    net_scale = (opt.get('network_g') or {}).get('upscale')
    if scale is not None and net_scale is not None and scale != net_scale:
        raise OptionError(f'scale: {scale} but network_g.upscale: {net_scale}. Set both to the same factor.')
    _check_datasets(opt, root, kind)
    path_opt = opt.get('path') or {}
    pretrain = path_opt.get('pretrain_network_g')
    if pretrain and opt.get('network_g'):
        full = os.path.join(root, os.path.expanduser(pretrain))
        if not os.path.isfile(full):
            raise OptionError(f'path.pretrain_network_g: {pretrain} does not exist. Fix the path or set it to ~.')
        try:
            loaded, _ = read_state_dict(full, path_opt.get('param_key_g', 'params'))
        except (KeyError, ValueError) as err:
            raise OptionError(f'path.pretrain_network_g: {err.args[0] if err.args else err}') from None
        if path_opt.get('strict_load_g', True):
            try:  # assign=True: the meta-device network takes the tensors without copying
                load_state_dict_checked(net, loaded, True, 'path.pretrain_network_g', pretrain, assign=True)
            except ValueError as err:
                raise OptionError(str(err)) from None
    return opt


def _positive_int(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number >= 1 and number == int(number) else None


def _check_structure(opt, kind):
    """Keys BasicSR reads with ``opt[...]`` (a KeyError deep in its code otherwise), and the dataset phases."""
    datasets = opt.get('datasets')
    if datasets is not None and not isinstance(datasets, dict):
        raise OptionError('datasets: must be a mapping of phases (train, val, test_1, ...) to dataset options.')
    for phase, ds in (datasets or {}).items():
        if not isinstance(ds, dict):
            raise OptionError(f'datasets.{phase}: must be a mapping of dataset options (type, dataroot_gt, ...).')
        if kind == 'train' and phase.split('_')[0] not in ('train', 'val'):
            raise OptionError(f'datasets.{phase}: lwsr-train knows the phases `train` and `val*` only. Rename it '
                              '(e.g. val_2) or move it to a test option file.')
        if 'type' not in ds:
            raise OptionError(f'datasets.{phase}.type: missing. Add e.g. `type: PairedImageDataset`.')
    if datasets and opt.get('scale') is None:
        up = (opt.get('network_g') or {}).get('upscale')
        raise OptionError(f'scale: missing. Add `scale: {up or 4}` at the top level (the LR -> HR factor of the '
                          'datasets and of network_g.upscale).')
    if datasets and _positive_int(opt.get('scale')) != opt.get('scale'):
        raise OptionError(f'scale: {opt.get("scale")!r} is not a positive integer. Use the LR -> HR factor, e.g. 4.')
    if kind != 'train':
        return
    if 'train' not in (datasets or {}):
        raise OptionError('datasets.train: missing; lwsr-train needs a training set. Add a `train:` entry under '
                          '`datasets:` (see options/train_*.yml).')
    train = opt.get('train')
    if not isinstance(train, dict):
        raise OptionError('train: missing. Add the `train:` section (optim_g, scheduler, total_iter, pixel_opt); '
                          'see options/train_*.yml.')
    total = train.get('total_iter')
    if total is None:
        raise OptionError('train.total_iter: missing. Add the number of iterations, e.g. `total_iter: 1000000`.')
    if _positive_int(total) is None:
        raise OptionError(f'train.total_iter: {total!r} is not a positive whole number of iterations, e.g. 1000000.')
    optim = train.get('optim_g')
    if not isinstance(optim, dict) or 'type' not in optim:
        raise OptionError('train.optim_g: missing (or without `type`). Add e.g. `optim_g: {type: Adam, lr: 2e-4, '
                          'betas: [0.9, 0.999]}`.')
    if not isinstance(opt.get('logger'), dict) or 'use_tb_logger' not in opt['logger']:
        raise OptionError('logger.use_tb_logger: missing (BasicSR reads it). Add `logger: {print_freq: 100, '
                          'save_checkpoint_freq: 5000, use_tb_logger: true}`.')


def _check_training(opt):
    """Optimizer, scheduler and losses as the model will build them (without building them: BasicSR's builders log,
    and an early log call would disable the run's log file)."""
    import inspect

    import torch
    from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
    train = opt['train']
    total = _positive_int(train['total_iter'])
    model_cls = MODEL_REGISTRY.get(opt.get('model_type', 'SRModel'))
    optim = dict(train['optim_g'])
    optim_type = optim.pop('type')
    try:
        model_cls.get_optimizer(None, optim_type, [torch.nn.Parameter(torch.zeros(1))], **optim)
    except NotImplementedError:
        raise OptionError(f'train.optim_g.type: {optim_type!r} is not supported by BasicSR 1.4.2 (Adam only). Use '
                          '`type: Adam`.') from None
    except (TypeError, ValueError) as err:
        raise OptionError(f'train.optim_g: {optim_type} does not accept these settings ({err}). Fix the keys or '
                          'values.') from None
    except AttributeError:  # a model whose get_optimizer needs its instance: it checks its own options
        pass
    scheduler = train.get('scheduler')
    if isinstance(scheduler, dict):
        stype = scheduler.get('type')
        if stype not in BASICSR_SCHEDULERS and getattr(model_cls, 'setup_schedulers', None) is \
                getattr(MODEL_REGISTRY.get('SRModel'), 'setup_schedulers', None):
            raise OptionError(f'train.scheduler.type: {stype!r} is not a BasicSR 1.4.2 scheduler. Use one of '
                              f'{list(BASICSR_SCHEDULERS)}.')
        if stype == 'CosineAnnealingRestartLR':
            periods = scheduler.get('periods') or []
            if sum(periods) < total:
                raise OptionError(f'train.scheduler.periods: {periods} sum to {sum(periods)}, less than '
                                  f'train.total_iter {total}; BasicSR\'s cosine schedule crashes past its last period. '
                                  f'Make the periods add up to at least {total}.')
    from basicsr.models.sr_model import SRModel
    losses = {k: v for k, v in train.items() if k.endswith('_opt') and isinstance(v, dict)}
    if issubclass(model_cls, SRModel) and not (train.get('pixel_opt') or train.get('perceptual_opt')):
        raise OptionError('train.pixel_opt: missing (and no perceptual_opt): the model has no loss to train with. '
                          'Add e.g. `pixel_opt: {type: L1Loss, loss_weight: 1.0, reduction: mean}`.')
    for key, loss in losses.items():
        ltype = loss.get('type')
        if ltype not in LOSS_REGISTRY:
            import difflib
            close = difflib.get_close_matches(str(ltype), list(LOSS_REGISTRY.keys()), n=3)
            raise OptionError(f'train.{key}.type: {ltype!r} is not registered in BasicSR\'s LOSS_REGISTRY'
                              + (f'; did you mean {close}?' if close else '.')
                              + f' Registered: {sorted(LOSS_REGISTRY.keys())}.')
        params = inspect.signature(LOSS_REGISTRY.get(ltype)).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = [k for k in loss if k != 'type' and k not in params]
            if unknown:
                raise OptionError(f'train.{key}: {unknown} not accepted by {ltype}. It takes '
                                  f'{[k for k in params if k != "self"]}.')


def _check_model_options(opt):
    """The plugin models' own options (train.amp, train.compile, logger.save_format, ...)."""
    from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

    from lwsr_plugin.models.training_options import TrainingOptionError
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
    for name, metric in (((opt.get('val') or {}).get('metrics')) or {}).items():
        mtype = metric.get('type') if isinstance(metric, dict) else None
        if mtype not in METRIC_REGISTRY:
            raise OptionError(f'val.metrics.{name}.type: {mtype!r} is not registered in BasicSR\'s METRIC_REGISTRY. '
                              f'Registered: {sorted(METRIC_REGISTRY.keys())}.')


# ---------------------------------------------------------------------------------------------------------- data
class _Pairs:
    """What a paired dataset will read: (name, GT (w, h), LQ (w, h)) for every pair, from image headers (disk) or
    ``meta_info.txt`` (LMDB); sizes may be None where the source does not say."""

    def __init__(self, label):
        self.label = label
        self.items = []


def _check_datasets(opt, root, kind):
    from basicsr.utils.registry import DATASET_REGISTRY
    scale = opt.get('scale')
    for phase, ds in (opt.get('datasets') or {}).items():
        label = f'datasets.{phase}'
        dtype = ds.get('type')
        if dtype not in DATASET_REGISTRY:
            import difflib
            close = difflib.get_close_matches(str(dtype), list(DATASET_REGISTRY.keys()), n=3)
            raise OptionError(f'{label}.type: {dtype!r} is not registered in BasicSR\'s DATASET_REGISTRY'
                              + (f'; did you mean {close}?' if close else '.')
                              + ' For your own dataset, list its file under `user_modules:`.')
        if 'num_worker_per_gpu' in ds:
            check_num_workers(label, ds['num_worker_per_gpu'])
        on_corrupt = keys.allowed('datasets.*.on_corrupt')
        if ds.get('on_corrupt', keys.default('datasets.*.on_corrupt')) not in on_corrupt:
            raise OptionError(f'{label}.on_corrupt: {ds["on_corrupt"]!r} is not '
                              f'{" or ".join(f"`{v}`" for v in on_corrupt)} (what to do with an '
                              'image that cannot be decoded).')
        if dtype not in PAIRED_TYPES:
            continue
        backend = (ds.get('io_backend') or {}).get('type')
        if backend not in IO_BACKENDS:
            raise OptionError(f'{label}.io_backend.type: {backend!r} is not a BasicSR backend. Use `disk` (image '
                              'folders) or `lmdb` (.lmdb folders).')
        for key in ('dataroot_gt', 'dataroot_lq'):
            if not ds.get(key):
                raise OptionError(f'{label}.{key}: missing. {dtype} reads GT and LR images from two folders; add '
                                  f'`{key}: <folder>`.')
        is_train = phase == 'train' and kind == 'train'
        if is_train:
            for key, example in (('gt_size', '128'), ('use_hflip', 'true'), ('use_rot', 'true')):
                if key not in ds:
                    raise OptionError(f'{label}.{key}: missing ({dtype} needs it for training). Add `{key}: '
                                      f'{example}`.')
            gt_size = ds['gt_size']
            if _positive_int(gt_size) != gt_size:
                raise OptionError(f'{label}.gt_size: {gt_size!r} is not a positive integer (HR patch side in px).')
            if gt_size % scale:
                lower, upper = gt_size // scale * scale, -(-gt_size // scale) * scale
                raise OptionError(f'{label}.gt_size: {gt_size} is not a multiple of scale {scale}, so the LR patch '
                                  f'would be {gt_size / scale:g} px. Use {lower or upper} or {upper}.')
        gt = os.path.join(root, os.path.expanduser(str(ds['dataroot_gt'])))
        lq = os.path.join(root, os.path.expanduser(str(ds['dataroot_lq'])))
        if backend == 'lmdb':
            pairs = _lmdb_pairs(label, gt, lq)
        elif backend == 'disk':
            pairs = _disk_pairs(label, ds, gt, lq)
        else:
            continue
        _check_pair_sizes(label, pairs, scale, ds if is_train else None, exact=is_train)
        if is_train:
            _check_batch(opt, label, ds, len(pairs.items))


def _list_files(label, key, folder):
    """Files BasicSR's ``scandir`` lists (non-recursive, hidden ones skipped); every one must be an image."""
    from lwsr_plugin.data.images import IMG_EXTS
    if not os.path.isdir(folder):
        raise OptionError(f'{label}.{key}: {folder} is not a folder. Point it to the folder of images.')
    names = sorted(n for n in os.listdir(folder) if not n.startswith('.') and os.path.isfile(os.path.join(folder, n)))
    for name in names:
        if not name.lower().endswith(IMG_EXTS):
            raise OptionError(f'{label}.{key}: {os.path.join(folder, name)} is not an image (BasicSR would pair it '
                              'with an LR file). Move it out of the folder.')
    if not names:
        raise OptionError(f'{label}.{key}: {folder} holds no images. Point it to the folder of the '
                          f'{"HR (GT)" if key == "dataroot_gt" else "LR"} images.')
    return names


def _image_size(label, key, path):
    """(w, h) from the header, after a check that the file is complete (PNG ends with IEND, JPEG with EOI): a
    truncated file is the usual corrupt image, and a decoder met mid-training would stop the run."""
    from lwsr_plugin.data.images import DataPrepError, image_size
    fix = 'Replace the file (copy it again), or remove it and its LR/GT partner'
    size = os.path.getsize(path)
    if size == 0:
        raise OptionError(f'{label}.{key}: {path} is empty (0 bytes). {fix}.')
    with open(path, 'rb') as f:
        head = f.read(8)
        f.seek(max(0, size - 12))
        tail = f.read()
    if head == b'\x89PNG\r\n\x1a\n' and tail[4:8] != b'IEND':
        raise OptionError(f'{label}.{key}: {path} is a truncated PNG (no IEND chunk at its end). {fix}.')
    if head[:2] == b'\xff\xd8' and b'\xff\xd9' not in tail:
        raise OptionError(f'{label}.{key}: {path} is a truncated JPEG (no end-of-image marker). {fix}.')
    try:
        return image_size(path)
    except DataPrepError as err:
        raise OptionError(f'{label}.{key}: {err}. {fix}.') from None


def _disk_pairs(label, ds, gt, lq):
    """BasicSR's ``paired_paths_from_folder`` / ``paired_paths_from_meta_info_file`` pairing, checked."""
    tmpl = ds.get('filename_tmpl', '{}')
    pairs = _Pairs(label)
    if ds.get('meta_info_file'):
        meta = os.path.join(os.getcwd(), os.path.expanduser(str(ds['meta_info_file'])))
        with open(meta, encoding='utf-8') as f:
            names = [line.strip().split(' ')[0] for line in f if line.strip()]
        if not names:
            raise OptionError(f'{label}.meta_info_file: {meta} lists no images. Regenerate it, or remove the key to '
                              'pair the folders by file name.')
        for name in names:
            if not os.path.isfile(os.path.join(gt, name)):
                raise OptionError(f'{label}.meta_info_file: {meta} lists {name}, which is not in {gt} (a stale '
                                  'meta_info file). Regenerate it, or remove the key to pair the folders by name.')
        gt_names = names
    else:
        gt_names = _list_files(label, 'dataroot_gt', gt)
        lq_names = _list_files(label, 'dataroot_lq', lq)
        if len(gt_names) != len(lq_names):
            raise OptionError(f'{label}: {len(gt_names)} GT images in {gt} but {len(lq_names)} LR images in {lq}; '
                              'every GT image needs exactly one LR image. Make the two folders match.')
    for name in gt_names:
        stem, ext = os.path.splitext(os.path.basename(name))
        lq_name = f'{tmpl.format(stem)}{ext}'
        lq_path = os.path.join(lq, lq_name)
        if not os.path.isfile(lq_path):
            raise OptionError(f'{label}: no LR image {lq_path} for GT {name} (filename_tmpl {tmpl!r} gives '
                              f'{lq_name!r}). Fix filename_tmpl (e.g. \'{{}}x4\' for babyx4.png) or dataroot_lq.')
        pairs.items.append((name, _image_size(label, 'dataroot_gt', os.path.join(gt, name)),
                            _image_size(label, 'dataroot_lq', lq_path)))
    return pairs


def _lmdb_keys(label, key, folder):
    """{key: (w, h) or None} of an LMDB's ``meta_info.txt``, as BasicSR reads it (the key is the name up to the
    first dot), after checking that every listed key is stored."""
    import re

    import lmdb
    if not folder.rstrip('/').endswith('.lmdb'):
        raise OptionError(f'{label}.{key}: {folder} must end with .lmdb for io_backend lmdb (BasicSR requires it). '
                          'Rename the folder or use io_backend: {type: disk} for an image folder.')
    meta_path = os.path.join(folder, 'meta_info.txt')
    keys = {}
    with open(meta_path, encoding='utf-8', errors='replace') as f:
        for line in f:
            if not line.strip():
                continue
            m = re.match(r'^\S+? \((\d+),(\d+),(\d+)\)', line.strip())
            keys[line.split('.')[0]] = (int(m.group(2)), int(m.group(1))) if m else None
    if not keys:
        raise OptionError(f'{label}.{key}: {meta_path} lists no records. Rebuild the LMDB.')
    try:
        env = lmdb.open(folder, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as err:
        raise OptionError(f'{label}.{key}: {folder} cannot be opened as an LMDB ({err}). Rebuild it.') from None
    try:
        with env.begin(buffers=True) as txn:
            missing = [k for k in keys if txn.get(k.encode('utf-8', 'replace')) is None]
    finally:
        env.close()
    if missing:
        raise OptionError(f'{label}.{key}: {meta_path} lists {len(missing)} keys that data.mdb does not hold (e.g. '
                          f'{missing[0]!r}): a stale meta_info.txt. Rebuild the LMDB (its builder writes both).')
    return keys


def _lmdb_pairs(label, gt, lq):
    gt_keys = _lmdb_keys(label, 'dataroot_gt', gt)
    lq_keys = _lmdb_keys(label, 'dataroot_lq', lq)
    only_gt, only_lq = sorted(gt_keys.keys() - lq_keys.keys()), sorted(lq_keys.keys() - gt_keys.keys())
    if only_gt or only_lq:
        which = f'{only_gt[0]!r} is in the GT LMDB only' if only_gt else f'{only_lq[0]!r} is in the LR LMDB only'
        raise OptionError(f'{label}: the GT and LR LMDBs hold different keys ({len(only_gt) + len(only_lq)} differ; '
                          f'{which}). Build both with one lwsr-prepare-* run (same keys in each).')
    pairs = _Pairs(label)
    pairs.items = [(k, gt_keys[k], lq_keys[k]) for k in sorted(gt_keys)]
    return pairs


def _check_pair_sizes(label, pairs, scale, train_ds, exact):
    """LR x scale = GT (training crops need it exactly; testing trims GT to LR x scale), and for training a
    ``gt_size`` patch fits in the smallest pair."""
    smallest = None
    for name, gt_size, lq_size in pairs.items:
        if gt_size is None or lq_size is None:
            continue
        (gw, gh), (lw, lh) = gt_size, lq_size
        fits = (lw * scale, lh * scale) == (gw, gh) if exact else (lw * scale <= gw and lh * scale <= gh)
        if not fits:
            ratio = gw / lw if lw else 0
            guess = f' (the LR image looks like x{ratio:g})' if lw and abs(ratio - round(ratio)) < 0.05 else ''
            raise OptionError(f'{label}: LR of {name} is {lw}x{lh}, GT is {gw}x{gh}: not GT / scale {scale}{guess}. '
                              'Point dataroot_lq to the LR folder of this scale, or set scale to the factor of the '
                              'LR images.')
        if smallest is None or min(gw, gh) < smallest[0]:
            smallest = (min(gw, gh), name, gw, gh)
    if train_ds is not None and smallest is not None and train_ds['gt_size'] > smallest[0]:
        side = smallest[0] // scale * scale
        raise OptionError(f'{label}.gt_size: {train_ds["gt_size"]} is larger than the smallest training image '
                          f'({smallest[1]}: {smallest[2]}x{smallest[3]}). Use gt_size {side} or less, or remove the '
                          'small images.')


def _processes():
    """``(processes, rank)`` of the run BasicSR is about to start: torchrun's or srun's task count when
    ``--launcher pytorch``/``slurm`` makes it distributed; one process otherwise (torchrun without ``--launcher``
    starts independent runs)."""
    argv = sys.argv[1:]
    launcher = next((a.split('=', 1)[1] for a in argv if a.startswith('--launcher=')), None)
    if launcher is None and '--launcher' in argv[:-1]:
        launcher = argv[argv.index('--launcher') + 1]
    if launcher == 'pytorch':
        return int(os.environ.get('WORLD_SIZE') or 1), int(os.environ.get('RANK') or 0)
    if launcher == 'slurm':  # init_dist sets RANK/WORLD_SIZE from these only later
        return int(os.environ.get('SLURM_NTASKS') or 1), int(os.environ.get('SLURM_PROCID') or 0)
    return 1, 0


def _check_batch(opt, label, ds, n_pairs):
    """What each process's training loader draws, counted as BasicSR 1.4.2 draws it: ``EnlargedSampler`` gives each of
    P processes ``ceil(pairs x dataset_enlarge_ratio / P)`` samples (the epoch's order padded with repeats), and the
    loader takes batches of ``batch_size_per_gpu x train.accumulate`` (times ``num_gpu`` for one DataParallel process)
    and drops the incomplete last one. A share smaller than one batch gives 0 iterations per epoch (BasicSR then
    "trains" 0 iterations and saves an untrained network): refused. A set smaller than P batches trains as BasicSR
    trains it, with one warning on rank 0 that the ranks see repeated samples."""
    import math
    world, rank = _processes()
    num_gpu = opt.get('num_gpu', 1)
    from lwsr_plugin.models.training_options import TrainingOptionError, accumulate_steps
    try:
        accumulate = accumulate_steps(opt.get('train') or {})
    except TrainingOptionError:  # refused with its fix by the model's option check or apply_accumulate
        accumulate = 1
    gpus = 1
    if world == 1:  # BasicSR's non-distributed loader multiplies the batch by num_gpu (0: CPU counts as 1)
        if num_gpu == 'auto':
            import torch
            num_gpu = torch.cuda.device_count()  # what BasicSR's parse_options sets
        gpus = max(num_gpu if isinstance(num_gpu, int) else 1, 1)
    batch = ds.get('batch_size_per_gpu', 1) * accumulate * gpus  # the loader's batch (lwsr_model.apply_accumulate)
    ratio = ds.get('dataset_enlarge_ratio', 1)
    share = math.ceil(n_pairs * ratio / world)
    if share < batch:
        parts = [f'{gpus} GPUs, num_gpu'] * (gpus > 1) + [f'{accumulate} micro-batches, train.accumulate'] * (
            accumulate > 1)
        what = f'a batch of {batch}' + (f' ({"; ".join(parts)})' if parts else '')
        fit = share // (accumulate * gpus)
        need = math.ceil(((batch - 1) * world + 1) / n_pairs)  # the least ratio that gives every process one batch
        fixes = [f'batch_size_per_gpu: {fit} (or less)'] * (fit > 0) + [f'dataset_enlarge_ratio: {need} (or more)']
        if world == 1:
            raise OptionError(f'{label}.batch_size_per_gpu: {what} is larger than the training set ({n_pairs} pairs x '
                              f'dataset_enlarge_ratio {ratio}), so no batch would ever be drawn. Use '
                              f'{" or ".join(fixes)}.')
        raise OptionError(f'{label}.batch_size_per_gpu: {world} processes x {what} need {world * batch} samples, but '
                          f'each process draws only ceil({n_pairs} pairs x dataset_enlarge_ratio {ratio} / {world}) = '
                          f'{share} per epoch and BasicSR drops an incomplete batch, so no batch would ever be drawn. '
                          f'Use {" or ".join(fixes)}, or start fewer processes.')
    if n_pairs * ratio < world * batch and rank == 0:
        # BasicSR trains this (each share is padded); one line before the run says why steps repeat samples
        print(f'lwsr_plugin: warning: {label}: {world} processes x a batch of {batch} draw {world * batch} samples '
              f"per step from {n_pairs} pairs x dataset_enlarge_ratio {ratio}; BasicSR pads each process's share to "
              f'{share}, so ranks see repeated samples. Add pairs or start fewer processes for distinct ones.',
              file=sys.stderr, flush=True)


USAGE_ERROR = 2  # exit status of a run refused before it started (bad option file or command line)


def check_cli_options(argv=None, opt=None, kind=None):
    """Run ``check_options`` on the ``-opt`` of a BasicSR command line (``opt``: that file already loaded); print the
    message and exit with status 2 on failure."""
    path = opt_path(sys.argv[1:] if argv is None else argv)
    if not path:
        return None
    try:
        return check_options(path, opt=opt, kind=kind)
    except (OptionError, KeyError, TypeError, ValueError) as err:
        msg = err.args[0] if err.args else str(err)
        print(f'lwsr_plugin: error in {path}: {msg}', file=sys.stderr)
        sys.exit(USAGE_ERROR)
