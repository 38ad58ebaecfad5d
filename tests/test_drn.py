"""DRN / DRN+: shapes at every scale, parameter counts, option validation and a BasicSR overfit run."""
import os

import cv2
import pytest
import torch

import lwsr_plugin  # noqa: F401  (registers the archs)
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from lwsr_plugin.archs.blocks import count_parameters
from lwsr_plugin.archs.drn_arch import DRN

# Regression numbers for the defaults (G=6, K=9, d=8, 4 steps per RDB, bottleneck ratio 4); see docs/drn.md.
PARAMS = {
    ('DRN', 2): 1_587_107, ('DRN', 3): 1_771_747, ('DRN', 4): 2_030_243,
    ('DRN+', 2): 17_643_683, ('DRN+', 3): 17_828_323, ('DRN+', 4): 18_086_819,
}
PAPER_DRN_PLUS_X4 = 43.09e6 * (1 - 0.54)  # §3.3: 54% fewer parameters than EDSR x4


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """These are small-tensor CPU checks: on a shared 2-core box, OpenMP threads spin-waiting for each other made the
    module 5x slower (156 s vs 32 s measured), so they run on one thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _meta_build(**kwargs):
    """Build on the meta device: counts without allocating or initialising 18M weights."""
    with torch.device('meta'):
        return DRN(**kwargs)


def test_registered():
    assert ARCH_REGISTRY.get('DRN') is DRN


@pytest.mark.parametrize('variant,scale', sorted(PARAMS))
def test_parameter_count(variant, scale):
    assert count_parameters(_meta_build(upscale=scale, variant=variant)) == PARAMS[(variant, scale)]


def test_drn_plus_matches_paper_size_statement():
    ratio = PARAMS[('DRN+', 4)] / PAPER_DRN_PLUS_X4
    assert 0.85 <= ratio <= 1.15, ratio


def test_variant_only_changes_rdb_width():
    plus = _meta_build(variant='DRN+')
    explicit = _meta_build(variant='DRN', rdb_feat=256)
    assert [(k, v.shape) for k, v in plus.named_parameters()] == \
        [(k, v.shape) for k, v in explicit.named_parameters()]
    assert plus.lfe.out_channels == 64 and plus.rdgs[0].body[0].fusion[0].out_channels == 64


def test_residual_distilling_step_is_eqs_9_to_11():
    """With its last conv zeroed a step is [x, 0]: the first D_i outputs are added to the input, d are new (eq. 11)."""
    from lwsr_plugin.archs.drn_arch import ResidualDistilling

    step = ResidualDistilling(in_ch=12, mid_ch=4, distill_ch=3, alpha=0.2)
    torch.nn.init.zeros_(step.body[-2].weight)
    torch.nn.init.zeros_(step.body[-2].bias)
    x = torch.randn(2, 12, 5, 5)
    out = step(x)
    assert out.shape == (2, 15, 5, 5)  # D_{i+1} = D_i + d (eq. 9)
    assert torch.equal(out[:, :12], x) and torch.equal(out[:, 12:], torch.zeros(2, 3, 5, 5))


def test_no_buffers():
    """Nothing for DDP to broadcast: the mean shift is a plain tensor attribute."""
    assert list(DRN(num_rdg=1, num_rdb=1).buffers()) == []


def _forward_48(network_g):
    torch.manual_seed(0)
    net = build_network({'type': 'DRN', **network_g}).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 48, 48))
    scale = network_g['upscale']
    assert out.shape == (1, 3, 48 * scale, 48 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('variant', ['DRN', 'DRN+'])
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_forward_shape(variant, scale):
    """Every variant and scale at its full widths; 1 group of 2 RDBs instead of 6 x 9 keeps this fast on CPU (the
    depth does not change any shape)."""
    _forward_48({'upscale': scale, 'variant': variant, 'num_rdg': 1, 'num_rdb': 2})


def test_full_size_forward_drn_plus_x4():
    """The paper's DRN+ x4 (6 x 9 RDBs, 18.1M parameters) end to end; 8-11 s on one thread of a loaded 2-core box."""
    _forward_48({'upscale': 4, 'variant': 'DRN+'})


def test_full_size_forward_drn_x4():
    _forward_48({'upscale': 4, 'variant': 'DRN'})


@pytest.mark.parametrize('kwargs,match', [
    ({'variant': 'DRN++'}, 'variant'),
    ({'upscale': 2.0}, 'upscale'),
    ({'num_rdb': 0}, 'num_rdb'),
    ({'rd_ratio': 512}, 'rd_ratio'),
])
def test_bad_options_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _meta_build(**kwargs)


def _sr_model_opt(network_g):
    return {
        'name': 'test_drn_overfit', 'model_type': 'SRModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
        'scale': network_g['upscale'], 'network_g': network_g,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.999], 'eps': 1e-8},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
    }


@pytest.fixture(scope='module')
def fixed_batch(datasets_dir):
    """Four 32x32 HR patches of Set5 butterfly and their x2 bicubic LR: real structure, so 50 steps show learning."""
    img = cv2.imread(os.path.join(datasets_dir, 'Set5', 'HR', 'butterfly.png'), cv2.IMREAD_COLOR)
    img = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.
    gt = torch.stack([img[:, y:y + 32, x:x + 32] for y, x in ((40, 40), (40, 150), (150, 40), (150, 150))])
    lq = torch.nn.functional.interpolate(gt, scale_factor=0.5, mode='bicubic', antialias=True).clamp(0, 1)
    return lq, gt


@pytest.mark.parametrize('variant', ['DRN', 'DRN+'])
def test_overfit_fixed_batch_through_basicsr(variant, fixed_batch):
    """50 BasicSR SRModel iterations on one fixed batch cut the L1 loss by >= 30%. Narrow and shallow (kwargs) so
    the whole structure, entry conv of DRN+ included, trains in seconds; the lr is 10x the paper's to see it in 50."""
    from basicsr.models import build_model

    torch.manual_seed(0)
    rdb_feat = {'DRN': 16, 'DRN+': 32}[variant]
    network_g = {'type': 'DRN', 'upscale': 2, 'variant': variant, 'num_feat': 16, 'rdb_feat': rdb_feat,
                 'num_rdg': 2, 'num_rdb': 2, 'num_rd': 2, 'distill_ch': 4}
    model = build_model(_sr_model_opt(network_g))
    lq, gt = fixed_batch
    losses = []
    for it in range(1, 51):
        model.feed_data({'lq': lq, 'gt': gt})
        model.optimize_parameters(it)
        losses.append(model.log_dict['l_pix'])
    assert losses[-1] <= 0.7 * losses[0], (losses[0], losses[-1])
    assert model.net_g.variant == variant


@pytest.mark.parametrize('name', ['train_DRN_x2', 'train_DRN_x3', 'train_DRN_x4', 'train_DRNplus_x4',
                                  'test_DRN_x2', 'test_DRN_x3', 'test_DRN_x4', 'test_DRNplus_x4'])
def test_option_files(name):
    """The shipped YAMLs build their network and keep the paper's recipe: LR patch 48, Y metrics shaved by scale."""
    import yaml

    from basicsr.utils.options import ordered_yaml

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'options', f'{name}.yml')) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    scale = opt['scale']
    net_opt = dict(opt['network_g'])
    assert net_opt.pop('type') == 'DRN' and net_opt['upscale'] == scale
    assert net_opt['variant'] == ('DRN+' if 'plus' in name else 'DRN')
    assert count_parameters(_meta_build(**net_opt)) == PARAMS[(net_opt['variant'], scale)]
    for metric in opt['val']['metrics'].values():
        assert metric['crop_border'] == scale and metric['test_y_channel']
    if name.startswith('train'):
        train = opt['datasets']['train']
        assert train['gt_size'] == 48 * scale and train['batch_size_per_gpu'] == 16
        assert opt['train']['optim_g']['betas'] == [0.9, 0.999] and opt['train']['optim_g']['eps'] == 1e-8
        assert opt['train']['scheduler']['milestones'][0] == 200000 and opt['train']['pixel_opt']['type'] == 'L1Loss'
    else:
        # the paper's Table 3 sets, plus Urban100/Manga109 (skipped by lwsr-test when absent)
        assert [d['name'] for d in opt['datasets'].values()] == ['Set5', 'Set14', 'BSD100', 'Urban100', 'Manga109']
        assert all(d['filename_tmpl'] == f'{{}}x{scale}' for d in opt['datasets'].values())


def test_elu_training_path_matches_torch():
    """blocks.ELU in training (vectorised exp forward, elu_backward from the output) equals F.elu and its gradient."""
    from lwsr_plugin.archs.blocks import ELU, _ELUTrain
    x = torch.randn(3, 4, 5, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _ELUTrain.apply(t, 0.2), (x, ))
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn_like(x)
    ours = ELU(0.2, inplace=True)(x)
    ref = torch.nn.functional.elu(x, 0.2)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0], atol=1e-6)
