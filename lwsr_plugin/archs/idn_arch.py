"""IDN: Hui, Wang, Gao, "Fast and Accurate Single Image Super-Resolution via Information Distillation Network",
CVPR 2018 (``../shared/papers/001_*``, poster ``000_*``).

Layer facts follow the official Caffe release (Zheng222/IDN-Caffe deploy prototxt), so its ``.caffemodel`` weights
convert 1:1 (``lwsr_plugin.convert.caffe_idn``): a bias on every conv, LeakyReLU(0.05) after every conv including the
1x1 compression conv, none after the transposed conv; the input is the Y channel in [0, 1] without mean shift.
"""
import torch
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY

from ..ops.matlab_bicubic import MatlabBicubic
from .blocks import activation, check_upscale, conv_layer


def _conv_act_chain(channels, groups, neg_slope):
    """3x3 convs through ``channels`` (in, c1, c2, c3), each followed by LReLU; the middle one grouped (§4.2)."""
    layers = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layers += [conv_layer(cin, cout, 3, groups=groups if i == 1 else 1), activation('lrelu', neg_slope)]
    return nn.Sequential(*layers)


class DBlock(nn.Module):
    """Information distillation block (§3.2-3.3, Fig. 3): enhancement unit + compression unit.

    Enhancement unit: the upper chain ``C_a`` (D1 = D3 - d, D2 = D3 - 2d, D3; eq. 6) gives ``P1`` (eq. 8); its first
    ``D3 / s`` channels are concatenated after the block input, ``R = C(S(P1, 1/s), B)`` (eq. 9); the other channels
    go through the lower chain ``C_b`` (D4 = D3, D5 = D3 - d, D6 = D3 + d; eq. 7) to ``P2`` (eq. 10), and
    ``P = P2 + R`` (eq. 11). Compression unit: 1x1 conv + LReLU back to ``num_feat`` channels (eq. 12).

    Args:
        num_feat (int): Block input/output channels, also D3 = D4. Default: 64.
        diff_ch (int): Paper's d, channel step between the layers of each chain. Default: 16.
        slice_ratio (int): Paper's s; ``num_feat // s`` channels of P1 are kept. Default: 4.
        groups (int): Groups of the 2nd conv of each chain. Default: 4.
        neg_slope (float): LeakyReLU slope. Default: 0.05.
    """

    def __init__(self, num_feat=64, diff_ch=16, slice_ratio=4, groups=4, neg_slope=0.05):
        super().__init__()
        self.kept = num_feat // slice_ratio
        d3 = num_feat
        self.upper = _conv_act_chain((num_feat, d3 - diff_ch, d3 - 2 * diff_ch, d3), groups, neg_slope)
        self.lower = _conv_act_chain((d3 - self.kept, d3, d3 - diff_ch, d3 + diff_ch), groups, neg_slope)
        self.compress = nn.Sequential(conv_layer(num_feat + self.kept, num_feat, 1), activation('lrelu', neg_slope))

    def forward(self, x):
        p1 = self.upper(x)
        kept, rest = torch.split(p1, (self.kept, p1.shape[1] - self.kept), dim=1)
        # official concat order: block input first, then the kept slice (Caffe "concat" bottom order)
        return self.compress(self.lower(rest) + torch.cat([x, kept], dim=1))


@ARCH_REGISTRY.register()
class IDN(nn.Module):
    """IDN (§3.1, eq. 1-3): FBlock -> ``num_block`` DBlocks -> RBlock (transposed conv) + bicubic(LR) global skip.

    552,769 parameters at x2, x3 and x4 with the defaults (Y in, Y out).

    The RBlock is Caffe's 17x17 deconvolution (stride = scale, pad 8), which yields ``(H-1)*s + 1`` pixels whose
    first one is HR pixel ``s-1`` (§4.2: the HR patches are cropped by ``s-1``). Here it is a ``ConvTranspose2d`` with
    padding ``(k-1)/2 - (s-1)`` cropped to ``H*s``: identical to Caffe where they overlap, aligned with the HR grid
    and filling the first ``s-1`` rows/cols too. (Caffe's padding with ``output_padding`` instead shifts the image
    by ``s-1`` pixels and loses ~6 dB at x4 with the official weights.)

    ``U`` is MATLAB's bicubic (a = -0.5, :mod:`lwsr_plugin.ops.matlab_bicubic`), as the weights were trained with it.

    Args:
        num_in_ch (int): Input channels (1 = Y, the paper's setting; 3 for RGB). Default: 1.
        num_out_ch (int): Output channels; must equal ``num_in_ch`` for the global skip. Default: 1.
        num_feat (int): FBlock/DBlock channels, the paper's D3. Default: 64.
        num_block (int): Number of DBlocks. Default: 4.
        upscale (int): Scale factor. Default: 4.
        diff_ch (int): The paper's d (eq. 6-7). Default: 16.
        slice_ratio (int): The paper's s (eq. 9). Default: 4.
        groups (int): Groups of the grouped convs in each enhancement unit. Default: 4.
        neg_slope (float): LeakyReLU slope. Default: 0.05.
        deconv_kernel (int): RBlock kernel size (odd). Default: 17.
    """

    def __init__(self, num_in_ch=1, num_out_ch=1, num_feat=64, num_block=4, upscale=4, diff_ch=16, slice_ratio=4,
                 groups=4, neg_slope=0.05, deconv_kernel=17):
        super().__init__()
        check_upscale(upscale, 'IDN')
        if num_in_ch != num_out_ch:
            raise ValueError(f'IDN: num_out_ch ({num_out_ch}) must equal num_in_ch ({num_in_ch}): the output is '
                             'added to the bicubic-upsampled input.')
        if num_block < 1:
            raise ValueError(f'IDN: network_g.num_block must be >= 1, got {num_block}.')
        kept = num_feat // slice_ratio if slice_ratio > 0 else 0
        mids = (num_feat - diff_ch, num_feat - 2 * diff_ch, num_feat - kept, num_feat + diff_ch)
        # eq. 11 adds P2 (D6 = D3 + d channels) to R (D3 + D3/s channels), so D3/s must equal d
        if (kept != diff_ch or min(mids) < 1 or num_feat % slice_ratio
                or any(c % groups for c in (num_feat, ) + mids[:2])):
            raise ValueError(f'IDN: inconsistent num_feat={num_feat}, diff_ch={diff_ch}, slice_ratio={slice_ratio}, '
                             f'groups={groups}: need num_feat / slice_ratio == diff_ch (eq. 11), num_feat > '
                             '2*diff_ch, and num_feat, num_feat-diff_ch, num_feat-2*diff_ch divisible by groups.')
        pad = (deconv_kernel - 1) // 2 - (upscale - 1)
        if deconv_kernel % 2 == 0 or pad < 0:
            raise ValueError(f'IDN: deconv_kernel must be odd and >= 2*upscale-1, got {deconv_kernel} for x{upscale}.')
        self.upscale = upscale
        self.fblock = nn.Sequential(
            conv_layer(num_in_ch, num_feat, 3), activation('lrelu', neg_slope),
            conv_layer(num_feat, num_feat, 3), activation('lrelu', neg_slope))
        self.dblocks = nn.Sequential(
            *[DBlock(num_feat, diff_ch, slice_ratio, groups, neg_slope) for _ in range(num_block)])
        self.rblock = nn.ConvTranspose2d(num_feat, num_out_ch, deconv_kernel, stride=upscale, padding=pad)
        self.upsample = MatlabBicubic(upscale, antialias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Caffe's MSRA filler with ``variance_norm: AVERAGE`` (train prototxt; §4.2 cites He et al.): N(0, std)
        with std = sqrt(4 / (fan_in + fan_out)), fans taken from the blob shape as Caffe does; zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                w = m.weight
                fan_in, fan_out = w.numel() / w.shape[0], w.numel() / w.shape[1]
                w.normal_(0, (4.0 / (fan_in + fan_out))**0.5)
                m.bias.zero_()

    def residual(self, x):
        """``R(F_n(...F_1(f(x))))`` of eq. 3: the RBlock output on the HR grid, without the bicubic skip."""
        h, w = x.shape[-2:]
        out = self.rblock(self.dblocks(self.fblock(x)))
        return out[..., :h * self.upscale, :w * self.upscale]

    def forward(self, x):
        return self.residual(x) + self.upsample(x)
