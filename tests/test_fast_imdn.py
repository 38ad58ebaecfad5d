"""FastIMDN (speed): the same output as the IMDN / IMDN_AS modules on real images and official weights, in
every layout and batch the Upscaler uses; bf16 within 0.02 dB of fp32 on Set5; image-wide tile statistics."""
import copy
import os

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr
from conftest import bf16_upscaler

from lwsr_plugin.fast import FastIMDN, fast_inference_net
from lwsr_plugin.inference import Upscaler, load_model, network_options, tile_stat_layers, tiled_forward

SET5 = ['baby', 'bird', 'butterfly', 'head', 'woman']


@pytest.fixture(scope='module')
def imdn_x4(shared):
    return load_model(network_options('IMDN', 4), shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'))


@pytest.fixture(scope='module')
def set5(datasets_dir):
    def load(name, scale=4):
        lr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', f'X{scale}', f'{name}x{scale}.png'))
        hr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'HR', f'{name}.png'))
        return lr, hr

    return load


def _tensor(img):
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / 255)[None]


@pytest.mark.parametrize('layout', ['channels_last', 'nchw'])
def test_same_output_as_module(imdn_x4, set5, layout):
    fmt = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
    lr, _ = set5('butterfly')
    x = torch.cat([_tensor(lr), _tensor(lr).flip(-1)], 0)[..., :60, :52].contiguous(memory_format=fmt)
    net = copy.deepcopy(imdn_x4).to(memory_format=fmt)
    fast = FastIMDN(copy.deepcopy(imdn_x4)).to(memory_format=fmt)
    with torch.no_grad():
        ref = net(x)
    for batch in (x[:1], x):  # one image (2-D view reductions) and a batch (per-image statistics)
        out = fast(batch)
        assert out.shape == ref[:len(batch)].shape
        assert (out - ref[:len(batch)]).abs().max().item() <= 1e-4
    with torch.no_grad():  # its cached buffers come from inference mode; a later no_grad caller must still work
        assert (fast(x[:1]) - ref[:1]).abs().max().item() <= 1e-4
    assert fast_inference_net(net.c) is net.c  # anything but IMDN / IMDN_AS passes through


def test_imdn_as_both_paths(shared, set5):
    net = load_model(network_options('IMDN_AS'), shared('anchors', 'imdn', 'checkpoints', 'IMDN_AS.pth'))
    fast = FastIMDN(copy.deepcopy(net))
    lr, _ = set5('bird')
    for h, w in ((64, 48), (70, 53)):  # whole-image pass, and the adaptive cropping strategy (sides not 4k)
        x = _tensor(lr)[..., :h, :w]
        with torch.no_grad():
            ref = net(x)
        assert (fast(x) - ref).abs().max().item() <= 1e-4, (h, w)


def test_bf16_set5_psnr_within_002_db_of_fp32(imdn_x4, set5):
    """bf16 + channels_last must keep Set5 x4 Y-PSNR within 0.02 dB of fp32."""
    runs = {'fp32': Upscaler(copy.deepcopy(imdn_x4)), 'bf16': bf16_upscaler(copy.deepcopy(imdn_x4))}
    assert isinstance(runs['bf16'].net, FastIMDN)
    psnr = {p: [] for p in runs}
    for name in SET5:
        lr, hr = set5(name)
        for p, up in runs.items():
            psnr[p].append(calculate_psnr(up.upscale(lr), hr, crop_border=4, test_y_channel=True))
    fp32, bf16 = np.mean(psnr['fp32']), np.mean(psnr['bf16'])
    assert abs(fp32 - 32.2096) <= 0.01, fp32  # the evaluation path's number (README)
    assert abs(bf16 - fp32) <= 0.02, (fp32, bf16)


def test_image_statistics_through_fast_path(imdn_x4, set5):
    """Tiles fed the whole image's CCA statistics reproduce the untiled output, through FastIMDN and the module."""
    lr, _ = set5('butterfly')
    x = _tensor(lr)
    with torch.no_grad():
        whole = imdn_x4(x)
    for net in (FastIMDN(copy.deepcopy(imdn_x4)), imdn_x4):
        layers = tile_stat_layers(net)
        assert len(layers) == 6
        with torch.no_grad():
            image = tiled_forward(net, x, 4, 24, 6, batch=3, stat_layers=layers)
            tile = tiled_forward(net, x, 4, 24, 6, batch=3)
        assert all(m.stats_hook is None for m in layers)  # hooks removed afterwards
        mse = lambda a: (a.clamp(0, 1) - whole.clamp(0, 1)).square().mean().item()  # noqa: E731
        assert 10 * np.log10(1 / mse(image)) >= 55
        assert mse(image) < mse(tile) / 10


@pytest.mark.slow
def test_compile_path(set5):
    """``Upscaler(compile=True)`` (inductor; needs a C++ compiler) gives the eager output."""
    import shutil
    if not (shutil.which('g++') or shutil.which('c++') or shutil.which('clang++')):
        pytest.skip('torch.compile on CPU needs a C++ compiler')
    net = load_model(network_options('IMDN', 4, {'num_feat': 16, 'num_block': 2}))
    lr, _ = set5('bird')
    x = _tensor(lr)[..., :40, :36]
    eager = Upscaler(copy.deepcopy(net)).run_tensor(x)
    compiled = Upscaler(copy.deepcopy(net), compile=True).run_tensor(x)
    assert (eager - compiled).abs().max().item() <= 1e-4
