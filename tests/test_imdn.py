"""IMDN family: parameter counts of the paper, official checkpoints through BasicSR, adaptive cropping."""
import cv2
import numpy as np
import pytest
import torch

import lwsr_plugin  # noqa: F401
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from lwsr_plugin.archs.blocks import count_parameters
from lwsr_plugin.archs.imdn_arch import IMDN_AS, acs_patch_size, adaptive_crop_forward


@pytest.mark.parametrize('arch, kwargs, expected', [
    ('IMDN', {'upscale': 2}, 694_404),
    ('IMDN', {'upscale': 3}, 703_059),
    ('IMDN', {'upscale': 4}, 715_176),
    ('IMDN_AS', {}, 752_104),
    ('IMDN_RTC', {}, 20_190),
])
def test_parameter_counts(arch, kwargs, expected):
    assert count_parameters(build_network({'type': arch, **kwargs})) == expected


def _model(shared, arch, ckpt, **kwargs):
    """Build through BasicSR's SRModel, loading the official checkpoint via path.pretrain_network_g, strictly."""
    from basicsr.models import build_model
    opt = {
        'name': 'load_check', 'model_type': 'SRModel', 'is_train': False, 'dist': False, 'num_gpu': 0,
        'network_g': {'type': arch, **kwargs},
        'path': {'pretrain_network_g': shared('anchors', 'imdn', 'checkpoints', ckpt), 'strict_load_g': True,
                 'param_key_g': 'params'},
    }
    return build_model(opt).net_g.eval()


def _read_rgb01(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    assert img is not None, path
    return torch.from_numpy(img[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.)[None]


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_official_checkpoint_matches_golden_output(shared, scale):
    net = _model(shared, 'IMDN', f'IMDN_x{scale}.pth', upscale=scale)
    x = _read_rgb01(shared('datasets', 'Set5', 'LR_bicubic', f'X{scale}', f'butterflyx{scale}.png'))
    with torch.no_grad():
        out = net(x)[0].numpy()
    golden = np.load(shared('anchors', 'imdn', 'reference_outputs', 'golden_float',
                            f'butterfly_x{scale}_IMDN_out_float32_CHW_rgb01_unclamped.npy'))
    assert out.shape == golden.shape
    assert np.abs(out - golden).max() < 1e-5


def test_rtc_and_as_checkpoints_load_strictly(shared):
    rtc = _model(shared, 'IMDN_RTC', 'model_RTC.pth')
    assert count_parameters(rtc) == 20_190
    with torch.no_grad():
        assert rtc(torch.rand(1, 3, 10, 14)).shape == (1, 3, 20, 28)
    _model(shared, 'IMDN_AS', 'IMDN_AS.pth')


def test_wrong_scale_checkpoint_names_option_and_fix(shared):
    with pytest.raises(ValueError, match=r'path.pretrain_network_g.*upsampler.0.weight.*strict_load_g'):
        _model(shared, 'IMDN', 'IMDN_x2.pth', upscale=4)


def _psnr(a, b):
    mse = float(((a - b)**2).mean())
    return float('inf') if mse == 0 else 10 * np.log10(1. / mse)


@pytest.fixture(scope='module')
def imdn_as(shared):
    return _model(shared, 'IMDN_AS', 'IMDN_AS.pth')


def _bicubic_input(shared, name, size=None):
    """IMDN_AS input: the LR image resized to the HR size (bicubic), as in §3.3."""
    lr = cv2.imread(shared('datasets', 'Set5', 'LR_bicubic', 'X4', f'{name}x4.png'))
    hr = cv2.imread(shared('datasets', 'Set5', 'HR', f'{name}.png'))
    h, w = size or hr.shape[:2]
    up = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
    return (torch.from_numpy(up[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.)[None],
            torch.from_numpy(cv2.resize(hr, (w, h))[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.)[None])


def test_acs_patch_sizes_follow_eqs_6_to_8():
    for size in (199, 257, 256, 37, 1000):
        for pad in (4, 8, 16, 32):
            p = acs_patch_size(size, pad)
            assert p % 4 == 0 and size // 2 <= p - 1 < size // 2 + pad  # eq. 6; Δl in [1, padding]


def test_imdn_as_any_size_with_adaptive_cropping(imdn_as, shared):
    """A 257x199 input (sides not multiples of 4) goes through ACS and agrees with a whole-image pass over the
    replicate-padded 260x200 image, within the CCA statistics bound (see the next test)."""
    x, _ = _bicubic_input(shared, 'baby')
    x = x[..., 100:357, 50:249]
    with torch.no_grad():
        out = imdn_as(x)
        padded = imdn_as.forward_whole(torch.nn.functional.pad(x, (0, 1, 0, 3), mode='replicate'))[..., :257, :199]
    assert out.shape == x.shape == (1, 3, 257, 199)
    assert torch.isfinite(out).all()
    assert _psnr(out.clamp(0, 1), padded.clamp(0, 1)) > 35


def test_imdn_as_crop_path_vs_whole_image(imdn_as, shared):
    """On sides that are multiples of 4 the cropped and whole-image passes agree, up to what the paper's design
    allows: the CCA layer (eq. 5) uses each input's global mean and standard deviation, and a quarter-size patch
    has other statistics than the whole image. Measured: 41-44 dB on Set5 (≈0.3 grey levels RMS)."""
    for name in ('bird', 'butterfly', 'woman'):
        x, _ = _bicubic_input(shared, name)
        with torch.no_grad():
            whole = imdn_as.forward_whole(x).clamp(0, 1)
            cropped = imdn_as.forward_acs(x).clamp(0, 1)
        assert cropped.shape == whole.shape
        assert _psnr(cropped, whole) > 40


def test_acs_pasting_is_exact_without_global_statistics(imdn_as, shared):
    """With the global statistics out of the way (CCA gates fixed) and patches wider than the receptive field,
    the cropping / pasting of eqs. 6-8 reproduces the whole-image pass to >= 50 dB: the arithmetic itself is exact."""
    import copy
    net = copy.deepcopy(imdn_as)
    for i in range(1, net.num_block + 1):
        getattr(net, f'IMDB{i}').cca = torch.nn.Identity()
    x, _ = _bicubic_input(shared, 'bird')
    with torch.no_grad():
        whole = net.forward_whole(x)
        cropped = adaptive_crop_forward(net.forward_whole, x, padding=128)
    assert _psnr(cropped, whole) >= 50


def test_acs_small_image_falls_back_to_padding(imdn_as):
    with torch.no_grad():
        assert imdn_as(torch.rand(2, 3, 9, 7)).shape == (2, 3, 9, 7)


def test_imdn_as_training_needs_multiple_of_4():
    net = IMDN_AS(num_feat=8, num_block=1).train()
    with pytest.raises(ValueError, match='multiples of 4'):
        net(torch.rand(1, 3, 30, 32))


@pytest.mark.parametrize('kwargs, match', [
    ({'type': 'IMDNN'}, r"network_g.type: 'IMDNN' is not registered.*did you mean \['IMDN'"),
    ({'type': 'IMDN', 'num_feats': 64}, r"network_g: \['num_feats'\] not accepted by IMDN"),
    ({'type': 'IMDN', 'upscale': 2.5}, 'upscale must be a positive integer'),
])
def test_bad_network_options(kwargs, match):
    with pytest.raises((KeyError, TypeError, ValueError), match=match):
        build_network(kwargs)


def test_registered_names():
    for name in ('IMDN', 'IMDN_AS', 'IMDN_RTC'):
        assert name in ARCH_REGISTRY


def test_contrast_backward_matches_autograd():
    """blocks.contrast's hand-written backward (eq. 5) equals autograd's chain, in double (gradcheck) and in float
    on a channels_last map; a constant map gets a finite gradient."""
    from lwsr_plugin.archs.blocks import _Contrast, contrast
    x = torch.randn(2, 5, 7, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_Contrast.apply, (x, ))
    x = torch.randn(4, 16, 24, 24).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(4, 16, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    ref = torch.autograd.grad((x - mean).square().mean(dim=(2, 3), keepdim=True).sqrt() + mean, x, g)[0]
    got = torch.autograd.grad(contrast(x), x, g)[0]
    assert torch.allclose(got, ref, atol=1e-6) and got.is_contiguous(memory_format=torch.channels_last)
    flat = torch.ones(1, 2, 4, 4, requires_grad=True)
    assert torch.isfinite(torch.autograd.grad(contrast(flat).sum(), flat)[0]).all()
