"""spandrel support for the plugin's networks, so that chaiNNer and the other front ends that load models through
spandrel open IMDN (x2/x3/x4), IMDN_AS, IMDN_RTC, IDN, DRN / DRN+ and s-LWSR16/32/64/32c checkpoints: the official
releases and every network file the plugin writes.

spandrel picks an architecture by inspecting a bare state dict (``ArchSupport.detect``) and builds the network from
what its keys and tensor shapes say (``Architecture.load`` -> ``ImageModelDescriptor``). :func:`install` adds one
``ArchSupport`` per plugin arch to spandrel's ``MAIN_REGISTRY`` (or to a given registry), as
``spandrel_extra_arches.install()`` does for its own. The networks are the plugin's own classes
(``lwsr_plugin.archs``), loaded strictly.

What a state dict cannot say is taken from the recipes' defaults (IMDN's LeakyReLU slope, DRN's mean shift and ELU
parameter, s-LWSR's ``img_range`` ...), as spandrel does for its own archs, except two choices that change the output
of released or recipe-trained weights and that no shape records: IDN's scale (the stride of its transposed conv; the
x2, x3 and x4 releases have identical shapes) and s-LWSR's activation removal (the release keeps all 26 ReLUs, the
plugin's recipes train with ``act_removal: official``). Those two are measured on the loaded weights
(:func:`probe`). Any constructor argument can also be given outright:
``registry['IDN'].architecture.load(state_dict, upscale=2)``.

Nothing in the package imports this module, and it imports spandrel, torch and the archs only when first needed:
``import lwsr_plugin`` stays as light as before, and a missing spandrel is reported by :func:`install` in one line.
"""
import functools
import re
from typing import Callable, NamedTuple

INSTALL_HINT = 'pip install "lwsr_plugin[spandrel]"'

# BasicSR network files can hold both; spandrel's canonicalize_state_dict takes params_ema first, and so does this
PARAM_GROUPS = ('params_ema', 'params')


def _import_spandrel():
    try:
        import spandrel
    except ImportError:
        raise ImportError(f'lwsr_plugin.spandrel_arches needs spandrel (>= 0.4.2): {INSTALL_HINT}') from None
    return spandrel


def network_state(state_dict):
    """The network's own entries of a state dict.

    The plugin's ``.safetensors`` files are flat, ``params.<name>`` / ``params_ema.<name>``
    (``LWSRModel.save_network`` through :func:`lwsr_plugin.fileio.save_safetensors`), which spandrel's loader leaves
    as they are: such a dict gives its ``params_ema`` group when it has one, else ``params``, without the prefix.
    Any other dict (a plain state dict, or a ``.pth`` that spandrel already unwrapped) is returned unchanged.
    """
    groups = {}
    for key, value in state_dict.items():
        group, dot, name = key.partition('.')
        if not dot or group not in PARAM_GROUPS:
            return state_dict
        groups.setdefault(group, {})[name] = value
    return next((groups[g] for g in PARAM_GROUPS if g in groups), state_dict)


def _shape(state, key):
    """The shape of ``state[key]`` as a tuple; () when the key is missing or holds no tensor."""
    return tuple(getattr(state.get(key), 'shape', ()))


def _conv(shape, out_ch=None, in_ch=None, kernel=None):
    """True for a conv weight shape (rank 4) whose given dimensions match."""
    return (len(shape) == 4 and out_ch in (None, shape[0]) and in_ch in (None, shape[1])
            and kernel in (None, shape[2]) and shape[2] == shape[3])


def _count(state, pattern, start=0):
    """How many of ``pattern.format(start)``, ``pattern.format(start + 1)``, ... are keys, counting until one is not."""
    n = 0
    while pattern.format(start + n) in state:
        n += 1
    return n


def _shuffle_split(out_channels, in_channels):
    """(scale, image channels) of a conv feeding ``nn.PixelShuffle``, by spandrel's own rule (the input's channel
    count first, then 3, 4, 1); None when no count fits."""
    from spandrel.util import get_scale_and_output_channels
    try:
        return get_scale_and_output_channels(out_channels, in_channels)
    except AssertionError:
        return None


def _rate(part, whole):
    """``part / whole``, nudged up until ``int(whole * rate) == part``: an IMDB keeps ``int(num_feat *
    distill_rate)`` channels, which float rounding of the plain quotient can make one fewer."""
    rate = part / whole
    while int(whole * rate) < part:
        rate = rate * (1 + 1e-12)
    return rate


# ---------------------------------------------------------------------------------- what the state dict says, per arch
def _imdn_trunk(state, num_feat):
    """What IMDN and IMDN_AS share (IMDN §3.1-3.2): the number of IMDBs and their distillation width, checked against
    the 1x1 fusion of all IMDB outputs and the upsampler's input; None when the shapes do not form that trunk."""
    num_block = _count(state, 'IMDB{}.c1.weight', 1)
    distilled = _shape(state, 'IMDB1.c4.weight')
    if not (num_block and _conv(distilled, in_ch=num_feat - distilled[0] if distilled else None, kernel=3)
            and _conv(_shape(state, 'c.0.weight'), num_feat, num_feat * num_block, 1)
            and _conv(_shape(state, 'upsampler.0.weight'), in_ch=num_feat, kernel=3)):
        return None
    return dict(num_feat=num_feat, num_block=num_block, distill_rate=_rate(distilled[0], num_feat))


def imdn_kwargs(state):
    """IMDN (§3.1): ``fea_conv`` 3x3 from the image, IMDBs, one conv + pixel shuffle; the scale and output channels
    come from that conv's width."""
    head = _shape(state, 'fea_conv.weight')
    trunk = _imdn_trunk(state, head[0]) if _conv(head, kernel=3) else None
    split = trunk and _shuffle_split(_shape(state, 'upsampler.0.weight')[0], head[1])
    if not split:
        return None
    return dict(trunk, num_in_ch=head[1], num_out_ch=split[1], upscale=split[0])


def imdn_as_kwargs(state):
    """IMDN_AS (§3.3, Fig. 5): two stride-2 convs down to 1/4 resolution, the IMDN trunk, a x4 pixel shuffle back
    to the input's size."""
    head, down = _shape(state, 'fea_conv.0.weight'), _shape(state, 'fea_conv.2.weight')
    if not (_conv(head, kernel=3) and _conv(down, head[0], head[0], 3)):
        return None
    trunk = _imdn_trunk(state, head[0])
    width = _shape(state, 'upsampler.0.weight')[:1]
    if not trunk or width[0] % 16:
        return None
    return dict(trunk, num_in_ch=head[1], num_out_ch=width[0] // 16)


def imdn_rtc_kwargs(state):
    """IMDN_RTC (the official repo's real-time model): ``model.0`` conv, ``model.1.sub`` = IMDBs without attention
    and a 1x1 conv, ``model.2`` conv + pixel shuffle."""
    head, up = _shape(state, 'model.0.weight'), _shape(state, 'model.2.weight')
    num_block = _count(state, 'model.1.sub.{}.c1.weight')
    distilled = _shape(state, 'model.1.sub.0.c4.weight')
    if not (_conv(head, kernel=3) and num_block and _conv(up, in_ch=head[0], kernel=3)
            and _conv(_shape(state, f'model.1.sub.{num_block}.weight'), head[0], head[0], 1)
            and _conv(distilled, in_ch=head[0] - distilled[0] if distilled else None, kernel=3)):
        return None
    split = _shuffle_split(up[0], head[1])
    if not split:
        return None
    return dict(num_in_ch=head[1], num_out_ch=split[1], num_feat=head[0], num_block=num_block, upscale=split[0],
                distill_rate=_rate(distilled[0], head[0]))


def idn_kwargs(state):
    """IDN (§3.1-3.3): FBlock (two 3x3 convs), DBlocks (two conv chains + 1x1 compression), the RBlock's transposed
    conv. d, s and the groups follow from the first DBlock's widths (eqs. 6-9); the scale is the transposed conv's
    stride, which no shape holds (:func:`probe`)."""
    from spandrel.util import get_seq_len
    head, second = _shape(state, 'fblock.0.weight'), _shape(state, 'fblock.2.weight')
    upper0, upper1 = _shape(state, 'dblocks.0.upper.0.weight'), _shape(state, 'dblocks.0.upper.2.weight')
    lower0 = _shape(state, 'dblocks.0.lower.0.weight')
    deconv = _shape(state, 'rblock.weight')  # ConvTranspose2d: (in, out, k, k)
    if not (_conv(head, kernel=3) and _conv(second, head[0], head[0], 3) and _conv(upper0, in_ch=head[0], kernel=3)
            and _conv(upper1, kernel=3) and _conv(lower0, head[0], kernel=3)
            and _conv(deconv, head[0]) and deconv[2] % 2 == 1):
        return None
    num_feat = head[0]
    diff_ch, kept = num_feat - upper0[0], num_feat - lower0[1]
    if diff_ch < 1 or kept < 1 or upper0[0] % upper1[1]:
        return None
    return dict(num_in_ch=head[1], num_out_ch=deconv[1], num_feat=num_feat,
                num_block=get_seq_len(state, 'dblocks'), diff_ch=diff_ch, slice_ratio=num_feat // kept,
                groups=upper0[0] // upper1[1], deconv_kernel=deconv[2])


def drn_kwargs(state):
    """DRN / DRN+ (§2.1-2.3, Table 1): LFE conv, residual distilling groups of RDBs (each a chain of 1x1-3x3-1x1
    residual-distilling steps and a 1x1 fusion), conv + pixel shuffle, output conv. DRN+ widens each RDB with a 1x1
    entry conv (its 256 original filters)."""
    from spandrel.util import get_seq_len
    head, tail = _shape(state, 'lfe.weight'), _shape(state, 'conv_out.weight')
    step_in = _shape(state, 'rdgs.0.body.0.steps.0.body.0.weight')  # (mid, rdb_feat, 1, 1)
    step_out = _shape(state, 'rdgs.0.body.0.steps.0.body.4.weight')  # (rdb_feat + d, mid, 1, 1)
    up = _shape(state, 'upsample.0.weight')  # (C * M * M, C, 3, 3)
    if not (_conv(head, kernel=3) and _conv(tail, in_ch=head[0], kernel=3) and _conv(step_in, kernel=1)
            and _conv(step_out, in_ch=step_in[0], kernel=1) and _conv(up, in_ch=head[0], kernel=3)):
        return None
    num_feat, rdb_feat, mid = head[0], step_in[1], step_in[0]
    scale = round((up[0] / num_feat)**0.5)
    rd_ratio = rdb_feat // mid
    num_rdb = _count(state, 'rdgs.0.body.{}.fusion.0.weight')
    widened = 'rdgs.0.body.0.entry.0.weight' in state
    if scale * scale * num_feat != up[0] or rdb_feat // rd_ratio != mid or widened != (rdb_feat != num_feat):
        return None
    return dict(num_in_ch=head[1], num_out_ch=tail[0], num_feat=num_feat, num_rdg=get_seq_len(state, 'rdgs'),
                num_rdb=num_rdb, distill_ch=step_out[0] - rdb_feat, upscale=scale,
                variant='DRN+' if widened else 'DRN', rdb_feat=rdb_feat,
                num_rd=get_seq_len(state, 'rdgs.0.body.0.steps'), rd_ratio=rd_ratio,
                group_fusion=f'rdgs.0.body.{num_rdb}.weight' in state)


_SLWSR_BLOCK = re.compile(r'(?:feat(\d+)_\d+|conv(\d+))\.')


def slwsr_kwargs(state):
    """s-LWSR (§III, Fig. 2): head conv, residual blocks ``feat{g}_{j}`` / ``conv{g}`` (levels follow from the
    largest stage g = 2 * levels + 2), the bias-free 1x1 information pool ``conv1`` (eq. 3), the EDSR upsampler
    (``tail.0``) and the output conv. Compressed blocks (§III-D) are inverted residuals, recognised by their third
    conv; the expansion is their hidden width over ``num_feat``."""
    from spandrel.util import get_pixelshuffle_params
    head, pool, tail = _shape(state, 'head.0.weight'), _shape(state, 'conv1.weight'), _shape(state, 'tail.1.weight')
    if not (_conv(head, kernel=3) and _conv(pool, head[0], kernel=1) and 'conv1.bias' not in state
            and _conv(tail, in_ch=head[0], kernel=3)):
        return None
    num_feat = head[0]
    names, stages = set(), set()
    for key in state:
        m = _SLWSR_BLOCK.match(key)
        if m and key.partition('.')[0] != 'conv1':
            names.add(key.partition('.')[0])
            stages.add(int(m.group(1) or m.group(2)))
    levels = (max(stages, default=0) - 2) // 2
    scale, width = get_pixelshuffle_params(state, 'tail.0')  # BasicSR's Upsample: conv + shuffle per x2, or one x3
    if levels < 1 or scale < 2 or width != num_feat or pool[1] != (levels + 2) * num_feat:
        return None
    kwargs = dict(num_in_ch=head[1], num_out_ch=tail[0], num_feat=num_feat, num_blocks=len(names),
                  num_levels=levels, upscale=scale)
    compressed = sorted(n for n in names if f'{n}.body.4.weight' in state)
    if compressed:
        kwargs.update(compress='all' if len(compressed) == len(names) else compressed,
                      expansion=_shape(state, f'{compressed[0]}.body.0.weight')[0] / num_feat)
    return kwargs


# ------------------------------------------------------------------------------------------------ choices no shape holds
def _probe_image(channels, size=32):
    """A fixed smooth image in [0, 1]: 8x8 random values, bicubic-interpolated to ``size``; band-limited, so a trained
    SR network returns little more than its bicubic upscaling."""
    import torch
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, channels, size // 4, size // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode='bicubic', align_corners=False).clamp_(0, 1)


def probe(cls, kwargs, state, key, candidates):
    """``(value, measured)``: the value of constructor argument ``key``, among ``candidates``, under which the
    weights ``state`` behave as trained SR weights: on a smooth image (:func:`_probe_image`) the output that strays
    least, in mean absolute value plus mean absolute gradient, from the MATLAB-bicubic upscaling of the input.
    ``measured`` is False where the layout leaves one candidate (or input and output channels differ): the first.

    Used where the graph depends on an argument that holds no weight. With the wrong IDN stride the transposed conv's
    taps land on the wrong output phases; with the wrong s-LWSR activation set, ReLUs cut (or pass) features the
    weights were trained without (or with). Measured (score of the right choice / of the best wrong one): the IDN
    x2, x3, x4 and x4-MS-COCO releases 0.0076 / 0.038, 0.0061 / 0.013, 0.0057 / 0.014, 0.0066 / 0.014; the s-LWSR32
    release (all ReLUs) 0.069 / 0.110; s-LWSR16 trained 400 iterations from scratch with and without
    ``act_removal: official`` 0.110 / 0.140 and 0.111 / 0.151. Weights far from trained (random, or a few iterations
    in) give no such signal: give ``key`` outright for those.
    """
    import torch
    from .ops.matlab_bicubic import upsample_integer
    nets = {}
    for value in candidates:
        try:
            nets[value] = cls(**dict(kwargs, **{key: value}))
        except ValueError:  # a candidate this layout cannot take (e.g. the release's act_removal list on 6 blocks)
            continue
    if len(nets) < 2 or kwargs['num_in_ch'] != kwargs['num_out_ch']:
        return next(iter(nets), candidates[0]), False
    image = _probe_image(kwargs['num_in_ch'])
    scores = {}
    for value, net in nets.items():
        net.load_state_dict(state)
        with torch.no_grad():
            dev = net.eval()(image)
        dev -= upsample_integer(image, dev.shape[-1] // image.shape[-1])
        scores[value] = float(dev.abs().mean() + dev.diff(dim=-1).abs().mean() + dev.diff(dim=-2).abs().mean())
    return min(scores, key=scores.get), True


# ----------------------------------------------------------------------------------------------------- the arch table
class Spec(NamedTuple):
    """How spandrel finds and describes one plugin arch."""
    arch_id: str  # spandrel's id: the plugin's registered name, i.e. network_g.type
    name: str
    module: str  # lwsr_plugin.archs.<module> holds the class named arch_id
    keys: tuple  # keys every state dict of the arch holds (spandrel's KeyCondition.has_all)
    kwargs: Callable  # state dict -> constructor arguments, None when the shapes do not form the arch
    tags: Callable  # constructor arguments -> spandrel tags
    # spandrel's ModelTiling: DISCOURAGED where CCA layers (IMDN eq. 5) gate channels with whole-input statistics, so
    # a tile sees others than the image (IMDN x2, 96-px tiles with 8 px overlap: up to 0.05 off, 50 dB)
    tiling: str = 'SUPPORTED'
    measured: tuple = ()  # (constructor argument, candidates) that probe() chooses from


def _imdn_tags(kw):
    return [f'{kw["num_feat"]}nf', f'{kw["num_block"]}nb']


def _idn_tags(kw):
    return ['Y' if kw['num_in_ch'] == 1 else f'{kw["num_in_ch"]}ch', f'{kw["num_feat"]}nf', f'{kw["num_block"]}nb']


def _drn_tags(kw):
    return [kw['variant'], f'{kw["num_feat"]}nf', f'{kw["rdb_feat"]}rdb', f'{kw["num_rdg"]}x{kw["num_rdb"]}']


def _slwsr_tags(kw):
    from .archs.slwsr_arch import VARIANTS
    plain = dict(num_blocks=26, compress=None, expansion=kw.get('expansion'))
    variant = next((name for name, preset in VARIANTS.items()
                    if all(kw.get(k) == v for k, v in dict(plain, **preset).items())), None)
    tags = [variant or 's-LWSR', f'{kw["num_feat"]}nf', f'{kw["num_blocks"]}nb']
    return tags + ([f'act_removal={kw["act_removal"]}'] if kw.get('act_removal') else [])


_IMDN_TRUNK_KEYS = ('IMDB1.c1.weight', 'IMDB1.c5.weight', 'IMDB1.cca.conv_du.0.weight', 'c.0.weight',
                    'LR_conv.weight', 'upsampler.0.weight')

SPECS = (
    Spec('IMDN', 'IMDN', 'imdn_arch', ('fea_conv.weight', ) + _IMDN_TRUNK_KEYS, imdn_kwargs, _imdn_tags,
         tiling='DISCOURAGED'),
    Spec('IMDN_AS', 'IMDN_AS', 'imdn_arch', ('fea_conv.0.weight', 'fea_conv.2.weight') + _IMDN_TRUNK_KEYS,
         imdn_as_kwargs, lambda kw: ['any scale: input resized first'] + _imdn_tags(kw), tiling='DISCOURAGED'),
    Spec('IMDN_RTC', 'IMDN_RTC', 'imdn_arch',
         ('model.0.weight', 'model.1.sub.0.c1.weight', 'model.1.sub.0.c5.weight', 'model.2.weight'),
         imdn_rtc_kwargs, _imdn_tags),
    Spec('IDN', 'IDN', 'idn_arch',
         ('fblock.0.weight', 'fblock.2.weight', 'dblocks.0.upper.0.weight', 'dblocks.0.lower.0.weight',
          'dblocks.0.compress.0.weight', 'rblock.weight'),
         idn_kwargs, _idn_tags, measured=('upscale', (2, 3, 4))),
    Spec('DRN', 'DRN', 'drn_arch',
         ('lfe.weight', 'rdgs.0.body.0.steps.0.body.0.weight', 'rdgs.0.body.0.fusion.0.weight', 'upsample.0.weight',
          'conv_out.weight'),
         drn_kwargs, _drn_tags),
    Spec('SLWSR', 's-LWSR', 'slwsr_arch',
         ('head.0.weight', 'feat2_1.body.0.weight', 'conv1.weight', 'tail.0.0.weight', 'tail.1.weight'),
         slwsr_kwargs, _slwsr_tags, measured=('act_removal', (None, 'official'))),
)


def detects(spec, has_keys, state_dict):
    """spandrel's ``detect`` for ``spec``: its keys are there and their shapes form the arch."""
    state = network_state(state_dict)
    try:
        return bool(has_keys(state)) and spec.kwargs(state) is not None
    except (TypeError, ValueError, IndexError, ZeroDivisionError):  # a foreign dict's odd entries: not ours
        return False


def load_descriptor(architecture, state_dict, network_g):
    """spandrel's ``load``: the plugin network that the state dict describes (``network_g`` overrides what it says),
    weights loaded strictly, as an ``ImageModelDescriptor``."""
    import importlib
    from spandrel import ImageModelDescriptor, ModelTiling, SizeRequirements
    from .inference import model_scale
    spec = architecture.spec
    state = network_state(state_dict)
    kwargs = spec.kwargs(state)
    if kwargs is None:
        raise ValueError(f'not a {spec.name} state dict: its keys or shapes do not form the arch.')
    kwargs.update(network_g)
    cls = getattr(importlib.import_module(f'{__package__}.archs.{spec.module}'), spec.arch_id)
    tags = []
    if spec.measured and spec.measured[0] not in network_g:
        key, candidates = spec.measured
        kwargs[key], measured = probe(cls, kwargs, state, key, candidates)
        tags = [f'{key} measured'] * measured
    net = cls(**kwargs).eval()
    return ImageModelDescriptor(
        net, state, architecture=architecture, purpose='SR', tags=spec.tags(kwargs) + tags,
        # fp16 and bf16 run every arch (CPU, the official weights, DRN's random ones: it has no release; fp32
        # reference): max abs diff of the output <= 0.004 in fp16 and <= 0.04 in bf16 (IDN, whose MATLAB-bicubic
        # skip is then bf16 too), nothing non-finite; the largest activations (s-LWSR's 0-255 scale: 1.6e3, IMDN's
        # CCA deviations: 23, squared 545) stay far below fp16's 65504
        supports_half=True, supports_bfloat16=True, scale=model_scale(net), input_channels=kwargs['num_in_ch'],
        output_channels=kwargs['num_out_ch'],
        # no size limits: IMDN_AS crops adaptively (IMDN §3.3) or pads itself where a side is not a multiple of 4,
        # and every other arch takes any size; spandrel's own padding would change IMDN_AS's output
        size_requirements=SizeRequirements(), tiling=ModelTiling[spec.tiling])


@functools.lru_cache(maxsize=None)
def supports():
    """One spandrel ``ArchSupport`` per plugin arch, in ``SPECS`` order (built once, on first use)."""
    spandrel = _import_spandrel()
    from spandrel.util import KeyCondition

    class PluginArchitecture(spandrel.Architecture):
        """A plugin arch as spandrel sees it: :func:`detects` and :func:`load_descriptor` for one ``Spec``."""

        def __init__(self, spec):
            has_keys = KeyCondition.has_all(*spec.keys)
            super().__init__(id=spec.arch_id, name=spec.name, detect=functools.partial(detects, spec, has_keys))
            self.spec = spec

        def load(self, state_dict, **network_g):
            return load_descriptor(self, state_dict, network_g)

    return tuple(spandrel.ArchSupport.from_architecture(PluginArchitecture(spec)) for spec in SPECS)


def install(registry=None):
    """Add the plugin's archs to spandrel's ``MAIN_REGISTRY``, or to ``registry`` (a ``spandrel.ArchRegistry``), so
    that ``spandrel.ModelLoader().load_from_file`` opens their checkpoints. Call it once before loading; calling it
    again changes nothing. They are detected after spandrel's own archs, and an id the registry already holds keeps
    its arch. Returns the ``ArchSupport``s added. Without spandrel: ImportError naming the pip command."""
    spandrel = _import_spandrel()
    target = spandrel.MAIN_REGISTRY if registry is None else registry
    return target.add(*supports(), ignore_duplicates=True)
