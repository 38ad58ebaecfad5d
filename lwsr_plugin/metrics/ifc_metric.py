"""Information Fidelity Criterion (IFC; Sheikh, Bovik & de Veciana, IEEE TIP 2005), as reported in IDN's Table 3.

The SR literature (Yang et al.'s ECCV 2014 benchmark, SelfExSR, IDN) computes IFC with LIVE's ``ifcvec`` release; this
module re-implements that formulation in numpy/scipy so the numbers are comparable:

- a 4-level steerable pyramid with the 6-orientation ``sp5`` filters and mirror ("reflect1") borders;
- the subbands used are orientations 1 and 4 (the horizontal and vertical ones) at every level;
- per subband: a vector Gaussian scale mixture for the reference (3x3 blocks, covariance C_U from all overlapping
  blocks, the scalar field s^2 from non-overlapping ones, eigenvalues of C_U) and a gain-plus-noise channel
  ``D = g C + V`` estimated by local least squares over a window of 2^lev + 1 pixels (lev = 1 at the coarsest level,
  4 at the finest), sampled at the block centres;
- IFC = sum over subbands, blocks and eigenvalues of log2(1 + g^2 s^2 lambda / sigma_v^2), after dropping the blocks
  the window border touches, divided by the number of image pixels (the release's normalisation, which gives the
  ~2-10 range of the SR tables).
"""
import numpy as np
from scipy import ndimage

from basicsr.metrics.metric_util import reorder_image, to_y_channel
from basicsr.utils.registry import METRIC_REGISTRY

_BLOCK = 3  # M: side of the GSM vectors
_LEVELS = 4
_BANDS = (0, 3)  # sp5 orientations 1 and 4 (0 and 90 degrees)
_TOL = 1e-15


def _mirror_quadrant(q):
    """A symmetric (2n-1)x(2n-1) filter from its top-left n x n quadrant (centre row/column included)."""
    q = np.asarray(q, dtype=np.float64)
    top = np.concatenate([q, q[:, -2::-1]], axis=1)
    return np.concatenate([top, top[-2::-1]], axis=0)


# Simoncelli's sp5 filter set (matlabPyrTools' sp5Filters). The three radial filters are symmetric; only their
# quadrants are written out.
_LO0 = _mirror_quadrant([[0.00341614, -0.01551246, -0.03848215],
                         [-0.01551246, 0.05586982, 0.15925570],
                         [-0.03848215, 0.15925570, 0.40304148]])
_HI0 = _mirror_quadrant([[-0.00033429, -0.00113093, -0.00171484, -0.00133542, -0.00080639],
                         [-0.00113093, -0.00350017, -0.00243812, 0.00631653, 0.01261227],
                         [-0.00171484, -0.00243812, -0.00290081, -0.00673482, -0.00981051],
                         [-0.00133542, 0.00631653, -0.00673482, -0.07027679, -0.11435863],
                         [-0.00080639, 0.01261227, -0.00981051, -0.11435863, 0.81380200]])
_LO = 2 * _mirror_quadrant([[0.00085404, -0.00244917, -0.00387812, -0.00944432, -0.00962054],
                            [-0.00244917, -0.00523281, -0.00661117, 0.00410600, 0.01002988],
                            [-0.00387812, -0.00661117, 0.01396746, 0.03277038, 0.03981393],
                            [-0.00944432, 0.00410600, 0.03277038, 0.06426333, 0.08169618],
                            [-0.00962054, 0.01002988, 0.03981393, 0.08169618, 0.10096540]])
# Oriented filters 1 (0 deg) and 4 (90 deg), 7x7, as MATLAB reshapes them (column-major): the only two IFC uses.
_B1_COLS = [0.00277643, 0.00496194, 0.01026699, 0.01455399, 0.01026699, 0.00496194, 0.00277643,
            -0.00986904, -0.00893064, 0.01189859, 0.02755155, 0.01189859, -0.00893064, -0.00986904,
            -0.01021852, -0.03075356, -0.08226445, -0.11732297, -0.08226445, -0.03075356, -0.01021852,
            0, 0, 0, 0, 0, 0, 0]
_B1 = np.concatenate([_B1_COLS, -np.asarray(_B1_COLS[:21])[::-1]]).reshape(7, 7, order='F')
_BAND_FILTERS = {0: _B1, 3: -_B1.T}  # in sp5 the 90-degree filter is the negated transpose of the 0-degree one


def _corr(img, filt, step=1):
    """matlabPyrTools ``corrDn(img, filt, 'reflect1', [step step])``: correlation, mirror borders, subsampling."""
    out = ndimage.correlate(img, filt, mode='mirror')
    return out[::step, ::step]


def steerable_subbands(img):
    """The subbands IFC uses, finest level first: a list of (window level, subband) with window level 4 .. 1."""
    lo = _corr(img, _LO0)
    bands = []
    for level in range(_LEVELS):
        for b in _BANDS:
            bands.append((_LEVELS - level, _corr(lo, _BAND_FILTERS[b])))
        lo = _corr(lo, _LO, step=2)
    return bands


def _crop_to_blocks(x):
    h, w = (s // _BLOCK * _BLOCK for s in x.shape)
    return x[:h, :w]


def _channel(ref, dist, win):
    """Gain g and noise variance sigma_v^2 of D = g C + V, by least squares over ``win`` x ``win`` windows at the
    3x3 block centres (ifcvec's distortion-channel estimate, with its guards for flat and inverted regions)."""
    n = win * win
    at = slice(_BLOCK // 2, None, _BLOCK)

    def local_sum(x):
        return (ndimage.uniform_filter(x, win, mode='mirror') * n)[at, at]

    mx, my = local_sum(ref) / n, local_sum(dist) / n
    cov = local_sum(ref * dist) - n * mx * my
    sx = np.maximum(local_sum(ref * ref) - n * mx * mx, 0)
    sy = np.maximum(local_sum(dist * dist) - n * my * my, 0)
    g = cov / (sx + _TOL)
    vv = (sy - g * cov) / n
    flat_ref = sx < _TOL
    g[flat_ref] = 0
    vv[flat_ref] = sy[flat_ref]
    flat_dist = sy < _TOL
    g[flat_dist] = 0
    vv[flat_dist] = 0
    inverted = g < 0
    vv[inverted] = sy[inverted]
    g[inverted] = 0
    vv[vv <= _TOL] = _TOL
    return g, vv


def _gsm(ref):
    """Reference GSM: s^2 per non-overlapping block and the eigenvalues of C_U (from every overlapping block)."""
    h, w = ref.shape
    m = _BLOCK
    overlapping = np.stack([ref[k:h - m + k + 1, j:w - m + j + 1].ravel() for j in range(m) for k in range(m)])
    cu = np.cov(overlapping, bias=True)
    blocks = np.stack([ref[k::m, j::m] for j in range(m) for k in range(m)])  # (m*m, h/m, w/m)
    ss = np.einsum('ihw,ij,jhw->hw', blocks, np.linalg.inv(cu), blocks) / (m * m)
    return ss, np.linalg.eigvalsh(cu)


def ifc(ref, dist):
    """IFC of ``dist`` given the reference ``ref`` (2-D arrays in [0, 255]); larger is better, not symmetric."""
    ref = np.asarray(ref, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    if ref.shape != dist.shape or ref.ndim != 2:
        raise ValueError(f'IFC needs two 2-D images of one size, got {ref.shape} and {dist.shape}.')
    total = 0.0
    for (lev, r), (_, d) in zip(steerable_subbands(ref), steerable_subbands(dist)):
        r, d = _crop_to_blocks(r), _crop_to_blocks(d)
        win = 2**lev + 1
        g, vv = _channel(r, d, win)
        ss, lambdas = _gsm(r)
        off = -(-((win - 1) // 2) // _BLOCK)  # blocks the window border reaches, ceil(half window / M)
        g, vv, ss = (x[off:x.shape[0] - off, off:x.shape[1] - off] for x in (g, vv, ss))
        snr = (g * g * ss / (vv + 1e-10))[..., None] * lambdas
        total += np.log2(1 + snr).sum()
    return total / ref.size


@METRIC_REGISTRY.register()
def calculate_ifc(img, img2, crop_border, input_order='HWC', test_y_channel=True, **kwargs):
    """IFC of ``img`` (the restored image) against the reference ``img2``, BasicSR's metric signature.

    Args:
        img (ndarray): Restored image, range [0, 255], BGR as BasicSR's ``tensor2img`` gives it.
        img2 (ndarray): Ground truth, same layout.
        crop_border (int): Pixels shaved from each border (the scale, as in the papers).
        input_order (str): 'HWC' or 'CHW'. Default: 'HWC'.
        test_y_channel (bool): Compute on the Y channel of YCbCr (as IDN's Table 3). Default: True. Otherwise the
            mean over colour channels.
    """
    assert img.shape == img2.shape, f'Image shapes are different: {img.shape}, {img2.shape}.'
    img = reorder_image(img, input_order=input_order)
    img2 = reorder_image(img2, input_order=input_order)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
    if test_y_channel:
        img, img2 = to_y_channel(img), to_y_channel(img2)
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    if img.ndim == 2:
        return ifc(img2, img)
    return float(np.mean([ifc(img2[..., c], img[..., c]) for c in range(img.shape[2])]))
