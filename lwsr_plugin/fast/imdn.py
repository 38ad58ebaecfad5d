"""Fast inference forms of the IMDN family: the arithmetic of ``IMDN.forward`` / ``IMDN_RTC``
(Hui et al., ACM MM 2019, §3.1-3.2: IMDB eqs. 3-5, IIC, pixel-shuffle upsampler), rearranged for memory traffic.

What changes, each for a measured reason (``scripts/benchmark_inference.py``):

* Each distillation conv (c1-c3) runs as two convs, the "refined" and the "coarse" output channels: slicing the
  coarse channels out of a channels_last map is a strided view, which oneDNN first copies to a dense tensor; two
  dense outputs cost less than that copy. LeakyReLU is their fused post-op (:class:`~lwsr_plugin.fast.kernels.FastConv`).
* The four refined parts are written into one reused buffer instead of a fresh ``torch.cat`` result, and the block
  outputs (bf16) into one reused ``num_block * C``-channel buffer: large fresh tensors page-fault on first touch. Each
  block's c5 accumulates onto a copy of its input in one of two alternating reused buffers (IMDN x4 at 720p:
  page faults 84 -> 25 MB per forward, 307 -> 288 ms; x2: 1266 -> 928 MB, 1482 -> 1336 ms; medians of 9).
* In fp32 the 1x1 fusion conv over the concatenated block outputs (§3.1, the trunk's ``c``) is one 1x1 conv per
  block output, accumulated into one reused C-channel map: no ``num_block * C``-channel buffer to fill and read.
* The CCA statistics (eq. 5) are two plain reductions over a 2-D view instead of ``std_mean`` (Welford), and the
  attention weights (one fp32 image) scale the block's 1x1 conv c5's input channels in its weight, not the map;
  c5 adds the block input.

Output equals the module's to ~5e-6 (fp32). Split convs hold copies of the conv weights; the CCA layers stay the
wrapped network's (their ``stats_hook`` serves tiled inference).
"""
import torch
from torch import nn

from lwsr_plugin.archs.imdn_arch import IMDN, IMDN_AS, IMDN_RTC, adaptive_crop_forward
from .kernels import FastConv, FastForm, ShuffleConv, split_conv


def _statistics(cca, x, spare):
    """std + mean per channel (eq. 5) as two reductions over a (N, HW, C) or (N, C, HW) view."""
    if cca.stats_hook is not None:
        return cca.statistics(x)
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        flat, dim = x.permute(0, 2, 3, 1).reshape(n, h * w, c), 1
    else:  # the other layout ``Scratch`` allocates: contiguous NCHW
        flat, dim = x.reshape(n, c, h * w), 2
    # sums accumulate in float32 inside the kernel even for bf16/fp16 inputs; dtype= would copy the map first
    mean = flat.sum(dim, keepdim=True).float().div_(h * w)
    dev = torch.sub(flat, mean.to(x.dtype), out=spare[:flat.numel()].view(flat.shape))
    var = dev.square_().sum(dim, keepdim=True).float().div_(h * w)
    return (var.sqrt_() + mean).to(x.dtype).reshape(n, c, 1, 1)


# narrowest refined part worth a conv of its own: IMDN_RTC's 3-channel parts are too narrow for oneDNN's blocked
# kernels (split, its fp32 forward took 1.28x the module's; unsplit 0.95-1.0x), IMDN's 16 are not. Unsplit, each
# step's conv reads the previous step's whole output with zero weights on its refined channels: the coarse slice
# was copied by every conv (12 -> 16 input channels is one oneDNN block either way)
_SPLIT_MIN = 8


class _FastIMDB(nn.Module):
    """One IMDB (eqs. 3-5) as split / fused convs; the CCA layer is the trained block's own."""

    def __init__(self, blk):
        super().__init__()
        slope = blk.act.negative_slope
        self.d = blk.distilled
        self.split = blk.distilled >= _SPLIT_MIN
        sizes = (blk.distilled, blk.remaining) if self.split else (blk.distilled + blk.remaining, )
        self.steps = nn.ModuleList(split_conv(c, sizes, 'lrelu', slope) for c in (blk.c1, blk.c2, blk.c3))
        self.c4 = FastConv.from_conv(blk.c4)
        if not self.split:  # c2-c4 read their predecessor's whole output, zero weights on its refined channels
            for conv in [self.steps[1][0], self.steps[2][0], self.c4]:
                conv.weight = torch.cat([conv.weight.new_zeros(conv.weight.shape[0], self.d, *conv.weight.shape[2:]),
                                         conv.weight], 1)
        self.c5 = FastConv.from_conv(blk.c5)
        self.cca = blk.cca if hasattr(blk.cca, 'conv_du') else None

    def forward(self, x, refined, spare, out=None):
        """The block's output, written into ``out`` when given (a reused buffer; not ``x``)."""
        d = self.d
        coarse = x
        for j, convs in enumerate(self.steps):
            if self.split:
                refined[:, j * d:(j + 1) * d].copy_(convs[0](coarse))
                coarse = convs[1](coarse)
            else:
                out = convs[0](coarse)
                refined[:, j * d:(j + 1) * d].copy_(out[:, :d])
                coarse = out
        refined[:, 3 * d:].copy_(self.c4(coarse))
        scale = None
        if self.cca is not None:
            gate = self.cca.conv_du(_statistics(self.cca, refined, spare))
            # one fp32 image: the gate scales c5's input channels, folded into c5's weight (bf16 keeps the product on
            # the map: a gate-scaled bf16 weight rounds once more, -0.0015 to -0.0025 dB Set5 PSNR for IMDN x2/x3)
            if gate.shape[0] == 1 and refined.dtype == torch.float32:
                scale = gate
            else:
                refined.mul_(gate)
        if out is None:
            return self.c5(refined, x, in_scale=scale)
        return self.c5(refined, out.copy_(x), accumulate=True, in_scale=scale)


class FastIMDN(FastForm):
    """Wraps a trained IMDN or IMDN_AS for inference (eval mode, no autograd); ``forward`` returns what the wrapped
    network's ``forward`` returns.

    Args:
        net (IMDN | IMDN_AS): The trained network.
    """

    arch = (IMDN, IMDN_AS)

    def __init__(self, net):
        super().__init__(net)
        if isinstance(net, IMDN_AS):  # two stride-2 convs bring the resized image to 1/4 resolution
            self.head = nn.ModuleList([FastConv.from_conv(net.fea_conv[0], 'lrelu', net.fea_conv[1].negative_slope),
                                       FastConv.from_conv(net.fea_conv[2])])
        else:
            self.head = nn.ModuleList([FastConv.from_conv(net.fea_conv)])
        self.blocks = nn.ModuleList(_FastIMDB(getattr(net, f'IMDB{i}')) for i in range(1, net.num_block + 1))
        self.fuse = FastConv.from_conv(net.c[0], 'lrelu', net.c[1].negative_slope)
        # the fusion conv's weight by input channels, one part per block output (fp32, see _whole)
        w, b, nf = net.c[0].weight, net.c[0].bias, net.c[0].in_channels // net.num_block
        self.fuse_parts = nn.ModuleList(FastConv(w[:, i * nf:(i + 1) * nf], b if i == 0 else None)
                                        for i in range(net.num_block))
        self.lr_conv = FastConv.from_conv(net.LR_conv)
        self.upsampler = ShuffleConv(FastConv.from_conv(net.upsampler[0]), net.upsampler[1].upscale_factor)

    def _whole(self, x):
        fea = self.head[0].head(x)
        for conv in self.head[1:]:
            fea = conv(fea)
        n, c, h, w = fea.shape
        d = self.blocks[0].d
        # fp32: the 1x1 fusion conv over the concatenated block outputs runs as one 1x1 conv per block accumulated
        # into a C-channel map, so no num_block * C-channel buffer is written and read (IMDN x3 at 720p, 6 blocks:
        # 39 -> 19 ms; x2: 354 MB less memory). bf16 keeps the concatenation: each accumulation would round again
        parts = fea.dtype == torch.float32
        trunk, refined, spare, *outs = self.scratch.get(
            fea, ((n, c if parts else c * len(self.blocks), h, w), (n, 4 * d, h, w), (n * 4 * d * h * w, ),
                  (n, c, h, w), (n, c, h, w)))
        out = fea
        for i, blk in enumerate(self.blocks):
            out = blk(out, refined, spare, outs[i % 2])
            if not parts:
                trunk[:, i * c:(i + 1) * c].copy_(out)
            elif i == 0:
                self.fuse_parts[0].into(out, trunk)
            else:
                self.fuse_parts[i](out, trunk, accumulate=True)
        fused = self.fuse._tail_(trunk) if parts else self.fuse(trunk)
        lr = self.lr_conv(fused, fea)
        # the upsampler's two maps are the largest of a forward's end: the head's map and a bf16 fused map are no
        # longer needed there (a tile window's forward peaks here; 18 MiB less for a 272x272 window, fp32)
        del fea, fused
        return self.upsampler(lr)

    def _forward(self, x):
        if isinstance(self.net, IMDN_AS):
            h, w = x.shape[-2:]
            if h % 4 or w % 4:
                return adaptive_crop_forward(self._whole, x, self.net.acs_padding)
        return self._whole(x)


class FastIMDN_RTC(FastForm):
    """Wraps a trained IMDN_RTC (the official real-time model: IMDBs without attention, 1x1 conv + long skip,
    pixel-shuffle upsampler) for inference, in the caller's memory layout (see ``_forward``).

    Args:
        net (IMDN_RTC): The trained network.
    """

    arch = (IMDN_RTC, )

    def __init__(self, net):
        super().__init__(net)
        head, shortcut, up_conv, shuffle = net.model
        *blocks, tail = shortcut.sub
        self.head = FastConv.from_conv(head)
        self.blocks = nn.ModuleList(_FastIMDB(b) for b in blocks)
        self.tail = FastConv.from_conv(tail)
        self.upsampler = ShuffleConv(FastConv.from_conv(up_conv), shuffle.upscale_factor)

    def _forward(self, x):
        # the caller's layout (lwsr-upscale's: channels_last). In NCHW the 3-channel refined parts are dense slices
        # to copy (channels_last: strided), but the convs run slower: at 640x360 input on an AMX CPU NCHW took bf16
        # 41.6 / 43.9 ms against 37.1 / 39.0 channels_last, fp32 90.9 / 114.1 against 88.7 / 106.5 (medians of 21
        # interleaved rounds, two runs); on an AVX512-BF16 CPU the fp32 layouts measured alike (95 / 97 ms)
        fea = self.head.head(x)
        n, _, h, w = fea.shape
        d = self.blocks[0].d
        refined, = self.scratch.get(fea, ((n, 4 * d, h, w), ))
        out = fea
        for blk in self.blocks:
            out = blk(out, refined, None)
        return self.upsampler(self.tail(out, fea))
