"""Fast inference form of DRN / DRN+ (Sun et al., ICME 2019, §2.1-2.3: LFE, residual distilling groups and blocks,
eqs. 1-15, pixel-shuffle reconstruction), the module's arithmetic rearranged:

* Each RDB grows its channels (eq. 9: D_{i+1} = D_i + d) inside one reused buffer of the final width, its not yet
  written channels zero: every step's first 1x1 conv reads the whole buffer with its weight zero-padded to that width
  (a dense input; the slice ``[:D_i]`` of a channels_last map would be a strided view that oneDNN copies), and its
  last 1x1 conv likewise writes the whole width, the rows past D_i + d zero (ELU(0) = 0), so the step's output
  ``[x + residual, distilled]`` (eq. 11) is one fused ELU + add over the whole buffer (the distilled part lands on
  zeros; :func:`~lwsr_plugin.fast.kernels.elu_add_`): an add into a channel slice is a strided pass, ~8x slower in
  bf16. No ``torch.split`` / ``torch.cat`` per step. A step's conv outputs that would page-fault as fresh maps
  (DRN+'s 288-channel ones at 720p: over 32 MB, where freed memory is not kept) are written into reused buffers
  (:meth:`~lwsr_plugin.fast.kernels.FastConv.reused`).
* ELU (alpha 0.2) in place with the vectorised ``exp`` on a reused temporary, its argument clamped at -20
  (:func:`~lwsr_plugin.fast.kernels.elu_`): exp of large negative values takes a 10-20x slower path, and
  exp(x) - 1 is -1 below -17 in fp32 anyway.
* The output mean shift and the division by ``img_range`` are folded into the last conv (both are affine maps after
  it, so no border effect). The upsampler's maps (236 MB at 720p) are reused buffers: fresh ones page-fault.
"""
import torch.nn.functional as F
from torch import nn

from lwsr_plugin.archs.drn_arch import DRN
from .kernels import FastConv, FastForm, ShuffleConv, elu_, elu_add_, fold_output_affine, has_compiled


class _FastRDB(nn.Module):

    def __init__(self, rdb):
        super().__init__()
        self.alpha = rdb.fusion[1].alpha
        self.entry = None if isinstance(rdb.entry, nn.Identity) else FastConv.from_conv(rdb.entry[0])
        self.width = rdb.fusion[0].in_channels
        self.first = rdb.steps[0].split[0]
        convs = nn.ModuleList()
        for step in rdb.steps:
            c1, c2, c3 = step.body[0], step.body[2], step.body[4]
            w1 = c1.weight.new_zeros(c1.out_channels, self.width, 1, 1)
            w1[:, :c1.in_channels] = c1.weight
            w3 = c3.weight.new_zeros(self.width, *c3.weight.shape[1:])
            w3[:c3.out_channels] = c3.weight
            b3 = None if c3.bias is None else F.pad(c3.bias, (0, self.width - c3.out_channels))
            convs.append(nn.ModuleList([FastConv(w1, c1.bias), FastConv.from_conv(c2), FastConv(w3, b3)]))
        self.steps = convs
        self.fusion = FastConv.from_conv(rdb.fusion[0])

    def forward(self, x, buf, tmp, scratch):
        a = self.alpha
        first = self.first
        if self.entry is None:
            buf[:, :first].copy_(x)
        else:
            buf[:, :first].copy_(elu_(self.entry.reused(x, scratch, 'entry'), a, tmp))
        buf[:, first:].zero_()
        for c1, c2, c3 in self.steps:
            h = elu_(c1.reused(buf, scratch, 'c1'), a, tmp)
            h = elu_(c2.reused(h, scratch, 'c2'), a, tmp)
            elu_add_(buf, c3.reused(h, scratch, 'c3'), a, tmp)
        return elu_(self.fusion(buf), a, tmp)


class FastDRN(FastForm):
    """Wraps a trained DRN / DRN+ for inference; ``forward`` returns what ``DRN.forward`` returns (to ~1e-6).

    Args:
        net (DRN): The trained network.
    """

    arch = (DRN, )

    def __init__(self, net):
        super().__init__(net)
        self.lfe = FastConv.from_conv(net.lfe)
        self.groups = nn.ModuleList()
        self.group_fusion = []
        for rdg in net.rdgs:
            layers = list(rdg.body)
            rdbs = nn.ModuleList(_FastRDB(m) for m in layers if type(m).__name__ == 'RDB')
            fusion = FastConv.from_conv(layers[-2]) if isinstance(layers[-2], nn.Conv2d) else None
            self.groups.append(nn.ModuleList([rdbs, nn.ModuleList([fusion] if fusion is not None else [])]))
        self.alpha = net.rdgs[0].body[0].fusion[1].alpha
        self.upsampler = ShuffleConv(FastConv.from_conv(net.upsample[0]), net.upscale)
        self.conv_out = fold_output_affine(net.conv_out, net.add_mean, 1 / net.img_range)

    def _forward(self, x):
        net = self.net
        y0 = self.lfe.head(net.sub_mean(x * net.img_range))
        n, _, h, w = y0.shape
        rdb0 = self.groups[0][0][0]
        buf, = self.scratch.get(y0, ((n, rdb0.width, h, w), ))
        # the eager ELU's temporary, only where the compiled one does not run (the buffers share one size budget)
        tmp = None if has_compiled(y0) else self.scratch.get(y0, ((n * rdb0.width * h * w, ), ), 'elu')[0]
        y = y0
        for rdbs, fusion in self.groups:
            g = y
            for rdb in rdbs:
                g = rdb(g, buf, tmp, self.scratch)
            if len(fusion):
                g = elu_(fusion[0](g), self.alpha, tmp)
            y = g.add_(y)  # Y_g = F_g(Y_{g-1}) + Y_{g-1}
        y = y.add_(y0)  # eq. 3: Y_DF = Y_0 + Y_RDGs
        return self.conv_out(self.upsampler(y, scratch=self.scratch))
