"""Fast inference form of IDN (Hui et al., CVPR 2018, §3.1-3.3: FBlock, DBlocks with enhancement unit eqs. 6-11
and compression unit eq. 12, RBlock + bicubic skip eq. 3), the module's arithmetic rearranged:

* The RBlock's 17x17 stride-s transposed conv runs as a dense conv to ``s*s`` phases + pixel shuffle
  (:func:`~lwsr_plugin.fast.kernels.deconv_as_subpixel`): the same products, 7-8x less time at x4 on CPU.
* The last conv of the upper chain is two convs, the kept ``D3/s`` channels and the rest (eq. 9): no strided slice
  for oneDNN to copy. Eq. 11's ``P2 + C(S(P1, 1/s), B)`` adds the block input and the kept slice into P2's channel
  ranges in place instead of concatenating first.
* Every conv carries its LeakyReLU as a fused post-op, with the weight packed once. Maps that would page-fault as
  fresh tensors (64 channels at x2 and 720p: 59 MB, where freed memory is not kept) are written into reused
  buffers (:meth:`~lwsr_plugin.fast.kernels.FastConv.reused`), the block outputs into two alternating ones.
"""
from torch import nn

from lwsr_plugin.archs.idn_arch import IDN
from .kernels import FastConv, FastForm, ShuffleConv, deconv_as_subpixel, split_conv


class _FastDBlock(nn.Module):

    def __init__(self, blk):
        super().__init__()
        slope = blk.upper[1].negative_slope
        up, low = blk.upper, blk.lower
        self.upper = nn.ModuleList(FastConv.from_conv(up[i], 'lrelu', slope) for i in (0, 2))
        self.kept, self.rest = split_conv(up[4], (blk.kept, up[4].out_channels - blk.kept), 'lrelu', slope)
        self.lower = nn.ModuleList(FastConv.from_conv(low[i], 'lrelu', slope) for i in (0, 2, 4))
        self.compress = FastConv.from_conv(blk.compress[0], 'lrelu', slope)

    def forward(self, x, scratch, out_tag):
        p = self.upper[1].reused(self.upper[0].reused(x, scratch, 'u0'), scratch, 'u1')
        kept, rest = self.kept.reused(p, scratch, 'kept'), self.rest.reused(p, scratch, 'rest')
        for i, conv in enumerate(self.lower):
            rest = conv.reused(rest, scratch, f'l{i}')
        c = x.shape[1]
        rest[:, :c].add_(x)  # eq. 11: P2 + R, R = [block input, kept slice] in the official concat order
        rest[:, c:].add_(kept)
        return self.compress.reused(rest, scratch, out_tag)


class FastIDN(FastForm):
    """Wraps a trained IDN for inference; ``forward`` returns what ``IDN.forward`` returns (to ~1e-6 in fp32).

    Args:
        net (IDN): The trained network.
    """

    arch = (IDN, )

    def __init__(self, net):
        super().__init__(net)
        slope = net.fblock[1].negative_slope
        self.fblock = nn.ModuleList(FastConv.from_conv(net.fblock[i], 'lrelu', slope) for i in (0, 2))
        self.dblocks = nn.ModuleList(_FastDBlock(b) for b in net.dblocks)
        self.rblock = ShuffleConv(deconv_as_subpixel(net.rblock), net.upscale)

    def _forward(self, x):
        f = self.fblock[1].reused(self.fblock[0].head(x), self.scratch, 'out1')
        for i, blk in enumerate(self.dblocks):
            f = blk(f, self.scratch, f'out{i % 2}')  # a block reads the other buffer than it writes
        res = self.rblock(f)
        # eq. 3: R(...) + U(x), the bicubic skip at the input's precision (fp32 for an fp32 image)
        return res.to(x.dtype).add_(self.net.upsample(x))
