"""lwsr-test with the official IMDN checkpoints reproduces the paper's numbers through BasicSR's test pipeline."""
import os
import re

import pytest
import yaml

from _utils import BIN, link_datasets, run
from conftest import REPO
from lwsr_plugin.cli.evaluate import IMDN_TABLE5

EXPECTED = {  # (dataset, scale): (Y-PSNR, SSIM), official weights, MATLAB-style float-Y protocol
    ('Set5', 2): (37.9960, 0.9605),
    ('Set5', 3): (34.3597, 0.9270),
    ('Set5', 4): (32.2096, 0.8948),
    ('Set14', 2): (33.6266, 0.9177),
    ('Set14', 3): (30.3216, 0.8417),
    ('Set14', 4): (28.5820, 0.7811),
    ('BSD100', 4): (27.5614, 0.7353),
}


def _metrics(log):
    """{dataset: (psnr, ssim)} from BasicSR's validation log."""
    found = {}
    for name, block in re.findall(r'Validation (\w+)\n((?:\s+# \w+: [\d.]+.*\n)+)', log):
        psnr = float(re.search(r'# psnr: ([\d.]+)', block).group(1))
        ssim = float(re.search(r'# ssim: ([\d.]+)', block).group(1))
        found[name] = (psnr, ssim)
    return found


@pytest.mark.slow
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_lwsr_test_official_checkpoints(tmp_path, datasets_dir, shared, scale):
    work = link_datasets(tmp_path, datasets_dir)
    os.makedirs(tmp_path / 'experiments' / 'pretrained_models')
    os.symlink(shared('anchors', 'imdn', 'checkpoints', f'IMDN_x{scale}.pth'),
               tmp_path / 'experiments' / 'pretrained_models' / f'IMDN_x{scale}.pth')
    with open(os.path.join(REPO, 'options', f'test_IMDN_x{scale}.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    wanted = {name for name, s in EXPECTED if s == scale}
    opt['datasets'] = {k: v for k, v in opt['datasets'].items() if v['name'] in wanted}  # x2/x3: Set5, Set14
    opt_path = tmp_path / f'test_x{scale}.yml'
    opt_path.write_text(yaml.safe_dump(opt, sort_keys=False))
    out = run([os.path.join(BIN, 'lwsr-test'), '-opt', str(opt_path)], cwd=work, timeout=900).stdout
    metrics = _metrics(out)
    for name in wanted:
        psnr, ssim = metrics[name]
        exp_psnr, exp_ssim = EXPECTED[(name, scale)]
        assert abs(psnr - exp_psnr) <= 0.01 and abs(ssim - exp_ssim) <= 0.01, (name, psnr, ssim)
        paper_psnr, paper_ssim = IMDN_TABLE5[(name, scale)]  # IMDN's Table 5, as printed
        assert abs(psnr - paper_psnr) <= 0.01 and abs(ssim - paper_ssim) <= 0.001, (name, psnr, ssim)
    assert len(os.listdir(tmp_path / 'results' / f'test_IMDN_x{scale}' / 'visualization' / 'Set5')) == 5


def test_imdn_as_adaptive_cropping_default_is_the_official_32():
    """IMDN_AS's ACS padding defaults to the official test script's ``crop_forward(..., shave=32)``: patch sides
    floor(n/2) + 32 rounded down to a multiple of 4, e.g. 156 for a 255-pixel side (16 would give 140)."""
    import inspect

    import torch

    from lwsr_plugin.archs.imdn_arch import IMDN_AS, acs_patch_size, adaptive_crop_forward
    assert IMDN_AS(num_feat=8, num_block=1).acs_padding == 32
    assert inspect.signature(adaptive_crop_forward).parameters['padding'].default == 32
    assert acs_patch_size(255, 32) == 156 and acs_patch_size(255, 16) == 140
    sides = []
    adaptive_crop_forward(lambda t: sides.append(tuple(t.shape[-2:])) or t, torch.zeros(1, 3, 255, 199))
    assert sides == [(156, 128)]
