"""Building blocks of the fast inference forms, shared by every arch family.

The forms rearrange a trained network's arithmetic for inference; these are the general mechanisms they use, each
kept for a measured reason (``scripts/benchmark_inference.py``, 2 CPU cores):

* :class:`FastConv`: one conv with its elementwise tail fused. On CPU it calls oneDNN through
  ``torch.ops.mkldnn._convolution_pointwise`` with the weight reordered once into oneDNN's blocked layout (a plain
  ``F.conv2d`` reorders it on every call) and LeakyReLU / ReLU as a post-op (a 48-channel 3x3 conv + LeakyReLU at
  320x180: 28-36 ms fused against 44-48 ms as two ops). A residual ``+ other`` is an add after the conv in fp32
  (faster here than oneDNN's binary post-op), the post-op in bf16 (one rounding), or the post-op accumulating into
  ``other`` in place, which may be a channel slice of a larger buffer, so a conv can write into a concatenation
  buffer without a copy. Elsewhere (CUDA, fp16 on CPU, a build without oneDNN) it is ``F.conv2d`` followed by the
  same tail in place.
* :func:`split_conv` / :func:`merge_convs`: output channels of one conv as several convs, or several convs reading
  the same input as one: a slice of a channels_last map is a strided view that oneDNN first copies.
* :func:`deconv_as_subpixel`: a strided ``ConvTranspose2d`` as a dense conv + pixel shuffle (the same products;
  IDN's 17x17 stride-4 RBlock: 270-316 ms as a transposed conv, 36-40 ms as a 5x5 conv to 16 channels).
* :class:`Scratch`: buffers reused between calls of the same shape: a large fresh tensor page-faults on first
  touch (glibc returns freed big blocks to the OS), which costs more than filling it.
* :func:`elu_` / :func:`elu_add_`: ELU in place, or ``dst += elu(y)``, as one compiled loop.
* :func:`phase_conv` (:class:`ShuffleConv` ``then``): a conv after a pixel shuffle as a conv on its phases.
* :func:`keep_freed_memory`: glibc keeps freed memory in an inference process (no page faults on large maps).
"""
import ctypes
import ctypes.util
import functools
import logging
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

_MKLDNN_DTYPES = (torch.float32, torch.bfloat16)
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest dynamic mmap threshold: a larger block is a fresh mapping
_memory_kept = False  # keep_freed_memory applied in this process
_CACHE_LIMIT = 1024 * 2**20  # bytes of scratch buffers kept between calls, all entries together
# a form's own buffers and its upsamplers', for the tile window, the last smaller batch and their rot90 shapes
_CACHE_ENTRIES = 16


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _glibc(name):
    """The C library's function ``name`` on Linux, None where there is none (another OS; musl has no mallopt or
    malloc_trim)."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6'), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory():
    """Tells glibc's allocator to keep freed memory for reuse in this process (``mallopt``: no ``mmap`` for large
    blocks, trim the heap only past 2 GiB free). By default every block over 32 MB is a fresh mapping and freed
    heap tops go back to the OS, so each large activation of each forward page-faults on first touch: IMDN x2 at
    720p output faulted 1.27 GB per forward, and a fault here costs about as much as writing the page (the fast
    form's forward took 1142 ms with this against 1482 ms without, medians of 9). Memory held stays at the process's
    peak: for a process that runs inference (``lwsr-upscale`` calls this on CPU), not one that trains.
    ``LWSR_KEEP_MEMORY=0`` turns it off. Returns True when applied (Linux with glibc)."""
    mallopt = _glibc('mallopt')
    if os.environ.get('LWSR_KEEP_MEMORY', '1') == '0' or mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    global _memory_kept
    _memory_kept = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    return _memory_kept


def trim_freed_memory():
    """Hands the free memory at the top of the heap and in its free pages back to the system (glibc's
    ``malloc_trim``), kept or not by :func:`keep_freed_memory`; for the end of a large piece of work, e.g. an image of
    ``lwsr-upscale``. Returns True when something was released."""
    trim = _glibc('malloc_trim')
    return trim is not None and bool(trim(0))


def fresh_faults(x, nbytes):
    """Whether a fresh tensor of ``nbytes`` on ``x``'s device page-faults on first touch: on CPU, larger than glibc's
    mmap threshold in a process that has not kept freed memory (:func:`keep_freed_memory`)."""
    return x.device.type == 'cpu' and nbytes > _MMAP_THRESHOLD and not _memory_kept


class _PackCache(dict):
    """Weights in oneDNN's layout, keyed by dtype; never deep-copied or pickled (oneDNN tensors are neither), and
    rebuilt on demand."""

    def __deepcopy__(self, memo):
        return _PackCache()

    def __reduce__(self):
        return (_PackCache, ())


@functools.lru_cache(maxsize=None)
def _mkldnn_bf16():
    check = getattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', None)
    return bool(check is not None and check())


def mkldnn_usable(x):
    """True when ``x`` can take the fused oneDNN path: a 4-D fp32 CPU tensor, or bf16 where oneDNN has bf16 kernels
    for this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; it refuses bf16 weights otherwise, e.g. on an AVX2 CPU), and a
    PyTorch built with oneDNN."""
    return (x.device.type == 'cpu' and x.dtype in _MKLDNN_DTYPES and x.dim() == 4 and torch.backends.mkldnn.enabled
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
            and (x.dtype == torch.float32 or _mkldnn_bf16()))


class FastConv(nn.Module):
    """``act(conv(x) [+ other])`` for inference, with the conv's weight held here (a copy, so that splits and
    merges of trained convs are possible) and, on CPU, packed once for oneDNN.

    Args:
        weight (Tensor): (out, in / groups, kh, kw).
        bias (Tensor | None): (out, ).
        stride, padding, dilation, groups: as ``nn.Conv2d``.
        act (str | None): None, 'relu' or 'lrelu' (with ``slope``).
        slope (float): LeakyReLU negative slope.
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, act=None, slope=0.0):
        super().__init__()
        if act not in (None, 'relu', 'lrelu'):
            raise ValueError(f'FastConv: act must be None, relu or lrelu, got {act!r}.')
        self.register_buffer('weight', weight.detach().contiguous().clone())
        self.register_buffer('bias', None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.act, self.slope = groups, act, float(slope)
        self._packed = _PackCache()

    @classmethod
    def from_conv(cls, conv, act=None, slope=0.0, out=None):
        """From an ``nn.Conv2d``; ``out`` (a slice) keeps only those output channels."""
        if isinstance(conv.padding, str):
            raise ValueError(f'FastConv: string padding {conv.padding!r} is not supported.')
        sl = out if out is not None else slice(None)
        bias = None if conv.bias is None else conv.bias[sl]
        return cls(conv.weight[sl], bias, conv.stride, conv.padding, conv.dilation, conv.groups, act, slope)

    @property
    def out_channels(self):
        return self.weight.shape[0]

    def _apply(self, fn, *args, **kwargs):
        self._packed = _PackCache()  # .to() / .half(): the packed copy no longer matches the weight
        return super()._apply(fn, *args, **kwargs)

    def _mkldnn_weight(self, x):
        w = self.weight
        # an in-place change of the weight (load_state_dict) repacks; inference tensors have no version counter
        key = (w.dtype, w.data_ptr(), None if w.is_inference() else w._version)
        packed = self._packed.get(key)
        if packed is None:
            with torch.inference_mode():
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    self.weight.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            self._packed.clear()
            self._packed[key] = packed
        return packed

    def _unary(self):
        if self.act == 'relu':
            return 'relu', []
        if self.act == 'lrelu':
            return 'leaky_relu', [self.slope]
        return 'none', []

    def _tail_(self, y):
        if self.act == 'relu':
            return y.relu_()
        if self.act == 'lrelu':
            return F.leaky_relu_(y, self.slope)
        return y

    def head(self, x):
        """``act(conv(x))`` for the network's first conv, which reads the image: an fp32 ``x`` with bf16/fp16
        weights runs as ``conv(hi) + conv(lo)``, ``hi`` = ``x`` rounded to the weights' type and ``lo`` the rest, so
        the image keeps its fp32 precision (a bf16 image is off by up to 1/512 of its value, a visible error that
        cost IDN x4 0.037 dB Set5 Y-PSNR, against 0.0015 dB this way); one extra conv of a 1-3 channel input."""
        if x.dtype == self.weight.dtype or not x.is_floating_point():
            return self(x)
        hi = x.to(self.weight.dtype)
        lo = (x - hi.to(x.dtype)).to(self.weight.dtype)
        low = F.conv2d(lo, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return self(hi, low.contiguous(memory_format=torch.channels_last) if hi.is_contiguous(
            memory_format=torch.channels_last) and hi.shape[1] > 1 else low)

    def into(self, x, out):
        """``act(conv(x))`` written into ``out`` (e.g. a :class:`Scratch` buffer): a fresh output of more than
        32 MB is a new mapping that page-faults on first touch (glibc maps such blocks anew each time), ~0.25 ms
        per MB here, more than the conv into mapped memory costs; zeroing ``out`` and accumulating into it is
        exact."""
        return self(x, out.zero_(), accumulate=True)

    def reused(self, x, scratch, tag):
        """``act(conv(x))``, written :meth:`into` a ``scratch`` buffer (``tag``: its name) where a fresh output
        would page-fault (:func:`fresh_faults`), fresh otherwise: the zeroing pass costs more than glibc's reuse
        of kept memory (a 64 -> 288 1x1 conv at 640x360: 141 ms fresh, 65 ms into a buffer, 53 ms fresh with freed
        memory kept; minimums of 7)."""
        n, _, h, w = x.shape
        kh, kw = self.weight.shape[2:]
        size = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, p, d, k, st in zip((h, w), self.padding, self.dilation, (kh, kw), self.stride)]
        shape = (n, self.out_channels, *size)
        if not fresh_faults(x, x.element_size() * n * self.out_channels * size[0] * size[1]):
            return self(x)
        return self.into(x, scratch.get(x, (shape, ), tag)[0])

    def forward(self, x, other=None, accumulate=False, in_scale=None):
        """``act(conv(x))``; with ``other``: ``act(conv(x) + other)``, written into ``other`` when ``accumulate``
        (``other`` may then be a channel slice of a larger tensor). ``in_scale`` (C_in values): ``conv(x * in_scale)``
        computed as a conv with the weight's input channels scaled (a 64x64 product instead of a pass over the
        map; IMDN's CCA gate before c5), unpacked."""
        if x.dtype != self.weight.dtype:
            raise TypeError(f'FastConv: input is {x.dtype}, weights are {self.weight.dtype}; move the fast form with '
                            '.to(dtype) first.')
        weight = self.weight if in_scale is None else self.weight * in_scale.reshape(1, -1, 1, 1).to(self.weight)
        if mkldnn_usable(x) and not (accumulate and other.dtype != x.dtype):
            w = self._mkldnn_weight(x) if in_scale is None else weight
            if other is None:
                unary, scalars = self._unary()
                return torch.ops.mkldnn._convolution_pointwise(
                    x, w, self.bias, self.padding, self.stride, self.dilation, self.groups, unary, scalars, '')
            if not accumulate and x.dtype == torch.float32:
                # fp32: conv, then add; oneDNN's binary-add post-op took longer than the two (a 12->12 1x1 conv +
                # add on a 640x360 map: 2.1 ms against 0.4 + 0.6). bf16 keeps the post-op: it rounds the sum once
                # (conv and add each rounding cost IMDN_RTC 0.023 dB Set5 PSNR against fp32)
                y = torch.ops.mkldnn._convolution_pointwise(
                    x, w, self.bias, self.padding, self.stride, self.dilation, self.groups, 'none', [], '')
                return self._tail_(y.add_(other))
            op = torch.ops.mkldnn._convolution_pointwise_ if accumulate else torch.ops.mkldnn._convolution_pointwise
            args = (other, x) if accumulate else (x, other)
            fused = self.act == 'relu'  # the only unary oneDNN fuses after a binary add in PyTorch's op
            out = op.binary(*args, w, self.bias, self.padding, self.stride, self.dilation, self.groups, 'add', 1.0,
                            'relu' if fused else None, [], '' if fused else None)
            out = other if accumulate else out
            return out if fused else self._tail_(out)
        # bf16 on a CPU without oneDNN bf16 kernels (AVX2): fp32 arithmetic on the bf16 values, rounded once at the
        # end, as oneDNN's bf16 kernels accumulate and fuse their tail in fp32 (PyTorch's own bf16 conv there rounds
        # the conv and the residual add separately: IMDN x2 and IMDN_RTC lost 0.022-0.025 dB Set5 PSNR against fp32,
        # and it ran 7x slower than fp32)
        emulate = x.dtype == torch.bfloat16 and x.device.type == 'cpu'
        bias = self.bias
        if emulate:
            x, weight, bias = x.float(), weight.float(), None if bias is None else bias.float()
        y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            if accumulate:
                if emulate:
                    return other.copy_(self._tail_(y.add_(other)))
                return self._tail_(other.add_(y))
            y = y.add_(other)
        y = self._tail_(y)
        return y.to(torch.bfloat16) if emulate else y


def split_conv(conv, sizes, act=None, slope=0.0):
    """``conv``'s output channels as consecutive :class:`FastConv` parts of ``sizes`` channels."""
    parts, start = [], 0
    for size in sizes:
        parts.append(FastConv.from_conv(conv, act, slope, slice(start, start + size)))
        start += size
    if start != conv.out_channels:
        raise ValueError(f'split_conv: sizes {sizes} do not add up to {conv.out_channels} output channels.')
    return nn.ModuleList(parts)


def merge_convs(convs, act=None, slope=0.0):
    """Convs that read the same input, with the same geometry, as one :class:`FastConv` whose output channels are
    theirs in order."""
    first = convs[0]
    for c in convs[1:]:
        if (c.kernel_size, c.stride, c.padding, c.dilation, c.groups, c.in_channels) != \
                (first.kernel_size, first.stride, first.padding, first.dilation, first.groups, first.in_channels):
            raise ValueError('merge_convs: the convs differ in geometry or input channels.')
    weight = torch.cat([c.weight for c in convs])
    biases = [c.bias if c.bias is not None else c.weight.new_zeros(c.out_channels) for c in convs]
    bias = None if all(c.bias is None for c in convs) else torch.cat(biases)
    return FastConv(weight, bias, first.stride, first.padding, first.dilation, first.groups, act, slope)


def deconv_as_subpixel(deconv):
    """A ``ConvTranspose2d`` (stride s, kernel K, padding p, groups 1) as a :class:`FastConv` with ``s*s*out``
    output channels, kernel ``2P+1`` and padding P, whose pixel shuffle by s equals the transposed conv's output
    cropped to ``s`` times the input size (rows/cols from 0).

    Output pixel ``s*q + r`` of the transposed conv is ``sum_m x[q - m] * w[s*m + r + p]`` over the m that index the
    kernel: a correlation over the input with taps ``P - m``, one phase r per output channel group (Shi et al.'s
    sub-pixel view of a fractionally strided conv)."""
    if deconv.groups != 1 or tuple(deconv.dilation) != (1, 1) or tuple(deconv.output_padding) != (0, 0):
        raise ValueError('deconv_as_subpixel: groups, dilation and output_padding must be the defaults.')
    (sh, sw), (kh, kw), (ph, pw) = deconv.stride, deconv.kernel_size, deconv.padding
    if sh != sw:
        raise ValueError('deconv_as_subpixel: the stride must be the same along both axes.')
    s = sh

    def taps(k, p):
        lo = min(-((r + p) // s) for r in range(s))  # min over phases of ceil(-(r + p) / s)
        hi = max((k - 1 - r - p) // s for r in range(s))
        return max(hi, -lo)

    P = max(taps(kh, ph), taps(kw, pw))
    size = 2 * P + 1
    w = deconv.weight.detach()  # (in, out, kh, kw)
    cin, cout = w.shape[:2]
    sub = w.new_zeros(cout, s, s, cin, size, size)
    for ry in range(s):
        for rx in range(s):
            for jy in range(size):
                ky = s * (P - jy) + ry + ph
                if not 0 <= ky < kh:
                    continue
                for jx in range(size):
                    kx = s * (P - jx) + rx + pw
                    if 0 <= kx < kw:
                        sub[:, ry, rx, :, jy, jx] = w[:, :, ky, kx].t()
    bias = None if deconv.bias is None else deconv.bias.detach().repeat_interleave(s * s)
    return FastConv(sub.reshape(cout * s * s, cin, size, size), bias, 1, P)


# exp(x) - 1 is exactly -1 in fp32 (and bf16/fp16) below this: exp(-20) = 2.1e-9 is under half an ulp of 1. Sleef's
# exp takes a slow path for arguments whose result underflows (10-20x slower over [-100, 0] than over [-1, 0])
_ELU_FLOOR = -20.0


def _elu_kernel(x, alpha: float):
    negative = torch.clamp(x, _ELU_FLOOR, 0.0).exp() - 1
    return x.copy_(torch.clamp(x, min=0) + negative * alpha)


def _elu_add_kernel(dst, y, alpha: float):
    negative = torch.clamp(y, _ELU_FLOOR, 0.0).exp() - 1
    return dst.add_(torch.clamp(y, min=0) + negative * alpha)


_KERNELS = {'elu': _elu_kernel, 'elu_add': _elu_add_kernel}
_COMPILED = {}  # name: the compiled kernel, or None once compiling is known not to work here


def _compiled(name):
    """``_KERNELS[name]`` through ``torch.compile`` (inductor, dynamic shapes), built on first use; None where
    compiling is unavailable or disabled (``LWSR_FAST_COMPILE=0``)."""
    if name not in _COMPILED:
        kernel = None
        if os.environ.get('LWSR_FAST_COMPILE', '1') != '0':
            from lwsr_plugin.ops.device import compile_problem
            if compile_problem(torch.device('cpu')) is None:
                kernel = torch.compile(_KERNELS[name], dynamic=True, fullgraph=True)
                # its C++ build logs 'No CUDA runtime is found' on CPU-only machines: not a problem for a CPU kernel
                logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
        _COMPILED[name] = kernel
    return _COMPILED[name]


def has_compiled(x):
    """Whether :func:`elu_` / :func:`elu_add_` run compiled for ``x`` (no eager temporary needed)."""
    return x.device.type == 'cpu' and torch.is_inference_mode_enabled() and _compiled('elu') is not None


def _run_compiled(name, *args):
    """The compiled kernel's result, or None where there is none (CPU inference only)."""
    if args[0].device.type == 'cpu' and torch.is_inference_mode_enabled():
        kernel = _compiled(name)
        if kernel is not None:
            try:
                return kernel(*args)
            except Exception:  # a compiler error surfaces at the first call: eager from now on
                _COMPILED[name] = None
    return None


def elu_(x, alpha, scratch=None):
    """ELU in place: ``max(x, 0) + alpha * (exp(min(x, 0)) - 1)`` (``blocks.ELU``'s arithmetic; PyTorch's CPU ELU
    evaluates expm1 element by element, ~5x slower). The negative part is clamped at -20 first, which leaves every
    result unchanged and keeps ``exp`` off its slow underflow path.

    On CPU the five elementwise passes run as one loop compiled by ``torch.compile`` (inductor's vectorised exp;
    an 88-channel 320x180 map: 2.2 ms against 18 ms eager, minimums of 20 interleaved rounds), compiled once per
    process or taken from inductor's on-disk cache (the first compile on a machine takes ~30 s on 2 cores); where
    compiling is unavailable, or fails, the eager passes run. ``scratch``: a flat buffer of at least ``x.numel()``
    elements for the eager temporary (a fresh one page-faults)."""
    out = _run_compiled('elu', x, float(alpha))
    if out is not None:
        return out
    tmp = torch.clamp(x, _ELU_FLOOR, 0, out=like(scratch, x)) if scratch is not None else x.clamp(_ELU_FLOOR, 0)
    negative = tmp.exp_().sub_(1)
    return x.clamp_(min=0).add_(negative, alpha=alpha)


def elu_add_(dst, y, alpha, scratch=None):
    """``dst += elu(y)`` (:func:`elu_`'s arithmetic), one compiled pass on CPU (reads ``y`` and ``dst`` once: the
    ELU and the add as two passes cost twice the memory traffic, and a bf16 add into a channel slice is not
    vectorised, ~8x a contiguous one); ``y`` is left unchanged only on the compiled path."""
    out = _run_compiled('elu_add', dst, y, float(alpha))
    if out is not None:
        return out
    return dst.add_(elu_(y, alpha, scratch))


def like(flat, x):
    """A view of the flat buffer ``flat`` with ``x``'s shape and memory format (channels_last or contiguous)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        n, c, h, w = x.shape
        return flat[:x.numel()].view(n, h, w, c).permute(0, 3, 1, 2)
    return flat[:x.numel()].view(x.shape)


def phase_conv(conv, r):
    """A stride-1 :class:`FastConv` that follows a pixel shuffle by ``r``, as a conv on the shuffle's input: reads
    the phase-major map (channel ``(i*r + j)*C + c`` = shuffled pixel ``(r*y + i, r*x + j)``, channel c; the order
    :class:`ShuffleConv` computes) and writes ``r*r*O`` channels in ``pixel_shuffle``'s order, so that
    ``pixel_shuffle(phase_conv(conv, r)(z), r) == conv(shuffled z)``.

    Tap ``d`` of the conv at output phase ``a`` reads shuffled row ``r*y + a + d - p``, i.e. phase
    ``(a + d - p) mod r`` of LR row ``y + floor((a + d - p) / r)``; zero padding maps to zero padding. The weight
    holds the same products (and zeros elsewhere): ``r*r`` times the MACs, which costs nothing extra for an
    output narrower than oneDNN's 16-channel block (O = 3, r = 2) and saves the full-resolution map."""
    if conv.groups != 1 or conv.stride != [1, 1] or conv.dilation != [1, 1]:
        raise ValueError('phase_conv: only stride-1, undilated, ungrouped convs.')
    w = conv.weight
    o, c, kh, kw = w.shape
    (ph, pw) = conv.padding

    def taps(k, p):
        return max(abs((a + d - p) // r) for a in range(r) for d in range(k))

    P = max(taps(kh, ph), taps(kw, pw))
    size = 2 * P + 1
    out = w.new_zeros(o, r, r, r, r, c, size, size)  # [o, a, b, i, j, c, ky, kx]
    for a in range(r):
        for dy in range(kh):
            i, oy = (a + dy - ph) % r, (a + dy - ph) // r
            for b in range(r):
                for dx in range(kw):
                    j, ox = (b + dx - pw) % r, (b + dx - pw) // r
                    out[:, a, b, i, j, :, oy + P, ox + P] = w[:, :, dy, dx]
    bias = None if conv.bias is None else conv.bias.repeat_interleave(r * r)
    return FastConv(out.reshape(o * r * r, r * r * c, size, size), bias, 1, P, act=conv.act, slope=conv.slope)


class ShuffleConv(nn.Module):
    """``pixel_shuffle(conv(x), r)`` with the conv's output channels reordered phase-major ((i, j, c) instead of
    (c, i, j)), so that every output pixel's C channels are one contiguous run of the conv output in channels_last
    and the shuffle is a copy of contiguous runs (``torch.pixel_shuffle`` on a channels_last map gathers with
    stride r*r: 11 % of s-LWSR's forward). A permutation either way: the output is the same.

    With ``then`` (a stride-1 conv after the shuffle, e.g. a network's last conv to RGB), returns
    ``then(pixel_shuffle(conv(x), r))`` as :func:`phase_conv` on the conv's output and a shuffle of ``then``'s few
    channels: the full-resolution C-channel map is never written (s-LWSR x4 at 720p: 118 MB written and read).

    Args:
        conv (FastConv): The conv, output channels in PyTorch's (c, i, j) order.
        upscale (int): r.
        then (FastConv | None): A conv applied after the shuffle.
    """

    def __init__(self, conv, upscale, then=None):
        super().__init__()
        r = upscale
        c = conv.out_channels // (r * r)
        order = torch.arange(c * r * r).view(c, r * r).t().reshape(-1)  # phase-major position -> original channel
        bias = None if conv.bias is None else conv.bias[order]
        self.conv = FastConv(conv.weight[order], bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                             conv.act, conv.slope)
        self.upscale = r
        self.then = None if then is None else phase_conv(then, r)

    def forward(self, x, other=None, scratch=None):
        """``other`` is added to the result; with ``scratch`` (a :class:`Scratch`), intermediate maps and the
        shuffled map are its buffers (the caller must be done with the result before the next call)."""
        r = self.upscale
        n, _, h, w = x.shape
        crr = self.conv.out_channels
        c = crr // (r * r)
        if scratch is not None:
            shapes = ((n, crr, h, w), ) + (() if self.then is not None else ((n, c, h * r, w * r), ))
            bufs = scratch.get(x, shapes, tag=id(self))
            y = self.conv.into(x, bufs[0])
        else:
            bufs, y = None, self.conv(x)
        if self.then is not None:
            out = F.pixel_shuffle(self.then(y), r)
            return out if other is None else out.add_(other)
        if bufs is not None:
            out = bufs[1]
        else:
            fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) and c > 1 \
                else torch.contiguous_format
            out = torch.empty(n, c, h * r, w * r, dtype=y.dtype, device=y.device, memory_format=fmt)
        out.unflatten(3, (w, r)).unflatten(2, (h, r)).copy_(y.unflatten(1, (r, r, c)).permute(0, 3, 4, 1, 5, 2))
        return out if other is None else out.add_(other)


class Scratch:
    """Named buffers kept per (shape, dtype, device, layout, tag) while they fit ``_CACHE_LIMIT`` bytes and
    ``_CACHE_ENTRIES`` entries, dropped oldest first."""

    def __init__(self):
        self._cache = {}

    def __deepcopy__(self, memo):
        return Scratch()

    def get(self, like, specs, tag=None):
        """Buffers like ``like`` (dtype, device, memory format): ``specs`` is a tuple of shapes; returns a tuple.
        Callers whose buffers are alive at the same time use different ``tag``s."""
        fmt = torch.channels_last if like.dim() == 4 and like.shape[1] > 1 and \
            like.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        key = (tuple(specs), like.dtype, like.device, fmt, tag)
        bufs = self._cache.get(key)
        if bufs is None:
            opts = dict(dtype=like.dtype, device=like.device)
            bufs = tuple(torch.empty(shape, memory_format=fmt if len(shape) == 4 else torch.contiguous_format, **opts)
                         for shape in specs)
            size = sum(b.numel() for b in bufs) * like.element_size()
            if size <= _CACHE_LIMIT:
                while self._cache and (len(self._cache) >= _CACHE_ENTRIES or size + self.nbytes() > _CACHE_LIMIT):
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = bufs
        return bufs

    def nbytes(self):
        return sum(b.numel() * b.element_size() for bufs in self._cache.values() for b in bufs)

    def clear(self):
        self._cache.clear()


class FastForm(nn.Module):
    """Base of the fast inference forms: wraps the trained network as ``net`` (so its layers stay reachable, e.g.
    for tile statistics hooks) and runs ``_forward`` under inference mode.

    A form computes in its weights' type (``.to(torch.bfloat16)``) but takes the image in fp32 as well: its first
    conv then reads it at full precision (:meth:`FastConv.head`) and image-sized skips stay fp32 (IDN's bicubic).

    Args:
        net (nn.Module): The trained network, switched to eval mode.
    """

    arch = ()  # the module classes this form takes

    def __init__(self, net):
        super().__init__()
        if not isinstance(net, self.arch):
            names = ' or '.join(c.__name__ for c in self.arch)
            raise TypeError(f'{type(self).__name__} takes {names}, got {type(net).__name__}.')
        self.net = net.eval()
        self.scratch = Scratch()

    def _apply(self, fn, *args, **kwargs):
        self.scratch.clear()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x):
        # inference mode throughout: the cached buffers are inference tensors and are written in place
        with torch.inference_mode():
            return self._forward(x)


def fold_output_affine(conv, shift, scale):
    """``scale * shift(conv(x))`` as one :class:`FastConv`, for a 1x1 ``MeanShift`` ``shift`` (y = M y + b) after
    the network's last conv: W' = scale * M W, b' = scale * (M b + b_shift)."""
    m = shift.weight.reshape(shift.weight.shape[0], -1).to(conv.weight)
    w = torch.einsum('oc,cikl->oikl', m, conv.weight.detach()) * scale
    b = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    b = (m @ b + shift.bias.to(b)) * scale
    return FastConv(w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
