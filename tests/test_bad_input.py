"""Bad option files fail before BasicSR starts, in one message naming the option and the fix, and create nothing."""
import os

import pytest

from _utils import PY, link_datasets, run, write_options


@pytest.mark.parametrize('updates, expected', [
    ({'network_g.type': 'IMDM'}, "network_g.type: 'IMDM' is not registered"),
    ({'network_g.num_blocks': 3}, "network_g: ['num_blocks'] not accepted by IMDN"),
    ({'datasets.train.dataroot_gt': 'datasets/NoSuchSet/HR'}, 'datasets.train.dataroot_gt:'),
    ({'network_g': {'type': 'IMDN', 'upscale': 4}, 'path.pretrain_network_g': 'IMDN_x2.pth'},
     'path.pretrain_network_g: IMDN_x2.pth does not fit network_g (IMDN): upsampler.0.weight: checkpoint (12, 64, '
     '3, 3) vs network (48, 64, 3, 3)'),
    ({'path.pretrain_network_g': 'missing.pth'}, 'path.pretrain_network_g: missing.pth does not exist'),
    ({'num_gpu': 1}, 'num_gpu: 1, but no CUDA GPU is visible'),
    ({'network_g.upscale': 2}, 'scale: 4 but network_g.upscale: 2'),
])
def test_train_option_errors(tmp_path, datasets_dir, shared, updates, expected):
    import torch
    if 'num_gpu' in updates and torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    work = link_datasets(tmp_path, datasets_dir)
    os.symlink(shared('anchors', 'imdn', 'checkpoints', 'IMDN_x2.pth'), tmp_path / 'IMDN_x2.pth')
    opt = write_options(tmp_path / 'opt.yml', **updates)
    proc = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work, check=False)
    assert proc.returncode != 0
    assert expected in proc.stdout, proc.stdout[-3000:]
    assert 'Traceback' not in proc.stdout  # one message, not a stack
    assert not os.path.exists(tmp_path / 'experiments')  # nothing created, nothing archived


def test_missing_option_file(tmp_path):
    proc = run([PY, '-m', 'lwsr_plugin.test', '-opt', 'nope.yml'], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and 'no such option file' in proc.stdout
