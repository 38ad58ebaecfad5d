"""IMDN family: Hui et al., "Lightweight Image Super-Resolution with Information Multi-distillation Network",
ACM MM 2019 (``../shared/papers/004_*``).

Parameter names and shapes equal the official release, so its checkpoints load with ``strict_load_g: true``
(BasicSR strips their ``module.`` prefix). Inputs are RGB in [0, 1], as BasicSR feeds them and as the official
models were trained.
"""
import torch
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY

from .blocks import CCALayer, ShortcutBlock, activation, check_upscale, conv_layer, pixelshuffle_block


class IMDB(nn.Module):
    """Information multi-distillation block (IMDN §3.2, Fig. 2, Table 1).

    Progressive refinement module (eq. 3): four 3x3 convs; after each of the first three, a quarter of the channels
    is kept ("refined") and the rest goes on ("coarse"). The four refined parts are concatenated (eq. 4), weighted by
    contrast-aware channel attention (eq. 5), fused by a 1x1 conv and added to the input.

    Args:
        num_feat (int): Channels in and out. Default: 64.
        distill_rate (float): Share of channels kept at each step (16 of 64). Default: 0.25.
        neg_slope (float): LeakyReLU slope. Default: 0.05 (Table 1).
        attention (bool): Use the CCA layer (IMDN); False for the real-time IMDN_RTC block. Default: True.
    """

    def __init__(self, num_feat=64, distill_rate=0.25, neg_slope=0.05, attention=True):
        super().__init__()
        self.distilled = int(num_feat * distill_rate)
        self.remaining = num_feat - self.distilled
        self.c1 = conv_layer(num_feat, num_feat, 3)
        self.c2 = conv_layer(self.remaining, num_feat, 3)
        self.c3 = conv_layer(self.remaining, num_feat, 3)
        self.c4 = conv_layer(self.remaining, self.distilled, 3)
        self.act = activation('lrelu', neg_slope)
        self.c5 = conv_layer(self.distilled * 4, num_feat, 1)
        self.cca = CCALayer(self.distilled * 4) if attention else nn.Identity()

    def forward(self, x):
        split = (self.distilled, self.remaining)
        refined1, coarse = torch.split(self.act(self.c1(x)), split, dim=1)
        refined2, coarse = torch.split(self.act(self.c2(coarse)), split, dim=1)
        refined3, coarse = torch.split(self.act(self.c3(coarse)), split, dim=1)
        refined4 = self.c4(coarse)  # the last step has no activation in the released model
        out = torch.cat([refined1, refined2, refined3, refined4], dim=1)
        return self.c5(self.cca(out)) + x


class _IMDNTrunk(nn.Module):
    """Shared body of IMDN and IMDN_AS (§3.1, Fig. 1): IMDBs whose outputs are all collected (IIC), fused by 1x1 conv
    + LeakyReLU, a 3x3 conv, a long skip from the shallow features, then the pixel-shuffle upsampler."""

    def __init__(self, num_in_ch, num_out_ch, num_feat, num_block, upscale, distill_rate, neg_slope):
        super().__init__()
        if num_block < 1:
            raise ValueError(f'{type(self).__name__}: network_g.num_block must be >= 1, got {num_block}.')
        self.num_block = num_block
        for i in range(1, num_block + 1):  # official names IMDB1..IMDBn
            setattr(self, f'IMDB{i}', IMDB(num_feat, distill_rate, neg_slope))
        self.c = nn.Sequential(conv_layer(num_feat * num_block, num_feat, 1), activation('lrelu', neg_slope))
        self.LR_conv = conv_layer(num_feat, num_feat, 3)
        self.upsampler = pixelshuffle_block(num_feat, num_out_ch, upscale)

    def body(self, fea):
        outs = []
        out = fea
        for i in range(1, self.num_block + 1):
            out = getattr(self, f'IMDB{i}')(out)
            outs.append(out)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea)


@ARCH_REGISTRY.register()
class IMDN(_IMDNTrunk):
    """IMDN for a fixed scale (§3.1). 694,404 / 703,059 / 715,176 parameters at x2 / x3 / x4.

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int): Feature channels. Default: 64.
        num_block (int): Number of IMDBs. Default: 6 (§4.2).
        upscale (int): Scale factor. Default: 4.
        distill_rate (float): Channels kept per distillation step. Default: 0.25.
        neg_slope (float): LeakyReLU slope. Default: 0.05.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=6, upscale=4, distill_rate=0.25,
                 neg_slope=0.05):
        check_upscale(upscale, 'IMDN')
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, distill_rate, neg_slope)
        self.upscale = upscale
        self.fea_conv = conv_layer(num_in_ch, num_feat, 3)

    def forward(self, x):
        return self.body(self.fea_conv(x))


def acs_patch_size(size, padding):
    """Patch side of the adaptive cropping strategy: floor(size/2) + Δl with Δl from eq. 7."""
    half = size // 2
    return half + padding - (half + padding) % 4


def adaptive_crop_forward(forward, x, padding=32, multiple=4):
    """Adaptive cropping strategy (IMDN §3.3, Fig. 4, eqs. 6-8) for a network whose input sides must be multiples of
    ``multiple`` and whose output has the input's size.

    The image is covered by four overlapping corner patches of equal size ``floor(H/2) + Δl_H`` by
    ``floor(W/2) + Δl_W`` (a multiple of 4 by eq. 6); they go through ``forward`` as one batch, and each output
    quadrant is taken from the patch that holds it, so the extra increments are discarded. ``padding`` is the preset
    extra length of eq. 8 (4k, k >= 1); 32 is the official test script's ``shave``. Images too small for four such
    patches are replicate-padded to a multiple of 4 instead and cropped back.
    """
    if padding < 4 or padding % 4:
        raise ValueError(f'ACS padding must be 4k with k >= 1 (IMDN eq. 8), got {padding}.')
    b, _, h, w = x.shape
    ph, pw = acs_patch_size(h, padding), acs_patch_size(w, padding)
    if ph > h or pw > w:
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        xp = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        return forward(xp)[..., :h, :w]
    hh, hw = h // 2, w // 2
    patches = torch.cat([
        x[..., :ph, :pw], x[..., :ph, w - pw:],
        x[..., h - ph:, :pw], x[..., h - ph:, w - pw:]], dim=0)  # yapf: disable
    tl, tr, bl, br = forward(patches).split(b, dim=0)
    top = torch.cat([tl[..., :hh, :hw], tr[..., :hh, pw - (w - hw):]], dim=-1)
    bottom = torch.cat([bl[..., ph - (h - hh):, :hw], br[..., ph - (h - hh):, pw - (w - hw):]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


@ARCH_REGISTRY.register()
class IMDN_AS(_IMDNTrunk):
    """IMDN for any scale (§3.3, Fig. 5): the input is the LR image already resized to the target size; two
    stride-2 convs bring it to 1/4 resolution and the x4 pixel-shuffle brings it back, so output size == input size.
    752,104 parameters.

    Inputs whose sides are not multiples of 4 go through the adaptive cropping strategy (``adaptive_crop_forward``)
    at inference; ``forward_acs`` forces that path for any input.

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int): Feature channels. Default: 64.
        num_block (int): Number of IMDBs. Default: 6.
        distill_rate (float): Channels kept per distillation step. Default: 0.25.
        neg_slope (float): LeakyReLU slope. Default: 0.05.
        acs_padding (int): Preset extra length of ACS, eq. 8 (4k, k >= 1). Default: 32, the ``shave`` of the
            official IMDN_AS test script (the paper gives no value), whose patch sizes this then reproduces.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=6, distill_rate=0.25, neg_slope=0.05,
                 acs_padding=32):
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, 4, distill_rate, neg_slope)
        if acs_padding < 4 or acs_padding % 4:
            raise ValueError(f'IMDN_AS: network_g.acs_padding must be 4k with k >= 1 (eq. 8), got {acs_padding}.')
        self.acs_padding = acs_padding
        self.fea_conv = nn.Sequential(
            conv_layer(num_in_ch, num_feat, 3, stride=2), activation('lrelu', neg_slope),
            conv_layer(num_feat, num_feat, 3, stride=2))

    def forward_whole(self, x):
        h, w = x.shape[-2:]
        if h % 4 or w % 4:
            raise ValueError(f'IMDN_AS needs sides that are multiples of 4 for a whole-image pass, got {h}x{w}; '
                             'use forward_acs (adaptive cropping) or a gt_size that is a multiple of 4.')
        return self.body(self.fea_conv(x))

    def forward_acs(self, x):
        return adaptive_crop_forward(self.forward_whole, x, self.acs_padding)

    def forward(self, x):
        h, w = x.shape[-2:]
        if (h % 4 or w % 4) and not self.training:
            return self.forward_acs(x)
        return self.forward_whole(x)


@ARCH_REGISTRY.register()
class IMDN_RTC(nn.Module):
    """Real-time IMDN (the official repo's AIM 2019 constrained-SR model): 12 channels, 5 IMDBs without attention,
    no IIC, 1x1 conv + long skip, pixel-shuffle upsampler. 20,190 parameters at x2.

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int): Feature channels. Default: 12.
        num_block (int): Number of blocks. Default: 5.
        upscale (int): Scale factor. Default: 2.
        distill_rate (float): Channels kept per distillation step. Default: 0.25.
        neg_slope (float): LeakyReLU slope. Default: 0.05.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=12, num_block=5, upscale=2, distill_rate=0.25,
                 neg_slope=0.05):
        super().__init__()
        check_upscale(upscale, 'IMDN_RTC')
        self.upscale = upscale
        blocks = [IMDB(num_feat, distill_rate, neg_slope, attention=False) for _ in range(num_block)]
        self.model = nn.Sequential(
            conv_layer(num_in_ch, num_feat, 3),
            ShortcutBlock(nn.Sequential(*blocks, conv_layer(num_feat, num_feat, 1))),
            *pixelshuffle_block(num_feat, num_out_ch, upscale))

    def forward(self, x):
        return self.model(x)
