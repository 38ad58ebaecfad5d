"""MATLAB's bicubic ``imresize``: one set of axis taps behind the uint8 passes, the torch matrices and the integer
upscale's phase kernels, checked against each other, against the data preparation's resize modes and against the
benchmark LR files MATLAB wrote, on real images."""
import glob
import os

import cv2
import numpy as np
import pytest
import torch

from lwsr_plugin.data.images import mod_crop, to_y
from lwsr_plugin.data.resize import bicubic_downscale
from lwsr_plugin.ops.matlab_bicubic import (axis_taps, imresize, imresize_uint8, phase_kernels, resize_matrix,
                                            upsample_integer)


def _hr_images(datasets_dir, name):
    paths = sorted(glob.glob(os.path.join(datasets_dir, name, 'HR', '*.png')))
    assert paths, f'no HR images in {name}'
    return {os.path.basename(p)[:-4]: cv2.imread(p) for p in paths}


@pytest.fixture(scope='module')
def set5(datasets_dir):
    return _hr_images(datasets_dir, 'Set5')


def _torch_uint8_passes(img, out_h, out_w):
    """MATLAB's uint8 path through the torch op: one axis per call (the other keeps its length, whose matrix is the
    identity), rounded to uint8 levels in between."""
    x = torch.from_numpy(np.atleast_3d(img).transpose(2, 0, 1).astype(np.float64))
    rows = imresize(x, size=(out_h, x.shape[-1])).round().clamp(0, 255)
    out = imresize(rows, size=(out_h, out_w)).round().clamp(0, 255).numpy().astype(np.uint8).transpose(1, 2, 0)
    return out if img.ndim == 3 else out[..., 0]


@pytest.mark.parametrize('dataset', ['Set5', 'Set14'])
def test_uint8_passes_reproduce_matlab_lr_files(datasets_dir, dataset):
    for name, hr in _hr_images(datasets_dir, dataset).items():
        for s in (2, 3, 4):
            shipped = cv2.imread(os.path.join(datasets_dir, dataset, 'LR_bicubic', f'X{s}', f'{name}x{s}.png'))
            ours = imresize_uint8(mod_crop(hr, s), 1 / s, half_away=True)
            np.testing.assert_array_equal(ours, shipped, err_msg=f'{dataset}/{name} x{s}')


def test_uint8_passes_equal_torch_matrix_passes_and_matlab_mode(set5):
    for name, hr in set5.items():
        for s in (2, 3, 4):
            for img in (mod_crop(hr, s), to_y(mod_crop(hr, s))):
                h, w = img.shape[:2]
                ours = imresize_uint8(img, 1 / s)
                np.testing.assert_array_equal(ours, _torch_uint8_passes(img, h // s, w // s), err_msg=f'{name} /{s}')
                # the data preparation's mode, on BasicSR's float32 weights, writes the same pixels at these factors
                np.testing.assert_array_equal(ours, bicubic_downscale(img, 1 / s, 'matlab'), err_msg=f'{name} /{s}')
                small = img[:h // 4, :w // 4]
                np.testing.assert_array_equal(imresize_uint8(small, s), _torch_uint8_passes(small, h // 4 * s,
                                                                                            w // 4 * s))


def test_matlab_mode_off_integer_factors_within_float32_rounding(set5):
    img = set5['bird']
    for factor in (0.9, 0.7, 0.6):
        ours, mode = imresize_uint8(img, factor), bicubic_downscale(img, factor, 'matlab')
        assert ours.shape == mode.shape and (ours != mode).mean() < 0.01
        assert np.abs(ours.astype(int) - mode).max() <= 2


def test_axis_taps_fold_normalise_and_build_the_matrix():
    for in_len, out_len, scale in [(1, 3, 3.0), (2, 8, 4.0), (3, 1, 1 / 3), (17, 6, 1 / 3), (40, 36, 0.9)]:
        weights, src = axis_taps(in_len, out_len, scale)
        assert weights.dtype == np.float64 and weights.shape == src.shape and weights.shape[0] == out_len
        assert src.min() >= 0 and src.max() < in_len
        np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-12)
        assert np.any(weights != 0, axis=0).all()  # MATLAB drops all-zero tap columns
        mat = resize_matrix(in_len, out_len, scale)
        for row in range(out_len):
            np.testing.assert_allclose(mat[row], np.bincount(src[row], weights[row], minlength=in_len), atol=1e-15)
    np.testing.assert_array_equal(resize_matrix(1, 3, 3.0), np.ones((3, 1)))
    # MATLAB's mirror 1 2 | 2 1 | 1 2: the 2-pixel axis upscaled x4 reads every tap back onto the two pixels
    assert set(axis_taps(2, 8, 4.0)[1].ravel()) == {0, 1}


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_phase_kernels_are_the_matrix_taps(set5, scale):
    kernels = phase_kernels(scale)
    assert kernels.shape == (scale, 6)
    np.testing.assert_allclose(kernels.sum(axis=1), 1, atol=1e-12)
    y = torch.from_numpy(to_y(set5['head'])[:60, :45].astype(np.float64) / 255.)
    assert torch.allclose(upsample_integer(y, scale), imresize(y, scale), rtol=0, atol=1e-12)
