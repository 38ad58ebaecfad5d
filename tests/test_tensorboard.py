"""TensorBoard of a real training run (BasicSR's SRModel and the plugin's LWSRModel): validation crops and the training
scalars read back from the event files; the crop panel of Y-only and small images."""
import math
import os

import pytest
import torch

from _utils import BIN, link_datasets, run, write_options
from lwsr_plugin.ops.matlab_bicubic import imresize
from lwsr_plugin.patches.tensorboard import CROP, CROP_IMAGES, crop_panel, training_scalars

SCALARS = ('train/it_per_s', 'train/data_wait_share', 'train/lr')


@pytest.mark.parametrize('model_type', ['SRModel', 'LWSRModel'])
def test_training_run_writes_crops_and_scalars(tmp_path, datasets_dir, model_type):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    work = link_datasets(tmp_path, datasets_dir)
    name = f'tb_{model_type}'
    opt = write_options(tmp_path / 'opt.yml', **{'name': name, 'model_type': model_type, 'train.total_iter': 4,
                                                 'val.val_freq': 2, 'logger.print_freq': 1,
                                                 'logger.use_tb_logger': True})
    run([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work)

    events = EventAccumulator(os.path.join(work, 'tb_logger', name), size_guidance={'images': 0, 'scalars': 0})
    events.Reload()
    tags = events.Tags()
    images = sorted(t for t in tags['images'] if t.startswith('val_Set5/'))
    # the first images the validation loader delivers (BasicSR lists the folder unsorted), named as the HR files
    assert len(images) == CROP_IMAGES, tags['images']
    assert {t.split('/')[1] for t in images} <= {'baby', 'bird', 'butterfly', 'head', 'woman'}
    for tag in images:
        shown = events.Images(tag)
        assert {2, 4} <= {e.step for e in shown}
        assert all(e.width == 4 * CROP and e.height == CROP for e in shown)
    for tag in SCALARS:
        values = events.Scalars(tag)
        assert [e.step for e in values] == [1, 2, 3, 4], tag
        assert all(math.isfinite(e.value) for e in values), tag
    assert all(0 <= e.value <= 1 for e in events.Scalars('train/data_wait_share'))
    assert all(e.value > 0 for e in events.Scalars('train/it_per_s'))
    assert events.Scalars('train/lr')[0].value == pytest.approx(2e-4)


def test_crop_panel_y_only_and_small_images():
    torch.manual_seed(0)
    lq = torch.rand(1, 1, 40, 40)
    visuals = {'lq': lq, 'result': torch.rand(1, 1, 120, 120), 'gt': torch.rand(1, 1, 120, 120)}
    panel = crop_panel(visuals, 3)
    assert panel.shape == (3, CROP, 4 * CROP)  # grey shown as RGB
    assert torch.equal(panel[0], panel[1])
    assert torch.equal(panel[:, :3, :3], lq[0, :, 4:5, 4:5].expand(3, 3, 3))  # LR nearest-upscaled, centre crop
    # the bicubic panel is the crop of the whole image's MATLAB bicubic, not of the cut-out LR
    whole = imresize(lq[0], scale=3)[:, 12:108, 12:108].clamp(0, 1)
    assert torch.allclose(panel[:1, :, CROP:2 * CROP], whole, atol=1e-6)
    assert torch.equal(panel[:1, :, 3 * CROP:], visuals['gt'][0, :, 12:108, 12:108])

    small = {'lq': torch.rand(1, 3, 10, 20), 'result': torch.rand(1, 3, 40, 80)}  # smaller than the crop, no HR
    panel = crop_panel(small, 4)
    assert panel.shape == (3, 40, 3 * 80)
    assert torch.equal(panel[:, :, 160:], small['result'][0].clamp(0, 1))


def test_training_scalars_per_param_group():
    scalars = training_scalars({'iter': 3, 'lrs': [1e-3, 5e-4], 'time': 0.5, 'data_time': 0.125, 'l_pix': 0.1})
    assert scalars == {'train/it_per_s': 2.0, 'train/data_wait_share': 0.25, 'train/lr/group_0': 1e-3,
                       'train/lr/group_1': 5e-4}
