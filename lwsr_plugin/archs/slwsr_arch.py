"""s-LWSR: Li et al., "s-LWSR: Super Lightweight Super-Resolution Network", IEEE TIP 2020 (``../shared/papers/002_*``).

The default graph is the released one (Sudo-Biao/s-LWSR, ``Train/code/model/lwsr.py``): parameter names and shapes
equal it, so its checkpoints load with ``strict_load_g: true``. Two things the paper describes and the release lacks
are options here: activation removal (§III-E) and the inverted-residual compression module (§III-D).
"""
from fractions import Fraction

import torch
from torch import nn

from basicsr.archs.arch_util import Upsample
from basicsr.utils.registry import ARCH_REGISTRY

from .blocks import DIV2K_RGB_MEAN, InvertedResidual, MeanShift, ResBlock, check_upscale, conv_layer


# The 14 blocks the release marks with ``act=nn.ReLU(False)``: the apparent intent of "half activation" (§IV-B),
# although ``nn.ReLU(False)`` is still a ReLU, so the released graph (and its weights) keeps all 26.
OFFICIAL_ACT_REMOVED = ('feat2_1', 'feat2_2', 'feat3_1', 'feat3_2', 'feat4_2', 'feat5_2', 'feat7_2', 'conv7', 'feat8_2',
                        'conv8', 'feat9_2', 'conv9', 'feat10_2', 'conv10')

# Fig. 6 settings, as the share of block activations that is KEPT ("rare" = none kept, only convs remain).
_KEEP_RATIOS = {'rare': Fraction(0), 'keep_1/3': Fraction(1, 3), 'keep_1/2': Fraction(1, 2),
                'keep_2/3': Fraction(2, 3), 'keep_all': Fraction(1)}

# Named presets for ``variant:``. Table I (§IV-C): 26 blocks at 16/32/64 channels; the "depth" variant with 6 blocks;
# s-LWSR32C with every block compressed (Fig. 5). The paper gives no expansion factor for s-LWSR32C; 0.5 is the
# value whose parameter count comes closest to its 124K (see docs/slwsr.md).
VARIANTS = {
    'slwsr16': dict(num_feat=16),
    'slwsr32': dict(num_feat=32),
    'slwsr64': dict(num_feat=64),
    'slwsr32_shallow': dict(num_feat=32, num_blocks=6),
    'slwsr32c': dict(num_feat=32, compress='all', expansion=0.5),
}


def _layout(num_blocks, num_levels):
    """(levels L, blocks per local block b): L encoder LBs of b blocks, a 2-block bottleneck, L decoder LBs of b.

    The release is L=4, b=3: 4*3 + 2 + 4*3 = 26 blocks in nine local blocks (§III-B).
    """
    free = num_blocks - 2
    candidates = [num_levels] if num_levels else [4, 3, 2, 1]
    for levels in candidates:
        if levels >= 1 and free > 0 and free % (2 * levels) == 0:
            return levels, free // (2 * levels)
    raise ValueError(f'SLWSR: network_g.num_blocks={num_blocks} must be 2 + 2*num_levels*k (2 bottleneck blocks plus '
                     f'num_levels encoder and decoder local blocks of k each), e.g. 26 (4 levels x 3) or 6 (2 x 1); '
                     f'num_levels={num_levels!r}.')


def _block_names(levels, depth):
    """Official names in forward order: encoder ``feat{g}_{j}``, bottleneck, decoder ``feat{g}_1 .. conv{g}``."""
    names = [f'feat{g}_{j}' for g in range(2, levels + 2) for j in range(1, depth + 1)]
    names += [f'feat{levels + 2}_1', f'feat{levels + 2}_2']
    for g in range(levels + 3, 2 * levels + 3):
        names += [f'feat{g}_{j}' for j in range(1, depth)] + ([f'conv{g}'] if depth > 1 else [f'feat{g}_1'])
    return names


def _resolve_set(spec, names, what):
    """A block selection: None/False (none), True/'official'/'all' or a Fig. 6 keyword, or a list of names."""
    if spec in (None, False, 'none'):
        return set()
    if isinstance(spec, (list, tuple)):
        unknown = set(spec) - set(names)
        if unknown:
            raise ValueError(f'SLWSR: unknown block names in network_g.{what}: {sorted(unknown)}; blocks: {names}.')
        return set(spec)
    if what == 'act_removal':
        if spec in (True, 'official'):
            if not set(OFFICIAL_ACT_REMOVED) <= set(names):
                raise ValueError('SLWSR: act_removal=official needs the 26-block graph; use a ratio or a list.')
            return set(OFFICIAL_ACT_REMOVED)
        if spec in _KEEP_RATIOS:
            # spread the kept activations evenly over the trunk: block i keeps its ReLU when floor((i+1)k) > floor(ik)
            keep = _KEEP_RATIOS[spec]
            return {n for i, n in enumerate(names) if (i + 1) * keep // 1 == i * keep // 1}
    elif spec in (True, 'all'):
        return set(names)
    raise ValueError(f'SLWSR: network_g.{what}={spec!r} is not understood; see the SLWSR docstring.')


class _Reduce(nn.Module):
    """The release's ResBlock2 (first block of a decoder stage): 1x1 conv 2C->C, then a residual block around it.

    ``block`` is a residual or inverted-residual block whose ``body`` is adopted, so names are ``conv`` and ``body.*``.
    """

    def __init__(self, num_feat, block):
        super().__init__()
        self.conv = conv_layer(2 * num_feat, num_feat, 1)
        self.body = block.body

    def forward(self, x):
        x = self.conv(x)
        return x + self.body(x)


@ARCH_REGISTRY.register()
class SLWSR(nn.Module):
    """s-LWSR (§III, Fig. 2): symmetric residual trunk with an information pool, EDSR-style upsampler.

    Graph (release, C = ``num_feat``): head conv 3->C; encoder local blocks of residual blocks, each starting from the
    sum of the previous one's first and last outputs (local residual learning, eq. 2); a 2-block bottleneck; the
    information pool (eq. 3), a bias-free 1x1 conv over concat[head, first block of encoder LBs 2.., both bottleneck
    blocks]; decoder LBs taking concat[previous, 0.5 * symmetric encoder output + 0.5 * pool] through a 1x1 conv,
    then residual blocks (§III-B); global skip from the head; upsampler; conv C->3. Mean shift with the DIV2K mean
    around it, on the 0-``img_range`` scale the release works on (inputs and outputs here are in [0, 1]).

    Parameters at x4 (mean shift excluded): 143,731 / 571,107 / 2,276,803 for C = 16 / 32 / 64.

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int): Channels everywhere in the trunk (n_feats: 16, 32, 64). Default: 32.
        num_blocks (int): Residual blocks in the trunk, 2 + 2 * num_levels * k (Table I: 26, or 6 for "depth").
            Default: 26.
        num_levels (int | None): Encoder/decoder local blocks; None picks the most levels (at most 4) that divide
            ``num_blocks``. Default: None.
        upscale (int): 2, 3 or 4 (any power of 2). Default: 4.
        img_range (float): Pixel scale the network works on; 255 for the released weights. Default: 255.
        rgb_mean (sequence[float]): Mean subtracted before and added after the net. Default: DIV2K mean.
        act_removal: Blocks without activation (§III-E). None/False: none (release); True/'official': the 14 blocks
            the release marks; 'rare', 'keep_1/3', 'keep_1/2', 'keep_2/3', 'keep_all': Fig. 6 share of activations
            kept, spread evenly; or a list of block names. Default: None.
        compress: Blocks replaced by inverted residuals (§III-D). None/False: none; True/'all': every block; or a
            list of block names. Default: None.
        expansion (float): Expansion factor t of the inverted residuals. Default: 6 (MobileNetV2).
        res_scale (float): Residual scale alpha of eq. 1. Default: 1.
        variant (str | None): Preset from ``VARIANTS`` (slwsr16, slwsr32, slwsr64, slwsr32_shallow, slwsr32c); its
            values override the arguments above. Default: None.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=32, num_blocks=26, num_levels=None, upscale=4,
                 img_range=255., rgb_mean=DIV2K_RGB_MEAN, act_removal=None, compress=None, expansion=6,
                 res_scale=1., variant=None):
        super().__init__()
        if variant is not None:
            if variant not in VARIANTS:
                raise ValueError(f'SLWSR: unknown network_g.variant {variant!r}; choose from {sorted(VARIANTS)}.')
            preset = VARIANTS[variant]
            num_feat = preset.get('num_feat', num_feat)
            num_blocks = preset.get('num_blocks', num_blocks)
            compress = preset.get('compress', compress)
            expansion = preset.get('expansion', expansion)
        check_upscale(upscale, 'SLWSR')
        self.upscale = upscale
        self.img_range = img_range
        self.levels, self.depth = _layout(num_blocks, num_levels)
        self.block_names = _block_names(self.levels, self.depth)
        no_act = _resolve_set(act_removal, self.block_names, 'act_removal')
        compressed = _resolve_set(compress, self.block_names, 'compress')

        self.sub_mean = MeanShift(rgb_mean, img_range, sign=-1)
        self.add_mean = MeanShift(rgb_mean, img_range, sign=1)
        self.head = nn.Sequential(conv_layer(num_in_ch, num_feat, 3))
        decoder_firsts = {f'feat{g}_1' for g in range(self.levels + 3, 2 * self.levels + 3)}
        for name in self.block_names:
            act = name not in no_act
            if name in compressed:
                block = InvertedResidual(num_feat, expansion, act)
            else:
                block = ResBlock(num_feat, 3, act, res_scale)
            if name in decoder_firsts:
                if res_scale != 1 and name not in compressed:
                    raise ValueError('SLWSR: res_scale != 1 is not supported in the decoder 1x1 blocks.')
                block = _Reduce(num_feat, block)
            setattr(self, name, block)
        # information pool (eq. 3): head + first block of encoder LBs 2..L + both bottleneck blocks
        self.pool_sources = ['head'] + [f'feat{g}_1' for g in range(3, self.levels + 3)] + [f'feat{self.levels + 2}_2']
        self.conv1 = nn.Conv2d(len(self.pool_sources) * num_feat, num_feat, 1, bias=False)
        self.tail = nn.Sequential(Upsample(upscale, num_feat), conv_layer(num_feat, num_out_ch, 3))

    def forward(self, x):
        x1 = self.head(self.sub_mean(x * self.img_range))
        feats = {'head': x1}
        levels, depth = self.levels, self.depth
        skips = []
        inp = x1
        for g in range(2, levels + 3):  # encoder LBs, then the bottleneck (g = levels + 2)
            n = depth if g < levels + 2 else 2
            out = inp
            for j in range(1, n + 1):
                out = getattr(self, f'feat{g}_{j}')(out)
                feats[f'feat{g}_{j}'] = out
            first = feats[f'feat{g}_1']
            skips.append(out)
            # local residual learning (eq. 2): the next LB starts from first + last (a 1-block LB just passes on)
            inp = first + out if n > 1 else out
        pool = self.conv1(torch.cat([feats[name] for name in self.pool_sources], dim=1))
        prev = skips.pop()  # bottleneck output
        for g in range(levels + 3, 2 * levels + 3):
            mix = 0.5 * skips.pop() + 0.5 * pool  # equal weights for skip and pool (§III-B)
            prev = getattr(self, f'feat{g}_1')(torch.cat([prev, mix], dim=1))
            for j in range(2, depth):
                prev = getattr(self, f'feat{g}_{j}')(prev)
            if depth > 1:
                prev = getattr(self, f'conv{g}')(prev)
        out = self.add_mean(self.tail(prev + x1))
        return out / self.img_range
