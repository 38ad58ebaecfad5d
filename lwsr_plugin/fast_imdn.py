"""Inference-only forward of IMDN and IMDN_AS (issue 7, speed): the arithmetic of ``IMDN.forward`` (Hui et al.,
ACM MM 2019, §3.1-3.2: IMDB eqs. 3-5, IIC, pixel-shuffle upsampler), rearranged for CPU memory traffic.

Measured on the official x4 model at 320x180 (``scripts/benchmark_inference.py``), the plain module spends a third
of its time outside the convolutions. What this forward changes, each for a measured reason:

* Each distillation conv (c1-c3) runs as two convs, 16 "refined" and 48 "coarse" output channels: slicing the coarse
  channels out of a channels_last map is a strided view, which oneDNN first copies to a dense tensor; two dense
  outputs cost less than that copy.
* The four refined parts are written into one reused buffer instead of a fresh ``torch.cat`` result, and the six
  block outputs into one reused 6*C-channel buffer: large fresh tensors page-fault on first touch (glibc returns
  freed big blocks to the OS), which cost more than the copies themselves.
* The CCA statistics (eq. 5) are two plain reductions over a 2-D view instead of ``std_mean`` (Welford), and the
  attention weights scale the reused buffer in place.

Output equals the module's to ~5e-6 (fp32). Weights are shared with the wrapped network; split convs hold copies of
c1-c3 slices. The buffers are cached per input shape while they are small (a whole 2000x2000 image is not cached).
"""
import torch
from torch import nn

from lwsr_plugin.archs.imdn_arch import IMDN, IMDN_AS, adaptive_crop_forward

_CACHE_LIMIT = 512 * 2**20  # bytes of buffers kept between calls
_CACHE_ENTRIES = 4  # tile windows, the last smaller batch, and their rot90 shapes under the ensemble


def _split_conv(conv, first):
    """Two convs computing channels [:first] and [first:] of ``conv``'s output."""
    parts = []
    for sl in (slice(0, first), slice(first, conv.out_channels)):
        part = nn.Conv2d(conv.in_channels, sl.stop - sl.start, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None)
        with torch.no_grad():
            part.weight.copy_(conv.weight[sl])
            if conv.bias is not None:
                part.bias.copy_(conv.bias[sl])
        parts.append(part)
    return nn.ModuleList(parts)


class FastIMDN(nn.Module):
    """Wraps a trained IMDN or IMDN_AS for inference (eval mode, no autograd); ``forward`` returns what the wrapped
    network's ``forward`` returns.

    Args:
        net (IMDN | IMDN_AS): The trained network; its weights are used as they are (not copied).
    """

    def __init__(self, net):
        super().__init__()
        if not isinstance(net, (IMDN, IMDN_AS)):
            raise TypeError(f'FastIMDN takes IMDN or IMDN_AS, got {type(net).__name__}.')
        self.net = net.eval()
        self.blocks = [getattr(net, f'IMDB{i}') for i in range(1, net.num_block + 1)]
        self.splits = nn.ModuleList(
            nn.ModuleList(_split_conv(conv, blk.distilled) for conv in (blk.c1, blk.c2, blk.c3)) for blk in self.blocks)
        self._buffers_cache = {}

    def _scratch(self, fea):
        """(trunk: N x 6C, refined: N x C, spare: N*C*H*W) buffers in ``fea``'s dtype, device and memory format."""
        n, c, h, w = fea.shape
        fmt = torch.channels_last if fea.is_contiguous(memory_format=torch.channels_last) and c > 1 \
            else torch.contiguous_format
        key = (n, c, h, w, fea.dtype, fea.device, fmt)
        bufs = self._buffers_cache.get(key)
        if bufs is None:
            opts = dict(dtype=fea.dtype, device=fea.device)
            bufs = (torch.empty(n, c * len(self.blocks), h, w, memory_format=fmt, **opts),
                    torch.empty(n, c, h, w, memory_format=fmt, **opts), torch.empty(n * c * h * w, **opts))
            if sum(b.numel() for b in bufs) * fea.element_size() <= _CACHE_LIMIT:
                if len(self._buffers_cache) >= _CACHE_ENTRIES:
                    self._buffers_cache.pop(next(iter(self._buffers_cache)))
                self._buffers_cache[key] = bufs
        return bufs

    @staticmethod
    def _statistics(cca, x, spare):
        """std + mean per channel (eq. 5) as two reductions over a (N, HW, C) or (N, C, HW) view."""
        if cca.stats_hook is not None:
            return cca.statistics(x)
        n, c, h, w = x.shape
        if x.is_contiguous(memory_format=torch.channels_last):
            flat, dim = x.permute(0, 2, 3, 1).reshape(n, h * w, c), 1
        else:  # the other layout ``_scratch`` allocates: contiguous NCHW
            flat, dim = x.reshape(n, c, h * w), 2
        # sums accumulate in float32 inside the kernel even for bf16/fp16 inputs; dtype= would copy the map first
        mean = flat.sum(dim, keepdim=True).float().div_(h * w)
        dev = torch.sub(flat, mean.to(x.dtype), out=spare[:flat.numel()].view(flat.shape))
        var = dev.square_().sum(dim, keepdim=True).float().div_(h * w)
        return (var.sqrt_() + mean).to(x.dtype).reshape(n, c, 1, 1)

    def _block(self, blk, split, x, refined, spare):
        """One IMDB (eqs. 3-5) into fresh output; ``refined`` and ``spare`` are scratch."""
        d = blk.distilled
        coarse = x
        for j, (refine_conv, coarse_conv) in enumerate(split):
            refined[:, j * d:(j + 1) * d].copy_(blk.act(refine_conv(coarse)))
            coarse = blk.act(coarse_conv(coarse))
        refined[:, 3 * d:].copy_(blk.c4(coarse))
        gate = blk.cca.conv_du(self._statistics(blk.cca, refined, spare))
        return blk.c5(refined.mul_(gate)).add_(x)

    def _whole(self, x):
        net = self.net
        fea = net.fea_conv(x)
        trunk, refined, spare = self._scratch(fea)
        c = fea.shape[1]
        out = fea
        for i, (blk, split) in enumerate(zip(self.blocks, self.splits)):
            out = self._block(blk, split, out, refined, spare)
            trunk[:, i * c:(i + 1) * c].copy_(out)
        return net.upsampler(net.LR_conv(net.c(trunk)).add_(fea))

    def forward(self, x):
        # inference mode throughout: the cached buffers are inference tensors and are written in place
        with torch.inference_mode():
            net = self.net
            if isinstance(net, IMDN_AS):
                h, w = x.shape[-2:]
                if h % 4 or w % 4:
                    return adaptive_crop_forward(self._whole, x, net.acs_padding)
            return self._whole(x)


def fast_inference_net(net):
    """``FastIMDN(net)`` for IMDN / IMDN_AS, else ``net`` unchanged."""
    return FastIMDN(net) if isinstance(net, (IMDN, IMDN_AS)) else net
