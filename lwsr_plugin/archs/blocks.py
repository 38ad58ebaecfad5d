"""Building blocks shared by the plugin archs, written once.

Parameter names follow the official releases where checkpoints exist (IMDN: ``conv_du``, ``upsampler.0``), so that
official state dicts load strictly into every arch that uses these blocks.
"""
import torch
from torch import nn


def conv_layer(in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, bias=True):
    """Convolution with 'same' padding for odd kernels (spatial size kept at stride 1, halved at stride 2)."""
    padding = (kernel_size - 1) // 2 * dilation
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=padding, dilation=dilation, groups=groups, bias=bias)


def activation(act_type='lrelu', neg_slope=0.05, inplace=True):
    """Activation by name. IMDN and IDN use LeakyReLU with slope 0.05 (IMDN Table 1, IDN §3)."""
    act_type = act_type.lower()
    if act_type == 'relu':
        return nn.ReLU(inplace)
    if act_type == 'lrelu':
        return nn.LeakyReLU(neg_slope, inplace)
    if act_type == 'prelu':
        return nn.PReLU(init=neg_slope)
    if act_type == 'elu':
        return nn.ELU(neg_slope, inplace)
    raise ValueError(f'Unknown activation {act_type!r}: use relu, lrelu, prelu or elu.')


def contrast(x):
    """Global contrast of each feature map: standard deviation + mean over H x W (IMDN eq. 5)."""
    std, mean = torch.std_mean(x, dim=(2, 3), keepdim=True, correction=0)
    return std + mean


class CCALayer(nn.Module):
    """Contrast-aware channel attention (IMDN §3.2.2, Fig. 3): SE-style gating driven by eq. 5 instead of the mean.

    Args:
        channels (int): Feature channels.
        reduction (int): Squeeze ratio of the two 1x1 convs. Default: 16.
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=True), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=True), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(contrast(x))


def pixelshuffle_block(in_channels, out_channels, upscale, kernel_size=3):
    """One conv to ``out_channels * upscale**2`` then sub-pixel shuffle (ESPCN; IMDN's and DRN's upsampler)."""
    return nn.Sequential(conv_layer(in_channels, out_channels * upscale**2, kernel_size), nn.PixelShuffle(upscale))


class ShortcutBlock(nn.Module):
    """``x + sub(x)``; named ``sub`` as in the official IMDN_RTC graph."""

    def __init__(self, sub):
        super().__init__()
        self.sub = sub

    def forward(self, x):
        return x + self.sub(x)


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())
