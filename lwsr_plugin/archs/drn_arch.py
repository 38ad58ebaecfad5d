"""DRN and DRN+: Sun et al., "Distilling with Residual Network for Single Image Super Resolution", ICME 2019
(arXiv 1907.02843, ``../shared/papers/003_*``).

There is no public code and there are no released weights, so this file is the reference implementation. Every
choice the paper leaves open is a keyword argument of ``DRN`` and is listed, with its reason, in its docstring.
Inputs are RGB in [0, 1], as BasicSR feeds them (§3.2: the model works on the 3 RGB channels, not on Y).
"""
import torch
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY

from .blocks import DIV2K_RGB_MEAN, MeanShift, activation, check_upscale, conv_layer, pixelshuffle_block

# "Low-level feature extraction layers and feature fusion layers have 64 filters" (§3.1); DRN+ is "the network with
# 256 original filters in each RDB" (§3.1). The variant only sets the RDB width; everything else is shared.
DRN_VARIANTS = {'DRN': 64, 'DRN+': 256}


class ResidualDistilling(nn.Module):
    """One residual-distilling step F_rd (§2.3, Fig. 5 left, eqs. 9-11), a dual-path unit after DPN (ref. [17]).

    A 1x1 -> 3x3 -> 1x1 bottleneck maps the ``in_ch`` = D_i channels to D_i + d channels; the first D_i are added
    to the input (residual path, eq. 11 ``D_out,i + D_i``) and the last d are concatenated (distilled path), so the
    step returns D_{i+1} = D_i + d channels (eq. 9). Every conv is followed by ELU (§3.1: "layers in each RDB are
    followed by ELU with parameter 0.2").

    Args:
        in_ch (int): D_i, channels in.
        mid_ch (int): Width of the 1x1 -> 3x3 -> 1x1 bottleneck.
        distill_ch (int): d, channels distilled out by this step.
        alpha (float): ELU parameter.
    """

    def __init__(self, in_ch, mid_ch, distill_ch, alpha):
        super().__init__()
        self.split = (in_ch, distill_ch)
        self.body = nn.Sequential(
            conv_layer(in_ch, mid_ch, 1), activation('elu', alpha),
            conv_layer(mid_ch, mid_ch, 3), activation('elu', alpha),
            conv_layer(mid_ch, in_ch + distill_ch, 1), activation('elu', alpha))

    def forward(self, x):
        residual, distilled = torch.split(self.body(x), self.split, dim=1)
        return torch.cat([x + residual, distilled], dim=1)


class RDB(nn.Module):
    """Residual distilling block (§2.3, Fig. 5, eqs. 9-13).

    ``num_rd`` residual-distilling steps grow the channels from D_1 = ``rdb_feat`` by ``distill_ch`` each (eq. 9);
    a 1x1 conv + ELU at the last position of the block ("feature fusion and dimensionality reduction", §1; the
    "local feature fusion" of §3.1) brings them back to ``num_feat``. When ``rdb_feat`` differs from ``num_feat``
    (DRN+), a 1x1 conv + ELU first widens the block input to the ``rdb_feat`` original filters.

    Args:
        num_feat (int): Channels in and out of the block.
        rdb_feat (int): D_1, original filters of the residual path inside the block.
        num_rd (int): Residual-distilling steps in the block.
        mid_ch (int): Bottleneck width of each step.
        distill_ch (int): d, distilled channels per step.
        alpha (float): ELU parameter.
    """

    def __init__(self, num_feat, rdb_feat, num_rd, mid_ch, distill_ch, alpha):
        super().__init__()
        if rdb_feat == num_feat:
            self.entry = nn.Identity()
        else:
            self.entry = nn.Sequential(conv_layer(num_feat, rdb_feat, 1), activation('elu', alpha))
        self.steps = nn.Sequential(*[
            ResidualDistilling(rdb_feat + i * distill_ch, mid_ch, distill_ch, alpha) for i in range(num_rd)])
        self.fusion = nn.Sequential(conv_layer(rdb_feat + num_rd * distill_ch, num_feat, 1), activation('elu', alpha))

    def forward(self, x):
        return self.fusion(self.steps(self.entry(x)))


class RDG(nn.Module):
    """Residual distilling group (§2.2, Fig. 4, eqs. 6-7 and 14-15): K RDBs, the compression F_p (1x1 conv + ELU,
    eq. 14; the "global feature fusion" of §3.1, optional) and the long skip connection Y_g = F_g(Y_{g-1}) + Y_{g-1}.
    """

    def __init__(self, num_feat, num_rdb, group_fusion, **rdb_kwargs):
        super().__init__()
        layers = [RDB(num_feat, **rdb_kwargs) for _ in range(num_rdb)]
        if group_fusion:
            layers += [conv_layer(num_feat, num_feat, 1), activation('elu', rdb_kwargs['alpha'])]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x) + x


@ARCH_REGISTRY.register()
class DRN(nn.Module):
    """DRN / DRN+ (§2.1, Fig. 3, eqs. 1-5): Y_0 = F_LFE(I_LR) (one 3x3 conv); Y_RDGs = G residual distilling
    groups; Y_DF = Y_0 + Y_RDGs (eq. 3); reconstruction per Table 1: 3x3 conv C -> C*M*M, PixelShuffle(M), 3x3 conv
    C -> 3. ``variant='DRN+'`` gives the 256-filter model of §3.1.

    Parameters at x2 / x3 / x4 with the defaults: DRN 1,587,107 / 1,771,747 / 2,030,243; DRN+ 17,643,683 /
    17,828,323 / 18,086,819. The paper's one size statement (§3.3: DRN+ has 54% fewer parameters than EDSR, whose
    x4 model has 43.09M, i.e. about 19.8M at x4) is met within 9% (18.09M).

    Choices the paper leaves open (each is a kwarg):

    - ``num_rd`` = 4 residual-distilling steps per RDB. The text gives eqs. 9-11 for one step and never the count.
      Four puts DRN+ x4 closest to the paper's one size statement of about 19.8M (3 steps: 14.08M, -29%;
      4: 18.09M, -9%; 5: 22.15M, +12%).
    - ``rd_ratio`` = 4: the bottleneck width of each 1x1 -> 3x3 -> 1x1 step is ``rdb_feat // rd_ratio`` (16 for DRN,
      64 for DRN+). The paper names the three kernels (§1) and cites DPN [17], whose units are bottlenecks; 4 is the
      ResNet/DPN ratio. A full-width 3x3 at 256 channels alone would cost 590k per step, 32M for 54 RDBs, which the
      19.8M statement excludes.
    - ``rdb_feat``: the "original filters in each RDB" (D_1 of eq. 9) are 64 for DRN and 256 for DRN+, while LFE,
      fusion and reconstruction keep ``num_feat`` = 64 ("feature fusion layers have 64 filters", §3.1); a 1x1 conv
      + ELU widens each DRN+ RDB input to 256 and the RDB's 1x1 fusion narrows it back. Widening the whole network
      to 256 instead would make the Table 1 upsampler alone 9.4M at x4 (256 -> 256*16 3x3 conv).
    - ``group_fusion`` = True: the 1x1 conv + ELU F_p of eq. 14 at the end of each RDG, before the long skip (the
      "global feature fusion" of §3.1). The RDB already ends in its own 1x1 fusion, so this F_p keeps the width.
    - ``img_range``, ``rgb_mean``: the paper does not say how inputs are scaled. The DIV2K RGB mean is subtracted
      and added back around the network, as EDSR [7] does, so the residual learning starts centred; set
      ``rgb_mean=(0, 0, 0)`` to disable. ``MeanShift`` keeps it out of the parameters and buffers.
    - ELU after every conv of a residual-distilling step and after each 1x1 fusion ("other layers in each RDB are
      followed by ELU with parameter 0.2", §3.1); no activation after LFE, the upsampler or the output conv.

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int): Filters of LFE, fusion and reconstruction layers. Default: 64 (§3.1).
        num_rdg (int): G, residual distilling groups. Default: 6 (§3.1).
        num_rdb (int): K, RDBs per group. Default: 9 (§3.1).
        distill_ch (int): d, distilled channels per step. Default: 8 (§3.1).
        upscale (int): Scale factor M. Default: 4.
        variant (str): 'DRN' or 'DRN+'; sets the default ``rdb_feat`` (64 / 256). Default: 'DRN'.
        rdb_feat (int | None): Original filters in each RDB; None takes the variant's. Default: None.
        num_rd (int): Residual-distilling steps per RDB. Default: 4.
        rd_ratio (int): Bottleneck ratio of a step (width ``rdb_feat // rd_ratio``). Default: 4.
        group_fusion (bool): 1x1 conv + ELU F_p at the end of each RDG (eq. 14). Default: True.
        elu_alpha (float): ELU parameter. Default: 0.2 (§3.1).
        img_range (float): Scale applied to the [0, 1] input inside the network (as EDSR's). Default: 1.0.
        rgb_mean (tuple[float]): Mean subtracted from the input. Default: DIV2K (0.4488, 0.4371, 0.4040).
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_rdg=6, num_rdb=9, distill_ch=8, upscale=4,
                 variant='DRN', rdb_feat=None, num_rd=4, rd_ratio=4, group_fusion=True, elu_alpha=0.2,
                 img_range=1.0, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        check_upscale(upscale, 'DRN')
        if variant not in DRN_VARIANTS:
            raise ValueError(f'DRN: network_g.variant must be one of {sorted(DRN_VARIANTS)}, got {variant!r}.')
        for name, value in (('num_rdg', num_rdg), ('num_rdb', num_rdb), ('num_rd', num_rd)):
            if value < 1:
                raise ValueError(f'DRN: network_g.{name} must be >= 1, got {value}.')
        rdb_feat = DRN_VARIANTS[variant] if rdb_feat is None else rdb_feat
        if rdb_feat // rd_ratio < 1:
            raise ValueError(f'DRN: rdb_feat // rd_ratio must be >= 1, got {rdb_feat} // {rd_ratio}.')
        self.variant = variant
        self.upscale = upscale
        self.img_range = img_range
        self.sub_mean = MeanShift(rgb_mean, img_range, sign=-1)
        self.add_mean = MeanShift(rgb_mean, img_range, sign=1)

        self.lfe = conv_layer(num_in_ch, num_feat, 3)  # eq. 1
        self.rdgs = nn.Sequential(*[
            RDG(num_feat, num_rdb, group_fusion, rdb_feat=rdb_feat, num_rd=num_rd, mid_ch=rdb_feat // rd_ratio,
                distill_ch=distill_ch, alpha=elu_alpha) for _ in range(num_rdg)])  # eqs. 2, 6-8
        self.upsample = pixelshuffle_block(num_feat, num_feat, upscale)  # Table 1 rows 1-2, eq. 4
        self.conv_out = conv_layer(num_feat, num_out_ch, 3)  # Table 1 row 3, F_IR of eq. 5

    def forward(self, x):
        y0 = self.lfe(self.sub_mean(x * self.img_range))
        y = self.conv_out(self.upsample(y0 + self.rdgs(y0)))  # eq. 3: global residual Y_DF = Y_0 + Y_RDGs
        return self.add_mean(y) / self.img_range
