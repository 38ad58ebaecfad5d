"""The papers' losses of ``lwsr_plugin/losses``: ``CaffeL1Loss`` and ``CaffeEuclideanLoss``, IDN's MAE and MSE (§3.1.1,
eqs. 5 and 4) as IDN-Caffe trains with them. Real Set5/Set14 patches (HR and the bicubic LR PNGs, Y channel), the
official IDN weights, BasicSR's ``build_loss`` and the plugin's models."""
import copy
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

import lwsr_plugin  # noqa: F401  (registers)
from basicsr.losses import build_loss
from basicsr.models import build_model
from basicsr.utils import bgr2ycbcr
from basicsr.utils.registry import LOSS_REGISTRY
from conftest import REPO
from lwsr_plugin.archs.idn_arch import IDN
from lwsr_plugin.convert.caffe_idn import convert_idn_caffemodel

STAGE1, STAGE2 = 'pixel_opt', 'two_stage.pixel_opt'
# the batch-tied form of the same losses for a batch of 64 (BasicSR's own losses): older option files keep it
BATCH_TIED = {STAGE1: {'type': 'L1Loss', 'loss_weight': 1 / 64, 'reduction': 'sum'},
              STAGE2: {'type': 'MSELoss', 'loss_weight': 1 / 128, 'reduction': 'sum'}}


def _shipped(name):
    with open(os.path.join(REPO, 'options', name), encoding='utf-8') as f:
        return yaml.safe_load(f)


def _loss_opt(opt, stage):
    return opt['train']['pixel_opt'] if stage == STAGE1 else opt['train']['two_stage']['pixel_opt']


def _gt_size(opt, stage):
    return opt['train']['two_stage']['stage1_gt_size' if stage == STAGE1 else 'gt_size']


def _y(path):
    return bgr2ycbcr(cv2.imread(path).astype(np.float32) / 255., y_only=True)


def _patches(shared, scale, gt_size, n):
    """``n`` aligned (LR, HR) Y patch pairs, (n, 1, h, w) each: four per image of Set5 then Set14 (HR and
    ``LR_bicubic/X<scale>``), at the centres of the image's quadrants, the HR window on the LR grid x scale."""
    lq_size = gt_size // scale
    lqs, gts = [], []
    for name in ('Set5', 'Set14'):
        for file in sorted(os.listdir(shared('datasets', name, 'HR'))):
            hr = _y(shared('datasets', name, 'HR', file))
            lr = _y(shared('datasets', name, 'LR_bicubic', f'X{scale}', file.replace('.png', f'x{scale}.png')))
            for fy in (0.25, 0.75):
                for fx in (0.25, 0.75):
                    top, left = int(fy * (lr.shape[0] - lq_size)), int(fx * (lr.shape[1] - lq_size))
                    lqs.append(lr[top:top + lq_size, left:left + lq_size])
                    gts.append(hr[top * scale:(top + lq_size) * scale, left * scale:(left + lq_size) * scale])
    assert len(lqs) >= n
    return torch.from_numpy(np.stack(lqs[:n]))[:, None], torch.from_numpy(np.stack(gts[:n]))[:, None]


def _official_idn(shared, scale):
    state, kwargs = convert_idn_caffemodel(shared('anchors', 'idn', f'IDN_x{scale}.caffemodel'), scale)
    net = IDN(**kwargs)
    net.load_state_dict(state, strict=True)
    return net


# ------------------------------------------------------------------------------------------------- the losses
def test_registered_and_built_by_basicsr_with_caffes_normalisation(shared):
    """Caffe's layers: L1Loss = sum |a - b| / N, EuclideanLoss = sum (a - b)^2 / (2 N), N the batch size, for any N;
    ``loss_weight`` multiplies; BasicSR's element-wise ``weight`` is applied before the sum."""
    assert {'CaffeL1Loss', 'CaffeEuclideanLoss'} <= set(LOSS_REGISTRY.keys())
    lq, gt = _patches(shared, 4, 44, 64)
    pred = torch.nn.functional.interpolate(lq, scale_factor=4, mode='bicubic', align_corners=False)
    diff = (pred - gt).double()
    for n in (1, 7, 64):
        l1 = build_loss({'type': 'CaffeL1Loss'})(pred[:n], gt[:n])
        l2 = build_loss({'type': 'CaffeEuclideanLoss'})(pred[:n], gt[:n])
        assert l1.dtype == l2.dtype == torch.float32 and l1.dim() == l2.dim() == 0
        assert l1.item() == pytest.approx(diff[:n].abs().sum().item() / n, rel=1e-6)
        assert l2.item() == pytest.approx(diff[:n].pow(2).sum().item() / (2 * n), rel=1e-6)
    # per-sample normalisation: a batch's loss is the mean of its samples' losses, whatever the batch size
    per_sample = torch.stack([build_loss({'type': 'CaffeL1Loss'})(pred[i:i + 1], gt[i:i + 1]) for i in range(64)])
    for n in (8, 64):
        assert build_loss({'type': 'CaffeL1Loss'})(pred[:n], gt[:n]).item() == \
            pytest.approx(per_sample[:n].mean().item(), rel=1e-5)
    assert build_loss({'type': 'CaffeL1Loss', 'loss_weight': 0.5})(pred, gt).item() == \
        pytest.approx(diff.abs().sum().item() / 128, rel=1e-6)
    mask = (gt > 0.5).float()
    assert build_loss({'type': 'CaffeEuclideanLoss'})(pred, gt, mask).item() == \
        pytest.approx((diff.pow(2) * mask).sum().item() / 128, rel=1e-6)


def test_under_bf16_autocast_the_loss_is_fp32_and_equals_the_models_fp32_call(shared):
    """The official IDN x4 forward under bf16 autocast: the loss called inside the autocast region on the bf16 output
    is reduced in fp32 (the float64 sum of the same bf16 values) and gives the loss and the parameter gradients of the
    plugin models' call, which casts the output to fp32 first (``LWSRModel.compute_losses``)."""
    net = _official_idn(shared, 4)
    params = list(net.parameters())
    lq, gt = _patches(shared, 4, 44, 16)
    for loss_type in ('CaffeL1Loss', 'CaffeEuclideanLoss'):
        criterion = build_loss({'type': loss_type})
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = net(lq)
            in_region = criterion(out, gt)
        grads = torch.autograd.grad(in_region, params, retain_graph=True)
        fp32_call = criterion(out.float(), gt)
        fp32_grads = torch.autograd.grad(fp32_call, params)
        assert out.dtype == torch.bfloat16 and in_region.dtype == fp32_call.dtype == torch.float32
        assert torch.equal(in_region, fp32_call) and all(torch.equal(a, b) for a, b in zip(grads, fp32_grads))
        diff = out.detach().double() - gt.double()
        exact = diff.abs().sum() / 16 if loss_type == 'CaffeL1Loss' else diff.pow(2).sum() / 32
        assert in_region.item() == pytest.approx(exact.item(), rel=1e-6)
        assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().max() > 0 for g in grads)


# --------------------------------------------------------------------------------------- the shipped recipes
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_shipped_idn_recipes_name_caffes_losses_and_match_the_batch_tied_weights(scale, shared):
    """options/train_IDN_x<s>.yml (and its pre-training YAML) name CaffeL1Loss / CaffeEuclideanLoss with no weight tied
    to the batch, and train exactly as BasicSR's ``L1Loss`` / ``MSELoss`` with ``reduction: sum`` and weight 1/64 /
    1/128 at the shipped batch of 64: on 64 real patches of each stage's size, through the official IDN weights, the
    loss values and the gradients with respect to the network output are bit-for-bit equal."""
    opt = _shipped(f'train_IDN_x{scale}.yml')
    batch = opt['datasets']['train']['batch_size_per_gpu']
    assert batch == 64
    assert opt['train']['pixel_opt'] == {'type': 'CaffeL1Loss', 'loss_weight': 1.0}
    assert opt['train']['two_stage']['pixel_opt'] == {'type': 'CaffeEuclideanLoss', 'loss_weight': 1.0}
    assert _shipped(f'train_IDN_x{scale}_pretrain.yml')['train']['pixel_opt'] == opt['train']['pixel_opt']
    net = _official_idn(shared, scale)
    for stage in (STAGE1, STAGE2):
        lq, gt = _patches(shared, scale, _gt_size(opt, stage), batch)
        with torch.no_grad():
            out = net(lq)
        values, grads = [], []
        for loss_opt in (_loss_opt(opt, stage), BATCH_TIED[stage]):
            pred = out.clone().requires_grad_()
            loss = build_loss(copy.deepcopy(loss_opt))(pred, gt)
            loss.backward()
            values.append(loss.detach())
            grads.append(pred.grad)
        print(f'x{scale} {stage}: {_loss_opt(opt, stage)["type"]} {values[0].item():.9g}, '
              f'{BATCH_TIED[stage]["type"]} sum x {BATCH_TIED[stage]["loss_weight"]} {values[1].item():.9g}, '
              f'max |d grad| {(grads[0] - grads[1]).abs().max().item():.3g}')
        assert torch.equal(values[0], values[1]) and torch.equal(grads[0], grads[1])
        assert grads[0].abs().max() > 0


def test_network_gradients_match_the_batch_tied_weights(shared):
    """The same equivalence on the parameters: official IDN x4, 64 real patches per stage, one forward, the
    gradient of the shipped loss and of the batch-tied BasicSR loss with respect to every weight."""
    opt = _shipped('train_IDN_x4.yml')
    net = _official_idn(shared, 4)
    params = list(net.parameters())
    for stage in (STAGE1, STAGE2):
        lq, gt = _patches(shared, 4, _gt_size(opt, stage), 64)
        out = net(lq)
        shipped = torch.autograd.grad(build_loss(copy.deepcopy(_loss_opt(opt, stage)))(out, gt), params,
                                      retain_graph=True)
        tied = torch.autograd.grad(build_loss(copy.deepcopy(BATCH_TIED[stage]))(out, gt), params)
        equal = sum(torch.equal(a, b) for a, b in zip(shipped, tied))
        print(f'x4 {stage}: {equal} of {len(params)} parameter gradients bit-for-bit equal')
        assert equal == len(params)


# ---------------------------------------------------------------------------------------------- accumulation
def _build_on_cpu(opt, tmp_path):
    """BasicSR's ``build_model`` of a loaded training option dict, as ``train.py`` would set it up, on CPU."""
    opt.update(num_gpu=0, is_train=True, dist=False, rank=0, world_size=1, root_path=str(tmp_path))
    for key in ('models', 'training_states'):
        opt['path'][key] = str(tmp_path / key)
        os.makedirs(opt['path'][key], exist_ok=True)
    return build_model(opt)


def _idn_model(tmp_path, shared, pixel_opt, **train):
    """The shipped IDN x4 pre-training model (LWSRModel) with the official weights, built in-process on CPU in fp32,
    training with ``pixel_opt``."""
    opt = _shipped('train_IDN_x4_pretrain.yml')
    opt['train'].update(amp=False, pixel_opt=copy.deepcopy(pixel_opt), **train)
    model = _build_on_cpu(opt, tmp_path)
    model.net_g.load_state_dict(_official_idn(shared, 4).state_dict())
    return model


def _step_gradients(model, lq, gt):
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(1)
    return torch.cat([p.grad.flatten() for p in model.net_g.parameters()])


@pytest.mark.parametrize('stage', [STAGE1, STAGE2])
def test_accumulate_two_micro_batches_equal_one_batch_of_twice_the_size(stage, tmp_path, shared):
    """``train.accumulate: 2`` with micro-batches of 8 gives the gradients, the step and the logged loss of one
    batch of 16 (each micro-batch normalised by its own size, then halved by the model); a batch of 8 alone does not."""
    shipped = _shipped('train_IDN_x4.yml')
    loss_opt = _loss_opt(shipped, stage)
    lq, gt = _patches(shared, 4, _gt_size(shipped, stage), 16)
    whole = _idn_model(tmp_path / 'b16', shared, loss_opt)
    split = _idn_model(tmp_path / 'b8x2', shared, loss_opt, accumulate=2)
    half = _idn_model(tmp_path / 'b8', shared, loss_opt)
    g_whole, g_split = _step_gradients(whole, lq, gt), _step_gradients(split, lq, gt)
    g_half = _step_gradients(half, lq[:8], gt[:8])
    rel, rel_half = (((g_whole - g).norm() / g_whole.norm()).item() for g in (g_split, g_half))
    step, step_half = (max((a - b).abs().max().item() for a, b in zip(whole.net_g.parameters(), m.net_g.parameters()))
                       for m in (split, half))
    print(f'{loss_opt["type"]}: relative gradient difference 8 x 2 vs 16: {rel:.3g}, 8 alone vs 16: {rel_half:.3g}; '
          f'largest weight difference after the Adam step: {step:.3g}, {step_half:.3g}')
    assert rel < 1e-5 and rel_half > 1e-2
    assert whole.log_dict['l_pix'] == pytest.approx(split.log_dict['l_pix'], rel=1e-6)
    assert step < step_half / 20


# ------------------------------------------------------------------------------------------- option handling
def test_option_checks_and_two_stage_model_take_the_caffe_losses_and_the_batch_tied_form(tmp_path, datasets_dir):
    """The pre-run check accepts the shipped IDN recipe (training data pointed at Set5), refuses a ``reduction`` on
    the Caffe losses (they have none to give), and still accepts the batch-tied BasicSR form; TwoStageSRModel builds
    CaffeL1Loss for stage 1 and CaffeEuclideanLoss for stage 2."""
    from _utils import link_datasets
    from lwsr_plugin.options.checks import OptionError, check_options
    root = link_datasets(tmp_path, datasets_dir)
    opt = _shipped('train_IDN_x4.yml')
    opt['num_gpu'] = 0
    opt['datasets']['train'].update(type='PairedImageDataset', dataroot_gt='datasets/Set5/HR', color='y',
                                    dataroot_lq='datasets/Set5/LR_bicubic/X4', filename_tmpl='{}x4',
                                    io_backend={'type': 'disk'}, dataset_enlarge_ratio=20)
    check_options('train_IDN_x4.yml', root=str(root), opt=copy.deepcopy(opt))
    bad = copy.deepcopy(opt)
    bad['train']['pixel_opt']['reduction'] = 'sum'
    with pytest.raises(OptionError, match=r"train.pixel_opt: \['reduction'\] not accepted by CaffeL1Loss"):
        check_options('train_IDN_x4.yml', root=str(root), opt=bad)
    old = copy.deepcopy(opt)
    old['train']['pixel_opt'] = dict(BATCH_TIED[STAGE1])
    old['train']['two_stage']['pixel_opt'] = dict(BATCH_TIED[STAGE2])
    check_options('train_IDN_x4.yml', root=str(root), opt=old)

    model = _build_on_cpu(opt, tmp_path)
    assert type(model.cri_pix_stage1).__name__ == 'CaffeL1Loss'
    assert type(model.cri_pix_stage2).__name__ == 'CaffeEuclideanLoss'
