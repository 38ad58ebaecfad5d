"""MATLAB-compatible bicubic downscaling of uint8 images, in the two roundings users meet.

- ``basicsr``: ``basicsr.utils.matlab_functions.imresize`` on the image scaled to [0, 1], then x255 and rounded once
  (what BasicSR-based training pipelines produce; the default for training sets).
- ``matlab``: MATLAB ``imresize(uint8_img, 1/s, 'bicubic')`` exactly as MATLAB runs it on uint8 data: rows first,
  then columns, rounding to uint8 after each pass (:func:`lwsr_plugin.ops.matlab_bicubic.imresize_uint8`). The
  benchmark LR files that SR papers ship were made this way; with BasicSR's kernel weights it reproduces them on
  >99.8% of pixels and within 1 grey level everywhere, where the single-rounding ``basicsr`` mode matches only ~90%.

Both modes take their kernel weights from BasicSR, which computes them in float32, and not from the float64
:func:`lwsr_plugin.ops.matlab_bicubic.axis_taps`: on Set5 and Set14 the float64 taps give the same images at 1/2,
1/3, 1/4, 0.8 and x2 / x3 / x4 enlarging in the ``matlab`` mode, but move 1 to 3.5 pixels in 1000 by one or two grey
levels at 0.9, 0.7 (two of the 291 set's augmentation factors) and x1.5, and a pixel or two per image at 0.6; in the
``basicsr`` mode up to 0.5 pixels in 1000 at nearly every factor, x2 and x4 enlarging included. Only BasicSR's
weights reproduce bit for bit the LMDBs and LR files either mode writes and the PSNR of the bicubic baselines.
"""
import numpy as np
from basicsr.utils.matlab_functions import calculate_weights_indices, imresize

from ..ops.matlab_bicubic import fold_indices, imresize_uint8
from .images import as_uint8

RESIZE_MODES = ('basicsr', 'matlab')


def _basicsr_taps(in_len, out_len, scale):
    """BasicSR's float32 cubic weights for one axis as float64, with its indices into the symmetrically padded axis
    folded back onto the axis (the ``taps`` form :func:`imresize_uint8` takes)."""
    weights, indices, sym_start, _ = calculate_weights_indices(in_len, out_len, scale, 'cubic', 4, True)
    return weights.double().numpy(), fold_indices(indices.long().numpy() - sym_start, in_len)


def bicubic_resize(img, factor):
    """The ``basicsr`` mode for any ``factor`` (> 1 enlarges): a uint8 image through BasicSR's MATLAB ``imresize`` on
    [0, 1] data, x255 and rounded once. Also what the demo and ``lwsr-compare`` use for their bicubic images."""
    return as_uint8(imresize(img.astype(np.float32) / 255., factor) * 255.)


def bicubic_downscale(img, factor, mode='basicsr'):
    """Resize a uint8 HW or HWC image by ``factor`` (< 1 shrinks) with MATLAB bicubic (antialiased); see the module
    docstring for ``mode``. Output side = ceil(input side * factor), as MATLAB."""
    if mode == 'basicsr':
        return bicubic_resize(img, factor)
    if mode == 'matlab':
        return imresize_uint8(img, factor, taps=_basicsr_taps)
    raise ValueError(f'unknown resize mode {mode!r}; expected one of {RESIZE_MODES}')
