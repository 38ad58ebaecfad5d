"""Fast inference form of s-LWSR (Li et al., TIP 2020, §III-A-E: residual / inverted-residual blocks eq. 1, local
residual learning eq. 2, the information pool eq. 3, the symmetric decoder, the upsampler), the module's arithmetic
rearranged:

* Every block's last conv adds the block input as a fused post-op (``x + conv(...)``), its inner convs carry their
  ReLU as a post-op, and a residual scale of 1 costs nothing (the module multiplies by it).
* The information pool and each decoder input are assembled in reused buffers instead of fresh ``torch.cat``
  results; the equal-weight mix ``0.5 * skip + 0.5 * pool`` is written straight into its half of the buffer.
* The output mean shift and the division by ``img_range`` are folded into the last conv, which runs on the last
  pixel shuffle's phases (:class:`~lwsr_plugin.fast.kernels.ShuffleConv` ``then``): the full-resolution C-channel map
  is never written. The upsamplers' large maps are reused buffers (fresh ones page-fault).
"""
import torch
from torch import nn

from basicsr.archs.arch_util import Upsample

from lwsr_plugin.archs.blocks import InvertedResidual, ResBlock
from lwsr_plugin.archs.slwsr_arch import SLWSR, _Reduce
from .kernels import FastConv, FastForm, ShuffleConv, fold_output_affine


def _block_convs(block, res_scale=1.):
    """Convs of a ResBlock / InvertedResidual body, inner ones with their ReLU, the last scaled by ``res_scale``."""
    layers = list(block.body)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    acts = [isinstance(layers[layers.index(c) + 1], nn.ReLU) for c in convs[:-1]]
    out = nn.ModuleList(FastConv.from_conv(c, 'relu' if a else None) for c, a in zip(convs[:-1], acts))
    last = convs[-1]
    bias = None if last.bias is None else last.bias * res_scale
    out.append(FastConv(last.weight * res_scale, bias, last.stride, last.padding, last.dilation, last.groups))
    return out


class _FastBlock(nn.Module):
    """``x + body(x)`` of a ResBlock / InvertedResidual, optionally after the release's 1x1 reduction (_Reduce)."""

    def __init__(self, block):
        super().__init__()
        self.reduce = FastConv.from_conv(block.conv) if isinstance(block, _Reduce) else None
        if isinstance(block, ResBlock):
            scale = block.res_scale
        elif isinstance(block, (InvertedResidual, _Reduce)):
            scale = 1.
        else:
            raise TypeError(f'FastSLWSR: unexpected block {type(block).__name__}.')
        self.convs = _block_convs(block, scale)

    def forward(self, x):
        if self.reduce is not None:
            x = self.reduce(x)
        h = x
        for conv in self.convs[:-1]:
            h = conv(h)
        return self.convs[-1](h, x)


class FastSLWSR(FastForm):
    """Wraps a trained SLWSR for inference; ``forward`` returns what ``SLWSR.forward`` returns (to ~1e-6 on [0, 1]).

    Args:
        net (SLWSR): The trained network.
    """

    arch = (SLWSR, )

    def __init__(self, net):
        super().__init__(net)
        self.head = FastConv.from_conv(net.head[0])
        self.blocks = nn.ModuleDict({name: _FastBlock(getattr(net, name)) for name in net.block_names})
        self.pool = FastConv.from_conv(net.conv1)
        up, last = net.tail
        if not isinstance(up, Upsample):
            raise TypeError('FastSLWSR: the tail must be Upsample + conv.')
        convs = [m for m in up if isinstance(m, nn.Conv2d)]
        shuffles = [m.upscale_factor for m in up if isinstance(m, nn.PixelShuffle)]
        then = [None] * (len(convs) - 1) + [fold_output_affine(last, net.add_mean, 1 / net.img_range)]
        self.up = nn.ModuleList(ShuffleConv(FastConv.from_conv(c), r, t) for c, r, t in zip(convs, shuffles, then))

    def _forward(self, x):
        net = self.net
        x1 = self.head.head(net.sub_mean(x * net.img_range))
        n, c, h, w = x1.shape
        sources = net.pool_sources
        pool_in, mix_in = self.scratch.get(x1, ((n, c * len(sources), h, w), (n, 2 * c, h, w)))
        slot = {name: i for i, name in enumerate(sources)}
        pool_in[:, :c].copy_(x1)
        levels, depth = net.levels, net.depth
        skips, inp = [], x1
        for g in range(2, levels + 3):  # encoder LBs, then the bottleneck (g = levels + 2)
            count = depth if g < levels + 2 else 2
            out = first = None
            for j in range(1, count + 1):
                name = f'feat{g}_{j}'
                out = self.blocks[name](inp if j == 1 else out)
                if j == 1:
                    first = out
                if name in slot:
                    i = slot[name]
                    pool_in[:, i * c:(i + 1) * c].copy_(out)
            skips.append(out)
            inp = first + out if count > 1 else out  # eq. 2
        pool = self.pool(pool_in)
        prev = skips.pop()
        for g in range(levels + 3, 2 * levels + 3):
            mix_in[:, :c].copy_(prev)
            # 0.5 * skip + 0.5 * pool (§III-B); halving is exact, so this equals the module's sum bit for bit
            torch.mul(skips.pop(), 0.5, out=mix_in[:, c:]).add_(pool, alpha=0.5)
            prev = self.blocks[f'feat{g}_1'](mix_in)
            for j in range(2, depth):
                prev = self.blocks[f'feat{g}_{j}'](prev)
            if depth > 1:
                prev = self.blocks[f'conv{g}'](prev)
        t = prev + x1
        for up in self.up:
            t = up(t, scratch=self.scratch)
        return t
