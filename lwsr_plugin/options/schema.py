"""The JSON Schema (draft 2020-12) of a BasicSR option file, made from the registries of this process when it is
asked for: every registered arch, model, dataset, loss and metric (BasicSR's, the plugin's, and a user's
``user_modules`` once imported), BasicSR's own keys (below), and the plugin's keys (:mod:`lwsr_plugin.options.keys`).

Unknown keys are refused where BasicSR reads a fixed set: the top level, ``path``, ``logger``, ``network_*`` (an
arch's constructor arguments, unless it takes ``**kwargs``), losses, optimizers, schedulers and metrics (their
arguments), ``train`` and ``val`` of SRModel and of the plugin's models (BasicSR's keys plus the plugin keys that
model reads), and the datasets of BasicSR's ``PairedImageDataset``/``SingleImageDataset`` and of the plugin's types.
Other models' and datasets' sections accept further keys, which their code may read.

An argument's JSON type comes from its annotation, else from its default; an int default gives ``number``, since
such arguments take floats too (``eta_min=0``, ``weight_decay=0``). Only keywords that mean the same in draft-07
are used (``if``/``then``, a ``$ref`` with no siblings): the YAML language server of VS Code and other editors
applies draft-07 rules whatever ``$schema`` says.
"""
import inspect
import json
import math
import types
import typing

from lwsr_plugin.options import keys

DRAFT = 'https://json-schema.org/draft/2020-12/schema'

_STR, _BOOL, _NUM = {'type': 'string'}, {'type': 'boolean'}, {'type': 'number'}
_INT1 = {'type': 'integer', 'minimum': 1}
_POSITIVE = {'type': 'number', 'exclusiveMinimum': 0}
_PATH = {'type': ['string', 'null']}
_STRINGS = {'anyOf': [_STR, {'type': 'array', 'items': _STR}]}
_SET = 'Set by BasicSR when it reads the file; a value here is replaced.'
_REF = {name: {'$ref': f'#/$defs/{name}'} for name in ('network', 'dataset', 'loss', 'optimizer', 'scheduler',
                                                        'metric')}

# BasicSR 1.4.2's own keys: basicsr/utils/options.py, train.py, test.py, models/base_model.py, models/sr_model.py,
# data/__init__.py (build_dataloader), data/paired_image_dataset.py, utils/logger.py
TOP = {
    'name': (_STR, 'Experiment name: experiments/<name>, results/<name>.'),
    'scale': (_INT1, 'LR -> HR factor of the datasets (and of network_g.upscale).'),
    'num_gpu': ({'anyOf': [{'type': 'integer', 'minimum': 0}, {'const': 'auto'}]}, '0: CPU; auto: every visible GPU.'),
    'manual_seed': ({'type': ['integer', 'null']}, 'Seed of random, NumPy and torch; BasicSR draws one when absent.'),
    'find_unused_parameters': (_BOOL, 'DistributedDataParallel\'s find_unused_parameters.'),
    'is_train': (_BOOL, _SET), 'dist': (_BOOL, _SET), 'rank': ({'type': 'integer'}, _SET),
    'world_size': ({'type': 'integer'}, _SET), 'auto_resume': (_BOOL, _SET), 'root_path': (_STR, _SET),
}
REQUIRED = ('name', 'model_type', 'num_gpu', 'datasets', 'path')  # BasicSR reads them with opt[...]
PATH = {
    'pretrain_network_g': (_PATH, 'Weights network_g starts from (.pth or .safetensors); ~: none.'),
    'strict_load_g': (_BOOL, 'The weights must fit network_g exactly.'),
    'param_key_g': (_PATH, 'Key of the weights in the file: params, params_ema; ~: the whole file.'),
    'resume_state': (_PATH, 'Training state (.state) to resume from; ~: none.'),
    'ignore_resume_networks': ({'anyOf': [_STRINGS, {'type': 'null'}]}, 'Networks a resume leaves as they are.'),
    **{k: (_STR, _SET) for k in ('experiments_root', 'models', 'training_states', 'log', 'visualization',
                                 'results_root')},
}
PATH_PATTERNS = {'^(pretrain_network|strict_load|param_key)_': 'The same key for another network (network_d, ...).'}
LOGGER = {
    'print_freq': (_POSITIVE, 'Iterations between log lines.'),
    'save_checkpoint_freq': (_POSITIVE, 'Iterations between saved checkpoints and training states.'),
    'use_tb_logger': (_BOOL, 'Write tensorboard logs to tb_logger/<name>.'),
    'wandb': ({'type': ['object', 'null'], 'properties': {'project': _PATH, 'resume_id': _PATH},
               'additionalProperties': False}, 'Weights & Biases: project (~: off) and the run id to resume.'),
}
TRAIN = {
    'total_iter': ({'type': 'number', 'minimum': 1}, 'Iterations (optimizer steps) to train.'),
    'warmup_iter': (_NUM, 'Iterations of linear learning-rate warm-up; -1: none.'),
    'ema_decay': ({'type': 'number', 'minimum': 0, 'maximum': 1}, 'EMA of the weights (net_g_ema); 0: none.'),
    'optim_g': (_REF['optimizer'], 'Optimizer of network_g.'),
    'scheduler': (_REF['scheduler'], 'Learning-rate schedule.'),
    'pixel_opt': (_REF['loss'], 'Pixel loss.'),
    'perceptual_opt': (_REF['loss'], 'Perceptual (VGG feature) loss.'),
}
# the patterns leave out the keys named above, which would otherwise be checked (and reported) twice
TRAIN_PATTERNS = {'^(?!(?:pixel_opt|perceptual_opt)$).*_opt$': (_REF['loss'], 'A loss (gan_opt, ...).'),
                  '^optim_(?!g$)': (_REF['optimizer'], 'Optimizer of another network (optim_d, ...).')}
NETWORK_PATTERN = '^network_(?!g$)'
VAL = {
    'val_freq': (_POSITIVE, 'Iterations between validations.'),
    'save_img': (_BOOL, 'Save the validation outputs under visualization/.'),
    'suffix': (_PATH, 'Suffix of the saved test images; default: the experiment name.'),
    'pbar': (_BOOL, 'A progress bar per validation set.'),
    'metrics': ({'type': 'object', 'additionalProperties': _REF['metric']}, 'Metrics by name (psnr, ssim, ...).'),
}
DATASET = {
    'name': ({'type': ['string', 'number']}, 'Name of the set in the log and under results/.'),
    'phase': (_STR, _SET), 'scale': (_INT1, _SET),
    'dataroot_gt': (_STRINGS, 'Folder (or .lmdb) of the HR images.'),
    'dataroot_lq': (_STRINGS, 'Folder (or .lmdb) of the LR images.'),
    'meta_info_file': (_PATH, 'File listing the GT images to use; ~: every image of dataroot_gt.'),
    'filename_tmpl': (_STR, 'LR file name from the GT name, e.g. \'{}x4\' for babyx4.png.'),
    'io_backend': ({'type': 'object', 'required': ['type']}, 'How files are read; the other keys are the backend\'s.'),
    'gt_size': (_INT1, 'HR training patch side in pixels.'),
    'use_hflip': (_BOOL, 'Random horizontal flips.'), 'use_rot': (_BOOL, 'Random vertical flips and 90° rotations.'),
    'color': ({'enum': ['y', 'rgb', None]}, 'y: the Y channel only; ~: RGB.'),
    'mean': ({'anyOf': [_NUM, {'type': 'array', 'items': _NUM}, {'type': 'null'}]}, 'Normalisation mean.'),
    'std': ({'anyOf': [_NUM, {'type': 'array', 'items': _NUM}, {'type': 'null'}]}, 'Normalisation std.'),
    'batch_size_per_gpu': (_INT1, 'Training batch per GPU (per process under DDP).'),
    'dataset_enlarge_ratio': (_POSITIVE, 'Times the set is repeated per epoch.'),
    'use_shuffle': (_BOOL, 'Shuffle the training set (BasicSR 1.4.2 always does).'),
    'prefetch_mode': ({'enum': [None, 'cpu', 'cuda']}, '~: plain DataLoader; cpu or cuda prefetcher.'),
    'num_prefetch_queue': (_INT1, 'Batches the cpu prefetcher holds.'),
    'pin_memory': (_BOOL, 'DataLoader pin_memory.'), 'persistent_workers': (_BOOL, 'DataLoader persistent_workers.'),
}
_METRIC_DATA = ('img', 'img2')  # what BasicSR's models pass a metric besides its option keys


def _described(schema, description, default=keys.UNSET):
    """``schema`` with a description (and a default); a ``$ref`` is wrapped, since draft-07 ignores its siblings."""
    out = {'allOf': [schema]} if '$ref' in schema else dict(schema)
    out['description'] = description
    if default is not keys.UNSET:
        out['default'] = default
    return out


def _properties(table):
    return {name: _described(schema, description) for name, (schema, description) in table.items()}


def _plugin_properties(section):
    """The plugin keys directly under ``section``, a key with keys under it as an object of them."""
    out = {}
    for k in keys.under(section):
        out[k.name] = _described(k.schema, k.description, k.default)
        children = _plugin_properties(k.path)
        if children:
            out[k.name]['properties'] = children
    return out


# ------------------------------------------------------------------------------------------ arguments of callables
def _json_value(value):
    """``value`` as JSON (tuples as lists), or UNSET for what JSON cannot hold (objects, inf, nan)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else keys.UNSET
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return keys.UNSET if keys.UNSET in items else items
    return keys.UNSET


_TYPE_OF = {bool: 'boolean', int: 'integer', float: 'number', str: 'string', list: 'array', tuple: 'array',
            dict: 'object', type(None): 'null'}


def _annotation_types(annotation):
    """JSON types an annotation allows (empty: unknown); members JSON cannot carry (tensors) are left out."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return sorted({t for arg in typing.get_args(annotation) for t in _annotation_types(arg)})
    target = origin or annotation
    if target in _TYPE_OF:
        return [_TYPE_OF[target]]
    return ['array'] if isinstance(target, type) and target.__module__ == 'collections.abc' else []


def _argument(param):
    """Schema of one constructor argument: its type from the annotation, else from the default."""
    found = _annotation_types(param.annotation) if param.annotation is not param.empty else []
    default = _json_value(param.default) if param.default is not param.empty else keys.UNSET
    if not found and default not in (keys.UNSET, None) and type(default) in _TYPE_OF:
        found = ['number' if _TYPE_OF[type(default)] == 'integer' else _TYPE_OF[type(default)]]
    out = {'type': found[0] if len(found) == 1 else found} if found else {}
    if default is not keys.UNSET:
        out['default'] = default
    return out


def arguments(func, skip=()):
    """``(properties, required, takes_kwargs)`` of the keyword arguments of ``func`` (a class: its constructor)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin or C type without a signature: nothing is known
        return {}, [], True
    props, required = {}, []
    for name, p in params.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        props[name] = _argument(p)
        if p.default is p.empty:
            required.append(name)
    return props, required, any(p.kind is p.VAR_KEYWORD for p in params.values())


def _branch(names, props, required=(), closed=True, key='type'):
    """``if <key> is one of names then <props>``; closed: no other key."""
    then = {'properties': {key: {}, **props}}
    if required:
        then['required'] = list(required)
    if closed:
        then['additionalProperties'] = False
    return {'if': {'properties': {key: {'enum': list(names)}}, 'required': [key]}, 'then': then}


def _typed(description, branches, names, extra=None):
    """A mapping whose ``type`` is one of ``names``, each with its own keys (``branches``)."""
    type_schema = {'enum': names} if names is not None else _STR
    return {'type': 'object', 'required': ['type'],
            'properties': {'type': _described(type_schema, description), **(extra or {})}, 'allOf': branches}


def _registered(registry, skip=(), closed=None, extra=None, aliases=False):
    """Branches of every callable in a BasicSR registry: its arguments, closed unless it takes ``**kwargs`` (or as
    ``closed(func, takes_kwargs)`` says); ``aliases``: a ``<name>_basicsr`` entry also answers to ``<name>``, as
    the plugin's arch lookup does."""
    branches, names = [], []
    for name, func in sorted(registry):
        spellings = [name] + ([name[:-len('_basicsr')]] if aliases and name.endswith('_basicsr') else [])
        props, required, takes_kwargs = arguments(func, skip)
        is_closed = closed(func, takes_kwargs) if closed else not takes_kwargs
        branches.append(_branch(spellings, {**props, **(extra or {})}, required, is_closed))
        names += spellings
    return branches, names


def _metric_closed(func, takes_kwargs):
    # BasicSR passes every key of a metric entry to the function; its own and the plugin's metric functions take
    # **kwargs only to swallow keys such as `better`, so there a misspelt key would be silently ignored
    return not takes_kwargs or func.__module__.split('.')[0] in ('basicsr', 'lwsr_plugin')


def _optimizer(models):
    """Optimizer mapping: the torch.optim names BasicSR's ``BaseModel.get_optimizer`` builds, each with its
    arguments; ``lr`` etc. required as get_optimizer requires them. Any name when a registered model has a
    get_optimizer of its own, whose names are not known here."""
    import torch
    from basicsr.models.base_model import BaseModel
    names = []
    for name in sorted(n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                       and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != 'Optimizer'):
        try:
            BaseModel.get_optimizer(None, name, [torch.nn.Parameter(torch.zeros(1))], 1e-3)
        except NotImplementedError:  # BasicSR's answer for a name it does not build
            continue
        except Exception:  # built, but these probe arguments do not suit it
            pass
        names.append(name)
    _, required, _ = arguments(BaseModel.get_optimizer, skip=('self', 'optim_type', 'params'))
    branches = []
    for name in names:
        props, _, takes_kwargs = arguments(getattr(torch.optim, name), skip=('params',))
        branches.append(_branch([name], props, required, not takes_kwargs))
    own = any(cls.get_optimizer is not BaseModel.get_optimizer for _, cls in models)
    return _typed('torch.optim class that get_optimizer builds.', branches, None if own else names)


def _scheduler(models):
    """Scheduler mapping: the names BasicSR's ``setup_schedulers`` builds, with the arguments of the class it builds
    for each; any name when a registered model sets up its schedulers itself."""
    from basicsr.models import lr_scheduler
    from basicsr.models.base_model import BaseModel

    from lwsr_plugin.options.checks import BASICSR_SCHEDULERS
    branches = []
    for name in BASICSR_SCHEDULERS:
        # setup_schedulers builds MultiStepRestartLR for MultiStepLR too
        cls = getattr(lr_scheduler, name, lr_scheduler.MultiStepRestartLR)
        props, required, takes_kwargs = arguments(cls, skip=('optimizer',))
        branches.append(_branch([name], props, required, not takes_kwargs))
    own = any(cls.setup_schedulers is not BaseModel.setup_schedulers for _, cls in models)
    return _typed('Learning-rate scheduler.', branches, None if own else list(BASICSR_SCHEDULERS))


# ----------------------------------------------------------------------------------------------- closed sections
def _known_models(models):
    """The models whose ``train``/``val``/``logger`` keys are all known: SRModel and the plugin's."""
    return [(name, cls) for name, cls in models if name == 'SRModel' or cls.__module__.startswith('lwsr_plugin.')]


def _reads(k, cls, registry):
    return k.models is None or (k.models in registry and issubclass(cls, registry.get(k.models)))


def _closed(allowed, patterns=()):
    """A mapping with no keys besides ``allowed`` and those matching ``patterns`` (checked elsewhere)."""
    out = {'properties': {k: {} for k in allowed}, 'additionalProperties': False}
    if patterns:
        out['patternProperties'] = {p: {} for p in patterns}
    return out


def _model_branches(models, registry):
    """Per group of known models with the same keys: ``train``, ``val`` and ``logger`` hold no other key; for the
    other models ``logger`` holds BasicSR's and every plugin logger key."""
    groups = {}
    for name, cls in _known_models(models):
        sections = tuple((section, tuple(list(table) + [k.name for k in keys.under(section)
                                                          if _reads(k, cls, registry)]))
                         for section, table in (('train', TRAIN), ('val', VAL), ('logger', LOGGER)))
        groups.setdefault(sections, []).append(name)
    branches = []
    for sections, names in groups.items():
        props = {section: _closed(allowed, TRAIN_PATTERNS if section == 'train' else ())
                 for section, allowed in sections}
        branches.append({'if': {'properties': {'model_type': {'enum': names}}, 'required': ['model_type']},
                         'then': {'properties': props}})
    known = {'properties': {'model_type': {'enum': [n for names in groups.values() for n in names]}},
             'required': ['model_type']}
    logger = list(LOGGER) + [k.name for k in keys.under('logger')]
    branches.append({'if': {'not': known}, 'then': {'properties': {'logger': _closed(logger)}}})
    return branches


def _dataset(datasets):
    """Dataset mapping: a registered type, BasicSR's dataset and loader keys and the plugin's; no other key for the
    types whose keys are known."""
    from lwsr_plugin.options.checks import IO_BACKENDS
    props = _properties(DATASET)
    props['io_backend']['properties'] = {'type': {'enum': list(IO_BACKENDS)}}
    props.update(_plugin_properties('datasets.*'))
    branches = []
    for name, cls in sorted(datasets):
        if name in ('PairedImageDataset', 'SingleImageDataset') or cls.__module__.startswith('lwsr_plugin.'):
            own = [k.name for k in keys.under('datasets.*') if not k.dataset_types or name in k.dataset_types]
            branches.append(_branch([name], {k: {} for k in list(DATASET) + own}))
    return _typed('Registered dataset (DATASET_REGISTRY).', branches, sorted(n for n, _ in datasets), props)


# ---------------------------------------------------------------------------------------------------- the schema
def build():
    """The schema as a dict, from the registries as they are now (the plugin registers first)."""
    import basicsr
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

    from lwsr_plugin.registration import register
    from lwsr_plugin.version import __version__
    register()
    models = sorted(MODEL_REGISTRY)
    network = _typed('Registered arch (ARCH_REGISTRY); the other keys are its constructor\'s arguments.',
                     *_registered(ARCH_REGISTRY, aliases=True))
    loss = _typed('Registered loss (LOSS_REGISTRY); the other keys are its arguments.', *_registered(LOSS_REGISTRY))
    better = _described({'enum': ['higher', 'lower']}, 'Which way the best value goes; default: higher.')
    metric = _typed('Registered metric (METRIC_REGISTRY); the other keys are its arguments.',
                    *_registered(METRIC_REGISTRY, skip=_METRIC_DATA, closed=_metric_closed, extra={'better': better}),
                    extra={'better': better})

    train = {'type': 'object', 'properties': {**_properties(TRAIN), **_plugin_properties('train')},
             'patternProperties': {p: _described(s, d) for p, (s, d) in TRAIN_PATTERNS.items()}}
    val = {'type': 'object', 'properties': {**_properties(VAL), **_plugin_properties('val')}}
    logger = {'type': 'object', 'properties': {**_properties(LOGGER), **_plugin_properties('logger')}}
    path = {'type': 'object', 'properties': {**_properties(PATH), **_plugin_properties('path')},
            'patternProperties': {p: {'description': d} for p, d in PATH_PATTERNS.items()},
            'additionalProperties': False}
    # the plugin passes further dist_params to torch.distributed.init_process_group
    dist_params = {'type': 'object', 'properties': _plugin_properties('dist_params')}
    datasets = {'type': 'object', 'additionalProperties': _REF['dataset'],
                'propertyNames': {'pattern': '^(train|val|test)(_|$)'}}
    top = _properties(TOP)
    properties = {
        'name': top.pop('name'),
        'model_type': _described({'enum': [n for n, _ in models]}, 'Registered model (MODEL_REGISTRY).'),
        **top,
        'datasets': _described(datasets, 'Datasets by phase: train, val, val_<n>, test_<n>.'),
        'network_g': _described(_REF['network'], 'The generator: a registered arch and its arguments.'),
        'path': _described(path, 'Files to load and folders to write.'),
        'train': _described(train, 'Training: optimizer, schedule, losses, iterations and the plugin\'s options.'),
        'val': _described(val, 'Validation during training, and the options of testing.'),
        'logger': _described(logger, 'Logging and checkpoints.'),
        'dist_params': _described(dist_params, 'Distributed training.'),
        **_plugin_properties(''),
    }
    return {
        '$schema': DRAFT,
        'title': 'BasicSR option file',
        'description': f'Made by lwsr-options schema from the registries of BasicSR {basicsr.__version__} and '
                       f'lwsr_plugin {__version__} (and the user modules imported then).',
        'type': 'object',
        'required': list(REQUIRED),
        'properties': properties,
        'patternProperties': {NETWORK_PATTERN: _described(_REF['network'], 'Another network (network_d, ...).')},
        'additionalProperties': False,
        'allOf': _model_branches(models, MODEL_REGISTRY),
        '$defs': {'network': network, 'dataset': _dataset(sorted(DATASET_REGISTRY)), 'loss': loss,
                  'optimizer': _optimizer(models), 'scheduler': _scheduler(models), 'metric': metric},
    }


def dumps(schema):
    """The schema as the text written to a file: indented JSON, a newline at the end."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + '\n'


def problems(opt, schema):
    """One line per place where the option dict ``opt`` breaks ``schema``: the dotted key and what is wrong, sorted.
    Needs the ``jsonschema`` package."""
    import jsonschema
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(f'{".".join(str(p) for p in e.absolute_path) or "(top level)"}: {e.message}'
                  for e in validator.iter_errors(opt))
