"""The plugin's own option keys, each declared once: where it sits in an option file, the JSON Schema of its value,
its default and one line on what it does.

Two readers share this table, so they cannot disagree: the option-file schema (:mod:`lwsr_plugin.options.schema`,
``lwsr-options schema``) places every key at its path, and the run-time code takes accepted values and defaults from
it (:mod:`lwsr_plugin.models.training_options`, :mod:`lwsr_plugin.models.lwsr_model`,
:mod:`lwsr_plugin.models.two_stage_model`, :mod:`lwsr_plugin.options.checks`). BasicSR's own keys are described in the
schema module. No torch and no registry at import.

A path is dotted; ``datasets.*`` is any dataset phase. A choice key (``spellings``) lists every spelling the run time
accepts with the value it means; the spellings that mean themselves are the documented values.
"""
from typing import NamedTuple

from lwsr_plugin.options.workers import AUTO, MAX_AUTO_WORKERS


class _Unset:
    """The default of a key that has none (the run time requires it, or derives it from other keys)."""

    def __repr__(self):
        return 'UNSET'


UNSET = _Unset()
# the schema module defines the loss mapping (a registered LOSS_REGISTRY type and its arguments) under this name
LOSS = {'$ref': '#/$defs/loss'}
PLUGIN_MODELS = 'LWSRModel'  # models derived from LWSRModel read the keys marked with it


class Key(NamedTuple):
    """One option key. ``models``: the registered model (and the models derived from it) that reads the key, None
    for every model; ``dataset_types``: the dataset types that read it, empty for every type; ``fold_case``: string
    spellings are compared in lower case."""
    path: str
    schema: dict
    default: object
    description: str
    spellings: tuple = ()
    fold_case: bool = False
    models: str = None
    dataset_types: tuple = ()

    @property
    def name(self):
        return self.path.rpartition('.')[2]

    @property
    def section(self):
        return self.path.rpartition('.')[0]


def _schema_of_spellings(spellings, fold_case):
    """An ``enum`` of the spellings; with ``fold_case`` the string ones in any case (a pattern), the documented values
    kept in the ``enum`` for an editor's completion."""
    if not fold_case:
        return {'enum': [s for s, _ in spellings]}
    words = [s for s, _ in spellings if isinstance(s, str)]
    # a character class per letter: JSON Schema patterns (ECMA-262) have no case-insensitive flag
    any_case = '|'.join(''.join(f'[{c.lower()}{c.upper()}]' if c.isalpha() else c for c in w) for w in words)
    return {'anyOf': [{'enum': [s for s, m in spellings if s == m or not isinstance(s, str)]},
                      {'type': 'string', 'pattern': f'^(?:{any_case})$'}]}


def _choice(path, spellings, default, description, fold_case=False, **kw):
    return Key(path, _schema_of_spellings(spellings, fold_case), default, description, tuple(spellings), fold_case,
               **kw)


def _int(minimum, nullable=False):
    schema = {'type': 'integer', 'minimum': minimum}
    return {'anyOf': [schema, {'type': 'null'}]} if nullable else schema


_BOOL = {'type': 'boolean'}
_OFF = [(None, False), (0, False), ('false', False), ('none', False), ('off', False), ('no', False)]
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
_IN_MEMORY = ('InMemoryPairedImageDataset',)

KEYS = (
    # ---- train: the training options of the plugin models (lwsr_plugin.models.training_options)
    _choice('train.amp', [('bf16', 'bf16'), ('fp16', 'fp16'), ('auto', 'auto'), (False, False), ('bfloat16', 'bf16'),
                          ('float16', 'fp16'), ('half', 'fp16'), (True, 'auto'), ('fp32', False)] + _OFF, False,
            'Autocast of the training forward: bf16, fp16 (CUDA only), auto (bf16 where the device runs it '
            'natively) or false.', fold_case=True, models=PLUGIN_MODELS),
    Key('train.channels_last', _BOOL, False, 'Network weights and batches in channels_last (NHWC) memory format.',
        models=PLUGIN_MODELS),
    _choice('train.compile', [(False, False)] + [(m, m) for m in COMPILE_MODES] +
            [(True, 'default'), ('true', 'default'), ('on', 'default'), ('yes', 'default')] + _OFF, False,
            'torch.compile of the training forward: false, true or a mode.', fold_case=True, models=PLUGIN_MODELS),
    Key('train.grad_clip', {'anyOf': [{'type': 'number', 'minimum': 0}, {'type': 'null'}, {'const': False}]}, None,
        'Max L2 norm of all gradients together; ~ or 0: no clipping.', models=PLUGIN_MODELS),
    Key('train.tf32', _BOOL, True, 'TF32 matmuls and convolutions on CUDA GPUs; false: full fp32.',
        models=PLUGIN_MODELS),
    Key('train.max_nonfinite_steps', _int(1), 10, 'Stop after this many non-finite steps in a row.',
        models=PLUGIN_MODELS),
    Key('train.accumulate', _int(1, nullable=True), 1,
        'Micro-batches of batch_size_per_gpu per optimizer step (gradient accumulation); 1: none.',
        models=PLUGIN_MODELS),
    Key('train.deterministic', _BOOL, False,
        'Deterministic kernels, so a resumed GPU run equals the uninterrupted one.', models=PLUGIN_MODELS),
    Key('train.two_stage', {'type': 'object', 'required': ['switch_iter', 'pixel_opt'], 'additionalProperties': False},
        UNSET, 'The second stage of TwoStageSRModel: loss, patch size and learning rate after switch_iter.',
        models='TwoStageSRModel'),
    Key('train.two_stage.switch_iter', _int(1), UNSET, 'Last iteration of stage 1 (below train.total_iter).'),
    Key('train.two_stage.stage1_gt_size', _int(1), UNSET,
        'HR patch side of stage 1, a multiple of scale; default: the stage-2 side.'),
    Key('train.two_stage.gt_size', _int(1), UNSET,
        'HR patch side of stage 2, a multiple of scale; default: datasets.train.gt_size.'),
    Key('train.two_stage.pixel_opt', LOSS, UNSET, 'The pixel loss of stage 2.'),
    Key('train.two_stage.lr_factor', {'type': 'number', 'exclusiveMinimum': 0}, 0.1,
        'Every learning rate (and the scheduler\'s base) times this at the switch.'),
    Key('train.two_stage.reset_optimizer', _BOOL, False, 'Drop the optimizer\'s moments at the switch.'),
    # ---- val: test-time options of the plugin models (lwsr_plugin.models.lwsr_model)
    Key('val.amp', _BOOL, False, 'Validation in the training precision; false: fp32, so PSNR is comparable.',
        models=PLUGIN_MODELS),
    Key('val.self_ensemble', _BOOL, False, 'Average over the 8 flips x rot90 of the input (the "+" rows).',
        models=PLUGIN_MODELS),
    Key('val.tile', _int(0, nullable=True), 0, 'LR tile side in pixels; 0: the whole image at once.',
        models=PLUGIN_MODELS),
    Key('val.tile_overlap', _int(0), 16, 'LR context added around each tile and thrown away after the forward.',
        models=PLUGIN_MODELS),
    _choice('val.tile_stats', [('image', 'image'), ('tile', 'tile')], 'image',
            'image: whole-image statistics for layers that pool their input; tile: each tile\'s own.',
            models=PLUGIN_MODELS),
    # ---- logger
    _choice('logger.save_format', [('pth', 'pth'), ('safetensors', 'safetensors')], 'pth',
            'File format of the saved network weights.', fold_case=True, models=PLUGIN_MODELS),
    Key('logger.progress_interval', {'anyOf': [{'type': 'number', 'minimum': 0}, {'type': 'null'}]}, 10,
        'Seconds between the training progress lines (it/s, ETA); 0: off.'),
    # ---- datasets.<phase>
    Key('datasets.*.num_worker_per_gpu', {'anyOf': [_int(0), {'const': AUTO}]}, UNSET,
        f'DataLoader workers per GPU; {AUTO}: as many as the free CPUs allow, at most {MAX_AUTO_WORKERS}.'),
    Key('datasets.*.keyed_samples', _BOOL, True,
        'Train phase: every sample keyed by its place in the data stream, so a resumed run draws the same ones.'),
    _choice('datasets.*.on_corrupt', [('stop', 'stop'), ('skip', 'skip')], 'stop',
            'What to do with an image that cannot be decoded: stop the run or leave the pair out.'),
    Key('datasets.*.micro_batch', _int(1), UNSET,
        'Samples per forward/backward under train.accumulate; set by the plugin when the run starts.'),
    Key('datasets.*.cache_dir', {'type': ['string', 'null']}, UNSET,
        'Folder of the decoded cache file; default: the folder that holds dataroot_gt.', dataset_types=_IN_MEMORY),
    Key('datasets.*.max_memory', {'anyOf': [_int(0), {'type': 'string'}, {'type': 'null'}]}, UNSET,
        'Refuse a decoded set larger than this: bytes or e.g. 8GB, 500MiB.', dataset_types=_IN_MEMORY),
    Key('datasets.*.decode_threads', _int(1), UNSET, 'Threads that decode while the cache is built; default: up to 8.',
        dataset_types=_IN_MEMORY),
    Key('datasets.*.on_device', _BOOL, False,
        'Train phase: the whole set on the training device, batches cut there.', dataset_types=_IN_MEMORY),
    Key('datasets.*.seed', _int(0), UNSET, 'Seed of the on_device batch draws.', dataset_types=_IN_MEMORY),
    _choice('datasets.*.lq_from', [('hr', 'hr'), ('file', 'file')], 'hr',
            'hr: LR made from the HR Y channel (IDN\'s protocol); file: the Y of the LR files.',
            dataset_types=('YProtocolDataset',)),
    # ---- top level, path, dist_params
    Key('user_modules', {'anyOf': [{'type': 'string'}, {'type': 'array', 'items': {'type': 'string'}}]}, UNSET,
        'Your own *_arch.py / *_model.py / *_loss.py / ... modules: folders, .py files or dotted names.'),
    Key('path.root', {'type': ['string', 'null']}, UNSET,
        'Folder that receives experiments/, tb_logger/ and results/; default: LWSR_ROOT, else the working directory.'),
    Key('dist_params.backend', {'type': 'string'}, UNSET,
        'torch.distributed backend; default: nccl where CUDA is usable, else gloo (LWSR_DIST_BACKEND).'),
    Key('dist_params.port', {'type': 'integer', 'minimum': 1, 'maximum': 65535}, UNSET,
        'MASTER_PORT of a --launcher slurm run; default: 20000 + the job id modulo 20000.'),
    Key('dist_params.timeout', {'type': 'number', 'exclusiveMinimum': 0}, UNSET,
        'Seconds a collective operation may wait (LWSR_DIST_TIMEOUT).'),
)
BY_PATH = {k.path: k for k in KEYS}


def key(path):
    """The :class:`Key` at ``path`` (KeyError for a path that is not a plugin key)."""
    return BY_PATH[path]


def default(path):
    """The default of the key at ``path``."""
    return BY_PATH[path].default


def under(section):
    """The keys directly under ``section`` (``train``, ``datasets.*``, ``train.two_stage``), in table order."""
    return [k for k in KEYS if k.section == section]


def allowed(path):
    """The documented values of a choice key: the spellings that mean themselves."""
    return tuple(s for s, m in BY_PATH[path].spellings if s == m and type(s) is type(m))


def _same(a, b):
    """Equal as JSON Schema compares: true, false and null only to themselves (1 == True is not a match), numbers
    by value (0 and 0.0 are one number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b


def parse(path, value):
    """The value a spelling of the choice key at ``path`` means; ValueError for a value it does not accept."""
    k = BY_PATH[path]
    if isinstance(value, str):
        wanted = value.lower() if k.fold_case else value
        found = [m for s, m in k.spellings if isinstance(s, str) and s == wanted]
    else:
        found = [m for s, m in k.spellings if not isinstance(s, str) and _same(s, value)]
    if not found:
        raise ValueError(f'{path}: {value!r}')
    return found[0]
