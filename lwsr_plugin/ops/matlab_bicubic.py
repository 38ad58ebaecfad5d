"""MATLAB-compatible bicubic resize: the kernel taps of MATLAB's ``imresize(..., 'bicubic')``, computed once here,
and the resizes built on them (a differentiable, batched torch op and MATLAB's uint8 path for numpy images).

IDN (Hui et al., CVPR 2018, ``../shared/papers/001_*``) adds ``U(x)``, the bicubic upsampling of the LR input, to the
RBlock output (eq. 3). The released weights were trained against MATLAB's ``imresize(..., 'bicubic')``, whose cubic
kernel has a = -0.5 and which mirrors the image at its borders; ``torch.nn.functional.interpolate(mode='bicubic')``
uses a = -0.75 and replicates borders, which costs 0.57 / 0.24 / 0.15 dB at x2 / x3 / x4 with those weights.

The resize is separable and linear. :func:`axis_taps` gives, per axis, the weights of every output pixel normalised
to sum 1 and the source pixels folded back onto the image by symmetric mirroring (MATLAB's ``contributions``). The
torch op scatters them into one dense ``(out_len, in_len)`` matrix per axis, so ``out = W_h @ x @ W_w^T`` runs in
batch on any device and autograd differentiates it for free; :func:`imresize_uint8` applies them pass by pass;
:func:`phase_kernels` reads the integer-upscale taps off the same matrix.
"""
import functools
import math

import numpy as np
import torch


def _cubic(x):
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``imresize``'s 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def fold_indices(idx, in_len):
    """0-based pixel indices, inside or outside ``[0, in_len)``, mapped onto the axis by MATLAB's symmetric border
    (``aux = [1:in_len, in_len:-1:1]``: 1 2 3 | 3 2 1 | 1 2 3 ...), which repeats the edge pixel."""
    period = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    return period[np.mod(idx, 2 * in_len)]


@functools.lru_cache(maxsize=64)
def axis_taps(in_len, out_len, scale, antialias=True):
    """MATLAB ``imresize``'s ``contributions`` for one axis: the bicubic taps of every output pixel.

    ``scale`` is the factor MATLAB would use (it is not ``out_len / in_len`` when the size was rounded up). For
    ``scale < 1`` and ``antialias`` the kernel is stretched by ``1 / scale`` (MATLAB's default antialiasing).

    Returns:
        tuple[ndarray, ndarray]: float64 weights (out_len, taps), each row normalised to sum 1, and int64 0-based
        source indices (out_len, taps) folded onto ``[0, in_len)`` by symmetric mirroring. Tap columns that are
        zero in every row are dropped, as MATLAB's ``kill`` step does. Cached and shared: do not modify in place.
    """
    kernel_width = 4.0
    stretch = scale < 1 and antialias
    if stretch:
        kernel_width /= scale
    out_idx = np.arange(1, out_len + 1, dtype=np.float64)
    # 1-based input coordinate of each output pixel centre (pixel 0.5 maps to 0.5, pixel 0.5 + scale to 1.5)
    u = out_idx / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    weights = scale * _cubic(dist * scale) if stretch else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    src = fold_indices(idx.astype(np.int64) - 1, in_len)
    keep = np.any(weights != 0, axis=0)
    weights, src = weights[:, keep], src[:, keep]
    weights.flags.writeable = src.flags.writeable = False
    return weights, src


@functools.lru_cache(maxsize=64)
def resize_matrix(in_len, out_len, scale, antialias=True):
    """Dense float64 matrix ``(out_len, in_len)`` of MATLAB's bicubic resize along one axis: the :func:`axis_taps`
    of each output pixel scattered onto its row, taps folded onto the same source pixel summed (numpy, cached)."""
    weights, src = axis_taps(in_len, out_len, scale, antialias)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), src.shape[1]), src.ravel()), weights.ravel())
    return mat


def _axis_matrix(in_len, out_len, scale, antialias, like):
    return torch.from_numpy(resize_matrix(in_len, out_len, float(scale), bool(antialias))).to(like.device, like.dtype)


def imresize(x, scale=None, size=None, antialias=True):
    """Resize ``x`` of shape (..., H, W) like MATLAB ``imresize(x, scale, 'bicubic')``; differentiable.

    Args:
        x (Tensor): Float tensor, e.g. (N, C, H, W); any leading dims are batch dims. Not rounded or clamped.
        scale (float | None): Scale factor for both axes; the output size is ``ceil(H * scale), ceil(W * scale)``.
        size (tuple[int, int] | None): Output (H, W) instead of ``scale``; each axis then uses ``out / in``.
        antialias (bool): MATLAB's antialiasing kernel when downscaling. Default: True (MATLAB's default).

    Returns:
        Tensor: (..., H_out, W_out), same dtype and device as ``x``.
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f'imresize expects a floating point tensor, got {type(x).__name__} '
                        f'{getattr(x, "dtype", "")}.')
    if x.dim() < 2:
        raise ValueError(f'imresize expects a tensor of shape (..., H, W), got shape {tuple(x.shape)}.')
    if (scale is None) == (size is None):
        raise ValueError('imresize: give exactly one of scale and size.')
    in_h, in_w = x.shape[-2:]
    if scale is not None:
        if not scale > 0:
            raise ValueError(f'imresize: scale must be > 0, got {scale}.')
        out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
        scale_h = scale_w = scale
    else:
        out_h, out_w = (int(s) for s in size)
        if out_h < 1 or out_w < 1:
            raise ValueError(f'imresize: output size must be positive, got {size}.')
        scale_h, scale_w = out_h / in_h, out_w / in_w
    mat_h = _axis_matrix(in_h, out_h, scale_h, antialias, x)
    mat_w = _axis_matrix(in_w, out_w, scale_w, antialias, x)
    # height first, then width, as MATLAB does (the order only matters at float rounding level)
    return torch.matmul(torch.matmul(mat_h, x), mat_w.t())


def _resize_axis_uint8(img, scale, axis, taps, half_away):
    """One pass of MATLAB's ``resizeAlongDim`` on uint8 data: the taps summed left to right in float64 per output
    pixel, the result converted back to uint8."""
    in_len = img.shape[axis]
    weights, src = taps(in_len, math.ceil(in_len * scale), float(scale))
    shape = [1] * img.ndim
    shape[axis] = -1
    pixels = img.astype(np.float64)
    out = 0.
    for k in range(src.shape[1]):
        out = out + np.take(pixels, src[:, k], axis=axis) * weights[:, k].reshape(shape)
    # floor(x + 0.5) rounds halves away from zero only for x >= 0, and the clip sends every x < 0 to 0 anyway
    out = np.floor(out + 0.5) if half_away else np.round(out)
    return np.clip(out, 0, 255).astype(np.uint8)


def imresize_uint8(img, scale, taps=axis_taps, half_away=False):
    """MATLAB ``imresize(img, scale, 'bicubic')`` on a uint8 HW or HWC numpy image, as MATLAB runs it on uint8 data:
    one float64 pass per axis, rows first (MATLAB starts with the axis of the smaller scale, the first one on a tie),
    the result stored as uint8 after each pass. Output side = ceil(side * scale); antialiased when shrinking.

    Args:
        img (ndarray): uint8 (H, W) or (H, W, C).
        scale (float): Scale factor for both axes (< 1 shrinks).
        taps (callable): ``taps(in_len, out_len, scale)`` -> (weights, folded 0-based indices) of one axis.
            Default: :func:`axis_taps`, MATLAB's float64 ``contributions``.
        half_away (bool): Round halves away from zero, as MATLAB's conversion to uint8 does; with the default
            ``taps`` the output is then MATLAB's own (the Set5 and Set14 LR files at x2 / x3 / x4 on every pixel).
            Default: False, NumPy's half-to-even, which keeps the LMDBs and LR files of the data preparation's
            ``matlab`` mode reproducible; halves are common at x2 and x4, whose weights have power-of-two denominators.
    """
    first = _resize_axis_uint8(img, scale, 0, taps, half_away)
    return _resize_axis_uint8(first, scale, 1, taps, half_away)


def phase_kernels(scale):
    """(scale, 6) float64 taps of MATLAB's bicubic upsampling by an integer ``scale``: output pixel ``scale*m + p``
    (0-based) reads input pixels ``m-3 .. m+2`` with row ``p``. They depend on the phase only, not on the length, so
    they are the rows of input pixel 3 of a 7-pixel axis, the first one whose reach crosses no border."""
    scale = int(scale)
    return resize_matrix(7, 7 * scale, float(scale), False)[3 * scale:4 * scale, :6].copy()


def _upsample_axis(x, kernel, scale):
    """Upsample the last axis of (B, 1, L, W) with phase taps ``kernel``; symmetric border as MATLAB's mirroring."""
    # pixels -3..-1 mirror to 2, 1, 0 and L, L+1 to L-1, L-2 (MATLAB's 1 2 3 | 3 2 1); slices keep L symbolic
    xp = torch.cat([x[..., 2:3], x[..., 1:2], x[..., 0:1], x,
                    x[..., -1:], x[..., -2:-1]], dim=-1)
    out = torch.nn.functional.conv2d(xp, kernel)  # (B, scale, L', W): one output channel per phase
    b, _, h, w = out.shape
    return out.permute(0, 2, 3, 1).reshape(b, 1, h, w * scale)


def upsample_integer(x, scale):
    """MATLAB ``imresize(x, scale, 'bicubic')`` for an integer ``scale`` >= 1 and sides >= 3, as two stride-free
    convolutions with fixed phase taps. The taps of :func:`imresize`'s matrices, summed in another order, but without
    size-dependent constants, so it traces and exports to ONNX with dynamic H/W and costs O(HW) rather than O(H²W)."""
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    kernel = torch.from_numpy(phase_kernels(scale)).to(x.device, x.dtype).reshape(scale, 1, 1, 6)
    out = _upsample_axis(flat, kernel, scale)  # width first here; MATLAB's order matters only at rounding level
    out = _upsample_axis(out.transpose(-1, -2), kernel, scale).transpose(-1, -2)
    return out.reshape(*shape[:-2], shape[-2] * scale, shape[-1] * scale)


class MatlabBicubic(torch.nn.Module):
    """Module form of :func:`imresize` with a fixed scale (IDN's ``U`` in eq. 3)."""

    def __init__(self, scale, antialias=True):
        super().__init__()
        self.scale = scale
        self.antialias = antialias

    def forward(self, x):
        s = self.scale
        if float(s).is_integer() and s >= 1 and min(x.shape[-2:]) >= 3:
            return upsample_integer(x, int(s))
        return imresize(x, scale=self.scale, antialias=self.antialias)

    def extra_repr(self):
        return f'scale={self.scale}, antialias={self.antialias}'
