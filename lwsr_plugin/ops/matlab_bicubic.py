"""MATLAB-compatible bicubic resize as a differentiable, batched torch op.

IDN (Hui et al., CVPR 2018, ``../shared/papers/001_*``) adds ``U(x)``, the bicubic upsampling of the LR input, to the
RBlock output (eq. 3). The released weights were trained against MATLAB's ``imresize(..., 'bicubic')``, whose cubic
kernel has a = -0.5 and which mirrors the image at its borders; ``torch.nn.functional.interpolate(mode='bicubic')``
uses a = -0.75 and replicates borders, which costs 0.57 / 0.24 / 0.15 dB at x2 / x3 / x4 with those weights.

The resize is separable and linear, so each axis is one dense ``(out_len, in_len)`` matrix: the kernel taps of every
output pixel, normalised to sum 1 and folded back onto the image by symmetric mirroring (MATLAB's ``contributions``).
``out = W_h @ x @ W_w^T`` then runs in batch on any device, and autograd differentiates it for free.
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


@functools.lru_cache(maxsize=64)
def resize_matrix(in_len, out_len, scale, antialias=True):
    """Dense float64 matrix ``(out_len, in_len)`` of MATLAB's bicubic resize along one axis (numpy, cached).

    ``scale`` is the factor MATLAB would use (it is not ``out_len / in_len`` when the size was rounded up). For
    ``scale < 1`` and ``antialias`` the kernel is stretched by ``1 / scale`` (MATLAB's default antialiasing).
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
    # symmetric mirroring (1 2 3 | 3 2 1 | 1 2 3 ...), MATLAB's aux = [1:in_len, in_len:-1:1]
    period = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    src = period[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), src.ravel()), weights.ravel())
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


def phase_kernels(scale):
    """(scale, 6) float64 taps of MATLAB's bicubic upsampling by an integer ``scale``: output pixel ``scale*m + p``
    (0-based) reads input pixels ``m-3 .. m+2`` with row ``p``. They depend on the phase only, not on the length."""
    k = np.arange(-2, 4, dtype=np.float64)
    centre = (np.arange(scale, dtype=np.float64) + 0.5) / scale + 0.5  # 1-based coordinate minus m, per phase
    taps = _cubic(centre[:, None] - k[None, :])
    return taps / taps.sum(axis=1, keepdims=True)


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
    convolutions with fixed phase taps. Equal to :func:`imresize` (dense matrices) to float rounding, but without
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
