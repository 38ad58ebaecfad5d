"""Evaluation tools: IFC against IDN's Table 3, self-ensemble through the test path, the model report and its plot,
and skipping of absent test sets."""
import glob
import os
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

import lwsr_plugin  # noqa: F401  (registration)
from _utils import PY, link_datasets, run
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import REPO
from lwsr_plugin.archs.blocks import count_parameters
from lwsr_plugin.options import drop_absent_datasets
from lwsr_plugin.cli.report import build, plot_results
from lwsr_plugin.metrics.ifc_metric import calculate_ifc
from lwsr_plugin.metrics.model_cost import count_macs
from lwsr_plugin.ops.matlab_bicubic import imresize

# IDN's Table 3, Bicubic column (Set5, Set14)
IDN_TABLE3_BICUBIC = {('Set5', 2): 6.083, ('Set5', 3): 3.580, ('Set5', 4): 2.329,
                      ('Set14', 2): 6.105, ('Set14', 3): 3.473, ('Set14', 4): 2.237}


def _bicubic_set5(datasets_dir, scale):
    """(bicubic upscaled LR, HR) pairs of Set5 from the 8-bit LR files, MATLAB bicubic, uint8 BGR, HR cut to the LR
    grid."""
    pairs = []
    for hr_path in sorted(glob.glob(os.path.join(datasets_dir, 'Set5', 'HR', '*.png'))):
        name = os.path.splitext(os.path.basename(hr_path))[0]
        lr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', f'X{scale}', f'{name}x{scale}.png'))
        up = imresize(torch.from_numpy(lr.astype(np.float64)).permute(2, 0, 1)[None], scale=scale, antialias=False)
        up = np.clip(np.round(up[0].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)
        hr = cv2.imread(hr_path)[:up.shape[0], :up.shape[1]]
        pairs.append((up, hr))
    return pairs


@pytest.mark.slow
def test_ifc_bicubic_matches_idn_table3_through_shipped_yamls(datasets_dir, tmp_path):
    """The Bicubic column of IDN's Table 3 (Set5, Set14, x2-x4) within 1 %: the shipped IDN test YAMLs' sets and IFC
    metric (IDN's protocol) with MATLAB bicubic in place of the network (``lwsr-evaluate --paper-tables``' path)."""
    from lwsr_plugin.cli.evaluate import evaluate_options, load_test_options
    link_datasets(tmp_path, datasets_dir)
    for scale in (2, 3, 4):
        opt = load_test_options(os.path.join(REPO, 'options', f'test_IDN_x{scale}.yml'), str(tmp_path))
        opt['datasets'] = {k: v for k, v in opt['datasets'].items() if v['name'] in ('Set5', 'Set14')}
        opt['num_gpu'] = 0
        found = evaluate_options(opt, bicubic=True, log=lambda _: None)
        for name in ('Set5', 'Set14'):
            paper = IDN_TABLE3_BICUBIC[(name, scale)]
            assert abs(found[name]['ifc'] / paper - 1) <= 0.01, (name, scale, found[name])


def test_grey_image_is_luma_in_evaluation_upscale_and_export(datasets_dir):
    """One convention for a single-channel image (docs/evaluation.md): a Y model takes its values as its Y, an RGB
    model gets R = G = B. Evaluation (YProtocolDataset), lwsr-upscale (Upscaler) and lwsr-export's check agree."""
    from basicsr.data import build_dataset

    from lwsr_plugin.archs.idn_arch import IDN
    from lwsr_plugin.cli.export import image_tensor
    from lwsr_plugin.inference import Upscaler
    path = os.path.join(datasets_dir, 'Set14', 'LR_bicubic', 'X2', 'bridgex2.png')
    grey = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert grey.ndim == 2
    as_y = torch.from_numpy(grey.astype(np.float32) / 255.)[None, None]
    assert torch.allclose(image_tensor(path, 1), as_y)  # not 16 + 219 v / 255
    assert torch.allclose(image_tensor(path, 3), as_y.repeat(1, 3, 1, 1))
    ds = build_dataset({'name': 'Set14', 'type': 'YProtocolDataset', 'phase': 'test', 'scale': 2, 'lq_from': 'file',
                        'dataroot_gt': os.path.join(datasets_dir, 'Set14', 'HR'), 'io_backend': {'type': 'disk'},
                        'dataroot_lq': os.path.dirname(path), 'filename_tmpl': '{}x2'})
    item = next(ds[i] for i in range(len(ds)) if 'bridge' in ds.lq_paths[i])
    assert torch.allclose(item['lq'][None], as_y)
    torch.manual_seed(0)
    net = IDN(num_feat=16, diff_ch=4, num_block=1, upscale=2).eval()
    crop = grey[:24, :20]
    out = Upscaler(net, channels_last=False).upscale(crop)
    with torch.no_grad():
        ref = net(as_y[..., :24, :20]).clamp(0, 1)[0, 0].numpy() * 255
    assert out.shape == (48, 40) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - ref).max() <= 0.5 + 1e-3


def test_ifc_perfect_beats_degraded(datasets_dir):
    up, hr = _bicubic_set5(datasets_dir, 4)[2]
    perfect = calculate_ifc(hr, hr, crop_border=4)
    noisy = np.clip(hr + np.random.default_rng(0).normal(0, 2, hr.shape), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(hr, (3, 3), 0.5)
    degraded = [calculate_ifc(x, hr, crop_border=4) for x in (up, noisy, blurred)]
    assert all(perfect > d > 0 for d in degraded), (perfect, degraded)


def _metrics(log):
    """{dataset: {metric: value}} from BasicSR's validation log."""
    return {name: {k: float(v) for k, v in re.findall(r'# (\w+): ([\d.]+)', block)}
            for name, block in re.findall(r'Validation (\w+)\n((?:\s+# \w+: [\d.]+.*\n)+)', log)}


@pytest.mark.slow
def test_self_ensemble_and_ifc_through_test_path(tmp_path, datasets_dir, shared):
    """IMDN x4 Set5 with the official weights through lwsr-evaluate: IFC from the YAML, self-ensemble raises PSNR,
    and the absent Manga109 is skipped."""
    work = link_datasets(tmp_path, datasets_dir)
    with open(os.path.join(REPO, 'options', 'test_IMDN_x4.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt['datasets'] = {k: v for k, v in opt['datasets'].items() if v['name'] in ('Set5', 'Manga109')}
    opt.update(model_type='LWSRModel', num_gpu=0)
    opt['path']['pretrain_network_g'] = shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth')
    opt['val']['save_img'] = False
    opt['val']['metrics']['ifc'] = {'type': 'calculate_ifc', 'crop_border': 4, 'test_y_channel': True}
    found = {}
    for ensemble in (False, True):
        opt['name'] = f'imdn_x4_se{int(ensemble)}'
        opt['val']['self_ensemble'] = ensemble
        path = tmp_path / f'{opt["name"]}.yml'
        path.write_text(yaml.safe_dump(opt, sort_keys=False))
        out = run([PY, '-m', 'lwsr_plugin.cli.evaluate', '-opt', str(path)], cwd=work, timeout=600).stdout
        assert 'skipped Manga109' in out
        found[ensemble] = _metrics(out)['Set5']
    assert abs(found[False]['psnr'] - 32.2096) <= 0.01
    assert found[True]['psnr'] > found[False]['psnr'] + 0.05, found
    assert found[True]['ifc'] > found[False]['ifc'] > 3


def test_absent_dataset_is_skipped(tmp_path, datasets_dir):
    link_datasets(tmp_path, datasets_dir)
    with open(os.path.join(REPO, 'options', 'test_IMDN_x2.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    messages = []
    skipped = drop_absent_datasets(opt, root=str(tmp_path), log=messages.append)
    kept = [d['name'] for d in opt['datasets'].values()]
    assert set(skipped) == {'Urban100', 'Manga109'} and kept == ['Set5', 'Set14', 'BSD100'], (skipped, kept)
    assert all(m.startswith('skipped ') for m in messages)


def test_no_test_set_present_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from lwsr_plugin.options import present_datasets_only
    monkeypatch.chdir(tmp_path)  # no datasets/ here
    argv = ['-opt', os.path.join(REPO, 'options', 'test_IMDN_x4.yml')]
    with pytest.raises(SystemExit) as exit_info:
        with present_datasets_only(argv):
            pass
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'none of the test sets' in err and 'lwsr-prepare-benchmark' in err


def test_every_arch_and_scale_has_a_test_yaml():
    shipped = [(name, scale) for name in ('IMDN', 'IDN', 'DRN', 'DRNplus', 'sLWSR16', 'sLWSR32', 'sLWSR64')
               for scale in (2, 3, 4)] + [('IMDN_AS', s) for s in (2, 3, 4)] + [('IMDN_RTC', 2), ('sLWSR32C', 4)]
    for name, scale in shipped:
        path = os.path.join(REPO, 'options', f'test_{name}_x{scale}.yml')
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
        sets = [d['name'] for d in opt['datasets'].values()]
        assert sets == ['Set5', 'Set14', 'BSD100', 'Urban100', 'Manga109'], (path, sets)
        assert opt['scale'] == scale == opt['network_g'].get('upscale', scale)  # IMDN_AS: output size = input size
        with torch.device('meta'):  # the network of every test YAML builds with its scale
            net_opt = dict(opt['network_g'])
            ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)


@pytest.mark.parametrize('key, scale, paper', [('IMDN', 2, 694e3), ('IMDN', 3, 703e3), ('IMDN', 4, 715e3),
                                               ('IDN', 4, 553e3), ('sLWSR16', 4, 144e3), ('sLWSR32', 4, 571e3),
                                               ('sLWSR64', 4, 2277e3)])
def test_report_parameters_equal_papers(key, scale, paper):
    assert round(count_parameters(build(key, scale)), -3) == paper


def test_report_imdn_x4_macs_match_table7():
    net = build('IMDN', 4)
    macs, out = count_macs(net, (1, 3, 48, 48))
    per_pixel = macs / out[0, 0].numel()
    assert abs(per_pixel / 45e3 - 1) < 0.03, per_pixel  # Table 7: 45K per HR pixel
    assert abs(per_pixel * 1280 * 720 / 1e9 - 41.5) < 1.5


def test_plot_written(tmp_path):
    results = tmp_path / 'results.csv'
    results.write_text('name,params,psnr\nIMDN,715176,32.21\nIDN,552769,31.82\ns-LWSR16,143731,31.62\n')
    png = plot_results(str(results), str(tmp_path / 'plot.png'))
    img = cv2.imread(png)
    assert img is not None and img.shape[0] > 200 and img.std() > 5


def test_compare_figure(tmp_path, shared):
    """lwsr-compare: zoomed crops of bicubic | model | HR with captions, and a clear error for a bad crop."""
    from lwsr_plugin.cli import compare
    hr = shared('datasets', 'Set5', 'HR', 'bird.png')
    lr = shared('datasets', 'Set5', 'LR_bicubic', 'X4', 'birdx4.png')
    ckpt = shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth')
    out = tmp_path / 'fig.png'
    assert compare.main(['--hr', hr, '--lr', lr, '--scale', '4', '--model', f'IMDN=IMDN:{ckpt}', '--crop',
                         '100,100,48,48', '-o', str(out)]) == 0
    fig = cv2.imread(str(out))
    assert fig is not None and fig.shape[0] == 48 * 4 + 28 and fig.shape[1] > 3 * 48 * 4
    with pytest.raises(SystemExit, match='outside the 288x288 HR image'):
        compare.main(['--hr', hr, '--lr', lr, '--scale', '4', '--model', f'IMDN=IMDN:{ckpt}', '--crop',
                      '280,0,48,48', '-o', str(out)])


def test_upsampled_paired_dataset_feeds_imdn_as(datasets_dir):
    """IMDN_AS's test path: LR resized (MATLAB bicubic) to the trimmed HR size, equal to BasicSR's imresize."""
    from basicsr.data import build_dataset
    from basicsr.utils.matlab_functions import imresize
    ds = build_dataset({'name': 'Set5', 'type': 'UpsampledPairedImageDataset', 'phase': 'test', 'scale': 3,
                        'dataroot_gt': os.path.join(datasets_dir, 'Set5', 'HR'),
                        'dataroot_lq': os.path.join(datasets_dir, 'Set5', 'LR_bicubic', 'X3'),
                        'filename_tmpl': '{}x3', 'io_backend': {'type': 'disk'}})
    item = next(ds[i] for i in range(len(ds)) if 'woman' in ds[i]['lq_path'])  # 344x228 HR, 114x76 LR
    # the HR is trimmed to 3 x LR = 342x228 and the LR resized to it
    assert item['lq'].shape == item['gt'].shape == (3, 342, 228)
    lr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', 'X3', 'womanx3.png'))[..., ::-1] / 255.
    ref = imresize(lr.astype(np.float64), 3).clip(0, 1).transpose(2, 0, 1)
    assert np.abs(item['lq'].numpy() - ref).max() < 1e-5
