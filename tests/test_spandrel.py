"""spandrel / chaiNNer support (lwsr_plugin.spandrel_arches): every official checkpoint and every network file the
plugin writes opens through spandrel's ModelLoader as its plugin arch, giving the plugin module's output; other
archs' state dicts stay theirs."""
import ast
import sys

import cv2
import numpy as np
import pytest
import torch

spandrel = pytest.importorskip('spandrel', reason='spandrel is not installed: pip install "lwsr_plugin[spandrel]"')

import lwsr_plugin  # noqa: E402,F401  (registers the archs)
from basicsr.utils.color_util import rgb2ycbcr  # noqa: E402
from lwsr_plugin import spandrel_arches  # noqa: E402
from lwsr_plugin.archs.drn_arch import DRN  # noqa: E402
from lwsr_plugin.archs.idn_arch import IDN  # noqa: E402
from lwsr_plugin.archs.imdn_arch import IMDN, IMDN_AS, IMDN_RTC  # noqa: E402
from lwsr_plugin.archs.slwsr_arch import SLWSR  # noqa: E402
from lwsr_plugin.convert import caffe_idn  # noqa: E402
from lwsr_plugin.fileio import read_state_dict  # noqa: E402
from lwsr_plugin.models.lwsr_model import LWSRModel  # noqa: E402

OUR_IDS = {'IMDN', 'IMDN_AS', 'IMDN_RTC', 'IDN', 'DRN', 'SLWSR'}


@pytest.fixture(scope='module')
def loader():
    spandrel_arches.install()
    return spandrel.ModelLoader()


@pytest.fixture(scope='module')
def rgb(shared):
    """A 38x42 crop of Set5 baby x4 LR, RGB in [0, 1]: sides that are not multiples of 4 (IMDN_AS's own handling)."""
    img = cv2.imread(shared('datasets', 'Set5', 'LR_bicubic', 'X4', 'babyx4.png'))[40:78, 30:72, ::-1]
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope='module')
def luma(rgb):
    """The Y channel of the same crop (IDN's input)."""
    return torch.from_numpy(rgb2ycbcr(rgb[0].permute(1, 2, 0).numpy(), y_only=True))[None, None]


def reference(cls, kwargs, path, param_key='params_ema'):
    """The plugin module of ``cls(**kwargs)`` with the file's weights, read by the plugin's own reader."""
    net = cls(**kwargs)
    net.load_state_dict(read_state_dict(path, param_key)[0])
    return net.eval()


def max_diff(desc, net, x):
    """Max abs difference between the descriptor's output and the plugin module's (clamped as spandrel's is)."""
    with torch.no_grad():
        ref = net(x).clamp(0, 1)
    out = desc(x)
    assert out.shape == ref.shape
    return float((out - ref).abs().max())


def ours_detecting(state_dict):
    return [s.architecture.id for s in spandrel_arches.supports() if s.detect(state_dict)]


def plugin_save(folder, net, ema, save_format):
    """The network file ``LWSRModel`` writes at a checkpoint (``params`` and ``params_ema``) in ``save_format``."""
    model = LWSRModel.__new__(LWSRModel)  # save_network needs no data, optimiser or device set-up
    model.opt = {'path': {'models': str(folder)}, 'network_g': {'type': type(net).__name__}}
    model.save_format = save_format
    model.save_network([net, ema], 'net_g', 7, param_key=['params', 'params_ema'])
    return folder / f'net_g_7.{save_format}'


def seeded(make, seed):
    torch.manual_seed(seed)
    return make().eval()


# ------------------------------------------------------------------------------------------------- official releases
IMDN_RELEASES = [
    ('IMDN_x2.pth', 'IMDN', IMDN, dict(upscale=2), 2),
    ('IMDN_x3.pth', 'IMDN', IMDN, dict(upscale=3), 3),
    ('IMDN_x4.pth', 'IMDN', IMDN, dict(upscale=4), 4),
    ('IMDN_AS.pth', 'IMDN_AS', IMDN_AS, {}, 1),
    ('model_RTC.pth', 'IMDN_RTC', IMDN_RTC, {}, 2),
]


@pytest.mark.parametrize('name, arch_id, cls, kwargs, scale', IMDN_RELEASES, ids=[r[0] for r in IMDN_RELEASES])
def test_official_imdn(loader, shared, rgb, name, arch_id, cls, kwargs, scale):
    path = shared('anchors', 'imdn', 'checkpoints', name)  # plain state dicts, `module.` prefixes but in RTC
    desc = loader.load_from_file(path)
    assert (desc.architecture.id, desc.scale, desc.input_channels, desc.output_channels) == (arch_id, scale, 3, 3)
    assert desc.purpose == 'SR' and desc.tiling == (spandrel.ModelTiling.SUPPORTED if arch_id == 'IMDN_RTC' else
                                                    spandrel.ModelTiling.DISCOURAGED)
    assert ours_detecting(loader.load_state_dict_from_file(path)) == [arch_id]
    diff = max_diff(desc, reference(cls, kwargs, path), rgb)
    print(f'{name}: {arch_id} x{scale} max abs diff {diff:.2e}')
    assert diff <= 1e-5


def test_official_slwsr(loader, shared, rgb):
    path = shared('anchors', 'slwsr', 'slwsr32_x4_repo_1epoch_model_best.pt')  # mean-shift keys for the load hook
    desc = loader.load_from_file(path)
    assert (desc.architecture.id, desc.scale, desc.input_channels, desc.output_channels) == ('SLWSR', 4, 3, 3)
    assert desc.tags[:3] == ['slwsr32', '32nf', '26nb'] and 'act_removal measured' in desc.tags
    assert not any(t.startswith('act_removal=') for t in desc.tags)  # the release keeps all 26 ReLUs
    diff = max_diff(desc, reference(SLWSR, dict(num_feat=32), path), rgb)
    print(f'slwsr32_x4_repo_1epoch_model_best.pt: SLWSR x4 max abs diff {diff:.2e}')
    assert diff <= 1e-5


@pytest.mark.parametrize('name, scale', [('IDN_x2', 2), ('IDN_x3', 3), ('IDN_x4', 4), ('IDN_x4_mscoco', 4)])
def test_official_idn(loader, shared, luma, tmp_path, name, scale):
    path = str(tmp_path / f'{name}.pth')
    assert caffe_idn.main([shared('anchors', 'idn', f'{name}.caffemodel'), path, '--scale', str(scale)]) == 0
    desc = loader.load_from_file(path)
    assert (desc.architecture.id, desc.scale, desc.input_channels, desc.output_channels) == ('IDN', scale, 1, 1)
    assert desc.tags == ['Y', '64nf', '4nb', 'upscale measured']
    diff = max_diff(desc, reference(IDN, dict(upscale=scale), path, 'params'), luma)
    print(f'{name}.caffemodel (lwsr-convert-idn): IDN x{scale} max abs diff {diff:.2e}')
    assert diff <= 1e-5


def test_explicit_arguments_skip_the_measurement(loader, shared, tmp_path):
    path = str(tmp_path / 'IDN_x3.pth')
    caffe_idn.main([shared('anchors', 'idn', 'IDN_x3.caffemodel'), path])
    state = loader.load_state_dict_from_file(path)
    desc = spandrel.MAIN_REGISTRY['IDN'].architecture.load(state, upscale=2)
    assert desc.scale == 2 and 'upscale measured' not in desc.tags


def test_other_imdn_release_is_not_claimed(loader, shared):
    # IMDN_RTE (AIM 2019 energy track) has no plugin arch: no support may take it and fail in loading
    path = shared('anchors', 'imdn', 'checkpoints', 'model_RTE.pth')
    assert ours_detecting(loader.load_state_dict_from_file(path)) == []
    with pytest.raises(spandrel.UnsupportedModelError):
        loader.load_from_file(path)


# ---------------------------------------------------------------------------------------- what the plugin writes
PLUGIN_NETS = [
    ('IMDN', 3, lambda: IMDN(num_feat=32, num_block=2, upscale=3), ['32nf', '2nb']),
    ('IMDN_AS', 1, lambda: IMDN_AS(num_feat=32, num_block=2), ['any scale: input resized first', '32nf', '2nb']),
    ('IMDN_RTC', 4, lambda: IMDN_RTC(num_block=3, upscale=4), ['12nf', '3nb']),
    ('DRN', 2, lambda: DRN(num_rdg=2, num_rdb=2, upscale=2), ['DRN', '64nf', '64rdb', '2x2']),
    ('DRN', 3, lambda: DRN(variant='DRN+', num_rdg=1, num_rdb=2, num_rd=2, upscale=3), ['DRN+', '64nf', '256rdb', '1x2']),
    ('SLWSR', 2, lambda: SLWSR(variant='slwsr32_shallow', upscale=2), ['slwsr32_shallow', '32nf', '6nb']),
]


@pytest.mark.parametrize('save_format', ['pth', 'safetensors'])
@pytest.mark.parametrize('arch_id, scale, make, tags', PLUGIN_NETS,
                         ids=['IMDN', 'IMDN_AS', 'IMDN_RTC', 'DRN', 'DRN+', 'slwsr32_shallow'])
def test_plugin_checkpoint(loader, rgb, tmp_path, save_format, arch_id, scale, make, tags):
    net, ema = seeded(make, 0), seeded(make, 1)  # params and params_ema differ: spandrel's choice is params_ema
    path = plugin_save(tmp_path, net, ema, save_format)
    desc = loader.load_from_file(str(path))
    assert (desc.architecture.id, desc.scale, desc.input_channels, desc.output_channels) == (arch_id, scale, 3, 3)
    assert desc.tags == tags
    loaded = desc.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ema.state_dict().items())
    diff = max_diff(desc, ema, rgb)
    print(f'net_g_7.{save_format} ({tags[0]}): {arch_id} x{scale} max abs diff {diff:.2e}')
    assert diff <= 1e-5


@pytest.mark.parametrize('save_format', ['pth', 'safetensors'])
def test_plugin_checkpoints_of_trained_weights(loader, shared, rgb, luma, tmp_path, save_format):
    # IDN's scale and s-LWSR's activation removal are measured on the weights: trained ones (the releases, written
    # again by the plugin's writer; params random, params_ema the release)
    idn_path = str(tmp_path / 'IDN_x3.pth')
    caffe_idn.main([shared('anchors', 'idn', 'IDN_x3.caffemodel'), idn_path])
    slwsr_path = shared('anchors', 'slwsr', 'slwsr32_x4_repo_1epoch_model_best.pt')
    for cls, kwargs, path, x in ((IDN, dict(upscale=3), idn_path, luma), (SLWSR, dict(num_feat=32), slwsr_path, rgb)):
        trained = reference(cls, kwargs, path, 'params')
        folder = tmp_path / cls.__name__
        folder.mkdir()
        desc = loader.load_from_file(str(plugin_save(folder, seeded(lambda: cls(**kwargs), 0), trained,
                                                     save_format)))
        assert (desc.architecture.id, desc.scale) == (cls.__name__, kwargs.get('upscale', 4))
        diff = max_diff(desc, trained, x)
        print(f'net_g_7.{save_format} ({cls.__name__} release weights as params_ema): max abs diff {diff:.2e}')
        assert diff <= 1e-5


@pytest.mark.parametrize('variant, scale', [('slwsr16', 3), ('slwsr64', 2), ('slwsr32c', 4)])
def test_slwsr_variants(loader, rgb, tmp_path, variant, scale):
    net = seeded(lambda: SLWSR(variant=variant, upscale=scale), 0)
    path = plugin_save(tmp_path, net, net, 'pth')
    desc = loader.load_from_file(str(path))
    assert (desc.architecture.id, desc.scale, desc.tags[0]) == ('SLWSR', scale, variant)
    # random weights carry no activation signal: whichever set was measured, the output is that graph's
    act = 'official' if 'act_removal=official' in desc.tags else None
    diff = max_diff(desc, reference(SLWSR, dict(variant=variant, upscale=scale, act_removal=act), str(path)), rgb)
    print(f'net_g_7.pth ({variant}): SLWSR x{scale} act_removal={act} max abs diff {diff:.2e}')
    assert diff <= 1e-5
    state = loader.load_state_dict_from_file(str(path))
    for act in (None, 'official'):
        given = spandrel.MAIN_REGISTRY['SLWSR'].architecture.load(state, act_removal=act)
        assert 'act_removal measured' not in given.tags
        assert max_diff(given, reference(SLWSR, dict(variant=variant, upscale=scale, act_removal=act), str(path)),
                        rgb) <= 1e-5


def test_half_and_bfloat16(loader, shared, rgb):
    desc = loader.load_from_file(shared('anchors', 'imdn', 'checkpoints', 'model_RTC.pth'))
    ref = desc(rgb)
    for dtype, tol in ((torch.bfloat16, 0.03), (torch.float16, 0.005)):
        desc.to(dtype)
        assert float((desc(rgb.to(dtype)).float() - ref).abs().max()) <= tol
    desc.float()


# ------------------------------------------------------------------------------------------------- others' archs
def foreign_nets():
    """Small networks of spandrel's own archs, with the id spandrel detects them as."""
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.OmniSR import OmniSR
    from spandrel.architectures.PLKSR import RealPLKSR
    from spandrel.architectures.RCAN import RCAN
    from spandrel.architectures.SAFMN import SAFMN
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR
    return [
        ('ESRGAN', ESRGAN(num_filters=16, num_blocks=1, scale=4)),
        ('SPAN', SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2)),
        ('SwinIR', SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                          upsampler='pixelshuffledirect')),
        ('Compact', Compact(num_feat=16, num_conv=2, upscale=2)),
        ('PLKSR', RealPLKSR(dim=16, n_blocks=2, upscaling_factor=2)),
        ('RCAN', RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4)),  # EDSR-style, like s-LWSR
        ('SAFMN', SAFMN(dim=16, n_blocks=1, upscaling_factor=2)),
        ('OmniSR', OmniSR(num_feat=16, block_num=1, up_scale=2)),
    ]


def test_foreign_state_dicts_stay_theirs(loader):
    for arch_id, net in foreign_nets():
        state = net.state_dict()
        assert ours_detecting(state) == [], arch_id
        assert ours_detecting({f'params_ema.{k}': v for k, v in state.items()}) == [], arch_id
        assert loader.load_from_state_dict(state).architecture.id == arch_id


# ----------------------------------------------------------------------------------------------------- installing
def test_install_is_idempotent():
    registry = spandrel.ArchRegistry()
    added = spandrel_arches.install(registry)
    assert {s.architecture.id for s in added} == OUR_IDS == {s.architecture.id for s in registry}
    assert spandrel_arches.install(registry) == []
    spandrel_arches.install()
    spandrel_arches.install()
    assert OUR_IDS <= {s.architecture.id for s in spandrel.MAIN_REGISTRY}


def test_without_spandrel_install_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'spandrel', None)  # `import spandrel` raises ImportError
    with pytest.raises(ImportError) as err:
        spandrel_arches.install()
    assert '\n' not in str(err.value) and 'pip install "lwsr_plugin[spandrel]"' in str(err.value)


def test_module_imports_spandrel_and_torch_only_when_used():
    # nothing in the package imports the module, and at its top it imports the standard library only: importing it
    # without spandrel works, and install() says what to install
    tree = ast.parse(open(spandrel_arches.__file__, encoding='utf-8').read())
    top = {(node.module if isinstance(node, ast.ImportFrom) else alias.name).split('.')[0]
           for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert top <= {'functools', 're', 'typing'}
