"""Fast inference forms of every arch: the module's fp32 output (max abs diff <= 1e-5 on [0, 1] images) on
real images, with the official weights where they exist, in both memory layouts and batch sizes; bf16 within
0.02 dB Set5 Y-PSNR of fp32; the shared mechanisms (fused conv, sub-pixel deconv, phase-major shuffle, ELU); the
CUDA-side logic that CPU can exercise (graph replay decisions, fixed tile batches, device/precision/compile checks)
and the one-line errors of lwsr-upscale."""
import copy
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from basicsr.metrics import calculate_psnr

from conftest import bf16_upscaler
from lwsr_plugin.cli import upscale as upscale_cli
from lwsr_plugin.convert.caffe_idn import convert_idn_caffemodel
from lwsr_plugin.fast import FORMS, FastDRN, FastForm, FastIDN, FastIMDN, FastIMDN_RTC, FastSLWSR, fast_inference_net
from lwsr_plugin.fast.graphs import GraphForward
from lwsr_plugin.ops import device as fast_cuda
from lwsr_plugin.fast.kernels import (FastConv, Scratch, ShuffleConv, deconv_as_subpixel, elu_, elu_add_, merge_convs,
                                  split_conv)
from lwsr_plugin.inference import InferenceError, Upscaler, load_model, network_options, tiled_forward

SET5 = ['baby', 'bird', 'butterfly', 'head', 'woman']
TOL = 1e-5  # identical fp32 output


def _official(shared, case):
    """(net, name) for the cases with released weights; random weights (perturbed biases) otherwise."""
    arch, kwargs, scale, ckpt = case
    if ckpt and ckpt.endswith('.caffemodel'):
        state, extra = convert_idn_caffemodel(shared('anchors', 'idn', ckpt), scale)
        net = load_model(network_options(arch, scale, dict(kwargs, **extra)))
        net.load_state_dict(state, strict=True)
        return net.eval()
    if ckpt:
        folder = 'slwsr' if arch == 'SLWSR' else os.path.join('imdn', 'checkpoints')
        return load_model(network_options(arch, scale, kwargs), shared('anchors', *folder.split(os.sep), ckpt))
    torch.manual_seed(0)
    net = load_model(network_options(arch, scale, kwargs))
    with torch.no_grad():  # zero-initialised biases would hide a wrong bias path
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return net


CASES = {
    'IMDN_x2': ('IMDN', {}, 2, 'IMDN_x2.pth'),
    'IMDN_x3': ('IMDN', {}, 3, 'IMDN_x3.pth'),
    'IMDN_RTC': ('IMDN_RTC', {}, 2, 'model_RTC.pth'),
    'IDN_x2': ('IDN', {}, 2, 'IDN_x2.caffemodel'),
    'IDN_x3': ('IDN', {}, 3, 'IDN_x3.caffemodel'),
    'IDN_x4': ('IDN', {}, 4, 'IDN_x4.caffemodel'),
    'DRN_x4': ('DRN', {'num_rdg': 2, 'num_rdb': 2}, 4, None),
    'DRN+_x3': ('DRN', {'variant': 'DRN+', 'num_rdg': 1, 'num_rdb': 2, 'group_fusion': False}, 3, None),
    'SLWSR32_x4': ('SLWSR', {'variant': 'slwsr32'}, 4, 'slwsr32_x4_repo_1epoch_model_best.pt'),
    'SLWSR16_x3': ('SLWSR', {'variant': 'slwsr16', 'res_scale': 0.5,
                            'compress': ['feat7_1', 'feat8_1', 'feat9_1', 'feat10_1']}, 3, None),
    'SLWSR32C_x2': ('SLWSR', {'variant': 'slwsr32c'}, 2, None),
    'SLWSR_shallow_x2': ('SLWSR', {'variant': 'slwsr32_shallow', 'act_removal': 'keep_1/2'}, 2, None),
}


@pytest.fixture(scope='module')
def lr_image(datasets_dir):
    def load(name='butterfly', scale=4, y=False):
        bgr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', f'X{scale}', f'{name}x{scale}.png'))
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))).float() / 255
        if y:
            rgb = (rgb * torch.tensor([65.481, 128.553, 24.966]).view(3, 1, 1)).sum(0, keepdim=True).add_(16) / 255
        return rgb[None]

    return load


@pytest.mark.parametrize('case', sorted(CASES))
def test_same_output_as_module(case, shared, lr_image):
    arch, _, scale, _ = CASES[case]
    net = _official(shared, CASES[case])
    img = lr_image('butterfly', scale, y=arch == 'IDN')[..., :30, :38]
    x = torch.cat([img, img.flip(-1)])
    with torch.no_grad():
        ref = net(x)
    fast = fast_inference_net(copy.deepcopy(net))
    assert isinstance(fast, FastForm) and type(fast) in FORMS
    for fmt in (torch.channels_last, torch.contiguous_format):
        fast = fast.to(memory_format=fmt)
        for batch in (x[:1], x):  # reused buffers of two shapes
            out = fast(batch.contiguous(memory_format=fmt))
            assert out.shape == ref[:len(batch)].shape
            assert (out - ref[:len(batch)]).abs().max().item() <= TOL, (case, fmt, len(batch))
    with torch.no_grad():  # buffers cached under inference mode still serve a later no_grad caller
        assert (fast(x[:1]) - ref[:1]).abs().max().item() <= TOL
    assert fast_inference_net(fast) is fast


def test_dispatch_and_upscaler_paths():
    nets = {'IMDN': FastIMDN, 'IMDN_AS': FastIMDN, 'IMDN_RTC': FastIMDN_RTC, 'IDN': FastIDN, 'DRN': FastDRN,
            'SLWSR': FastSLWSR}
    for arch, form in nets.items():
        kwargs = {'num_rdg': 1, 'num_rdb': 1} if arch == 'DRN' else {}
        net = load_model(network_options(arch, None if arch == 'IMDN_AS' else 2, kwargs))
        assert type(Upscaler(copy.deepcopy(net)).net) is form
        assert type(Upscaler(copy.deepcopy(net), fast=False).net) is type(net)
    conv = torch.nn.Conv2d(3, 3, 3)
    assert fast_inference_net(conv) is conv  # anything without a form passes through
    with pytest.raises(TypeError, match='FastIDN takes IDN, got Conv2d'):
        FastIDN(conv)


@pytest.mark.parametrize('case', ['IDN_x2', 'IDN_x3', 'IDN_x4', 'IMDN_x2', 'IMDN_x3', 'IMDN_RTC', 'SLWSR32_x4'])
def test_bf16_set5_psnr_within_002_db_of_fp32(case, shared, datasets_dir):
    """bf16 + channels_last keeps Set5 Y-PSNR within 0.02 dB of fp32 (every released weight set; IMDN x4
    in test_fast_imdn; DRN and s-LWSR16/64 have none)."""
    arch, _, scale, _ = CASES[case]
    net = _official(shared, CASES[case])
    runs = {'fp32': Upscaler(copy.deepcopy(net)), 'bf16': bf16_upscaler(copy.deepcopy(net))}
    psnr = {p: [] for p in runs}
    for name in SET5:
        lr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', f'X{scale}', f'{name}x{scale}.png'))
        hr = cv2.imread(os.path.join(datasets_dir, 'Set5', 'HR', f'{name}.png'))
        hr = hr[:lr.shape[0] * scale, :lr.shape[1] * scale]
        for p, up in runs.items():
            psnr[p].append(calculate_psnr(up.upscale(lr), hr, crop_border=scale, test_y_channel=True))
    fp32, bf16 = np.mean(psnr['fp32']), np.mean(psnr['bf16'])
    assert fp32 > 28, fp32  # a real model, not noise
    print(f'{case}: Set5 Y-PSNR fp32 {fp32:.4f}, bf16 {bf16:.4f} ({bf16 - fp32:+.4f} dB)')
    assert abs(bf16 - fp32) <= 0.02, (fp32, bf16)


# ------------------------------------------------------------------------------------------------ shared mechanisms
@pytest.mark.parametrize('k, s, p', [(17, 2, 7), (17, 3, 6), (17, 4, 5), (4, 2, 1), (5, 3, 0), (3, 2, 1)])
def test_deconv_as_subpixel(k, s, p):
    torch.manual_seed(k + s)
    deconv = torch.nn.ConvTranspose2d(5, 2, k, stride=s, padding=p)
    x = torch.rand(1, 5, 9, 11)
    with torch.no_grad():
        ref = deconv(x)
    sub = ShuffleConv(deconv_as_subpixel(deconv), s)
    with torch.inference_mode():
        out = sub(x)
    h, w = min(ref.shape[-2], out.shape[-2]), min(ref.shape[-1], out.shape[-1])
    assert out.shape[-2:] == (9 * s, 11 * s)
    assert (out[..., :h, :w] - ref[..., :h, :w]).abs().max().item() <= 1e-5


def test_fast_conv_paths_agree():
    """oneDNN path (packed weights, fused tails) == plain F.conv2d path, in every mode; slices as accumulators."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 6, 3, padding=1)
    x = torch.rand(2, 8, 10, 12).contiguous(memory_format=torch.channels_last)
    other = torch.rand(2, 6, 10, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = conv(x)
    for act, tail in ((None, lambda t: t), ('relu', F.relu), ('lrelu', lambda t: F.leaky_relu(t, 0.05))):
        fc = FastConv.from_conv(conv, act, 0.05)
        with torch.inference_mode():
            assert (fc(x) - tail(ref)).abs().max().item() <= 1e-6
            assert (fc(x, other) - tail(ref + other)).abs().max().item() <= 1e-6
            buf = torch.zeros(2, 10, 10, 12).contiguous(memory_format=torch.channels_last)
            buf[:, 2:8] = other
            fc(x, buf[:, 2:8], accumulate=True)
            assert (buf[:, 2:8] - tail(ref + other)).abs().max().item() <= 1e-6 and buf[:, :2].abs().sum() == 0
            fallback = fc.double()  # float64: the plain F.conv2d path
            assert (fallback(x.double()) - tail(ref).double()).abs().max().item() <= 1e-6
    fc = FastConv.from_conv(conv)
    with torch.inference_mode():
        fc(x)
    clone = copy.deepcopy(fc).to(torch.bfloat16)  # packed oneDNN weights are neither copied nor kept after .to()
    with torch.inference_mode():
        assert (clone(x.bfloat16()).float() - ref).abs().max().item() <= 0.1
    with pytest.raises(TypeError, match='move the fast form with .to'):
        fc(x.bfloat16())
    parts = split_conv(conv, (2, 4))
    merged = merge_convs([torch.nn.Conv2d(8, 2, 3, padding=1), torch.nn.Conv2d(8, 3, 3, padding=1)])
    with torch.inference_mode():
        assert (torch.cat([parts[0](x), parts[1](x)], 1) - ref).abs().max().item() <= 1e-6
        assert merged(x).shape[1] == 5
    with pytest.raises(ValueError, match='do not add up'):
        split_conv(conv, (2, 2))


@pytest.mark.parametrize('r, k', [(2, 3), (3, 3), (4, 1), (2, 5)])
def test_conv_after_shuffle_runs_on_the_phases(r, k):
    """ShuffleConv(up, r, then=last) == last(pixel_shuffle(up(x), r)), with and without reused buffers, twice (the
    second call reuses them), both layouts."""
    torch.manual_seed(r)
    up, last = torch.nn.Conv2d(8, 5 * r * r, 3, padding=1), torch.nn.Conv2d(5, 3, k, padding=k // 2)
    x = torch.rand(2, 8, 6, 7)
    ref = last(F.pixel_shuffle(up(x), r))
    sc = ShuffleConv(FastConv.from_conv(up), r, FastConv.from_conv(last))
    for fmt in (torch.channels_last, torch.contiguous_format):
        for scratch in (None, Scratch()):
            with torch.inference_mode():
                outs = [sc(x.contiguous(memory_format=fmt), scratch=scratch) for _ in range(2)]
            for out in outs:
                assert out.shape == ref.shape and (out - ref).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match='stride-1'):
        ShuffleConv(FastConv.from_conv(up), r, FastConv.from_conv(torch.nn.Conv2d(5, 3, 3, stride=2)))


def test_shuffle_conv_and_elu():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 12, 3, padding=1)
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.rand(2, 4, 5, 7).contiguous(memory_format=fmt)
        with torch.inference_mode():
            out = ShuffleConv(FastConv.from_conv(conv), 2)(x)
            assert torch.equal(out, F.pixel_shuffle(conv(x), 2)) or \
                (out - F.pixel_shuffle(conv(x), 2)).abs().max().item() <= 1e-6
    x = torch.cat([torch.linspace(-300, 5, 1000), torch.tensor([-1e30, 0.0, 1e-30])]).view(1, 1, 1, -1)
    flat = torch.empty(x.numel())
    for scratch in (None, flat):
        assert (elu_(x.clone(), 0.2, scratch) - F.elu(x, 0.2)).abs().max().item() <= 1e-7
    # dst += elu(y): eager outside inference mode, the compiled kernel inside it (where a compiler is present)
    y = (torch.randn(1, 8, 5, 7) * 4).contiguous(memory_format=torch.channels_last)
    dst = torch.randn(1, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    for mode in (False, True):
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 0.04)):
            with torch.inference_mode(mode):
                got = elu_add_(dst.to(dtype, copy=True), y.to(dtype, copy=True), 0.2, flat.to(dtype))
            assert got.dtype == dtype and (got.float() - (dst + F.elu(y, 0.2))).abs().max().item() <= tol


def test_reused_output_shape_and_buffer(monkeypatch):
    """FastConv.reused: where a fresh map would page-fault (threshold lowered to 0 here), the conv's output (shape
    from stride, padding and dilation) in a buffer reused on the next call; not for a map under the threshold."""
    from lwsr_plugin.fast import kernels as ops
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(2, 4, 11, 9).contiguous(memory_format=torch.channels_last)
    fc, scratch = FastConv.from_conv(conv), Scratch()
    monkeypatch.setattr(ops, '_memory_kept', False)
    with torch.inference_mode():
        assert not ops.fresh_faults(x, 2**20)
        monkeypatch.setattr(ops, '_MMAP_THRESHOLD', 0)
        out = fc.reused(x, scratch, 'a')
        assert (out - conv(x)).abs().max().item() <= 1e-6 and scratch.nbytes() == out.numel() * 4
        assert fc.reused(x, scratch, 'a').data_ptr() == out.data_ptr()


# reused buffers per step: DRN+'s entry (256 channels), c1 / c2 (64) and c3 (the RDB's 288-channel width); IDN's
# 64-channel block outputs among its maps (the upsamplers' maps are reused buffers either way)
@pytest.mark.parametrize('case, widths', [('DRN+_x3', {256, 64, 288}), ('IDN_x2', {64, 48, 80})])
def test_reused_maps_where_fresh_ones_would_fault(monkeypatch, shared, lr_image, case, widths):
    """Where fresh maps would page-fault (threshold lowered to 0: at 720p, DRN+'s 288-channel maps, IDN x2's
    64-channel ones), the forms write their step outputs into reused buffers, with the same output; not where freed
    memory is kept."""
    from lwsr_plugin.fast import kernels as ops
    monkeypatch.setattr(ops, '_MMAP_THRESHOLD', 0)
    intos = []
    real_into = FastConv.into
    monkeypatch.setattr(FastConv, 'into', lambda self, x, out: intos.append(out.shape) or real_into(self, x, out))
    arch, _, scale, _ = CASES[case]
    net = _official(shared, CASES[case])
    x = lr_image('butterfly', scale, y=arch == 'IDN')[..., :20, :26]
    with torch.no_grad():
        ref = net(x)
    fast = fast_inference_net(copy.deepcopy(net)).to(memory_format=torch.channels_last)
    for kept in (False, True, False):
        monkeypatch.setattr(ops, '_memory_kept', kept)
        intos.clear()
        out = fast(x.contiguous(memory_format=torch.channels_last))
        assert (out - ref).abs().max().item() <= TOL, kept
        assert ({s[1] for s in intos} & widths) == (set() if kept else widths), kept


def test_keep_freed_memory_in_a_fresh_process():
    """glibc's mallopt applies (Linux), and LWSR_KEEP_MEMORY=0 turns it off; in a subprocess: it is process-wide."""
    code = 'from lwsr_plugin.fast.kernels import keep_freed_memory; print(keep_freed_memory())'
    for flag, expected in (('1', str(sys.platform.startswith('linux'))), ('0', 'False')):
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, LWSR_KEEP_MEMORY=flag)).stdout.strip()
        assert out == expected, (flag, out)


# ------------------------------------------------------------------------------------------- GPU logic, on the CPU
def test_graph_forward_decisions(monkeypatch):
    calls = []

    def fn(t):
        calls.append(t.shape)
        return t * 2

    g = GraphForward(fn)
    x = torch.rand(1, 3, 4, 4)
    assert not g.usable(x) and torch.equal(g(x), x * 2) and not g.graphs  # CPU input: eager
    monkeypatch.setattr(GraphForward, 'usable', lambda self, t: self.failed is None)

    class Replay:  # what a captured graph does: recompute the static output from the static input
        def __init__(self, static_in, static_out):
            self.static_in, self.static_out = static_in, static_out

        def replay(self):
            self.static_out.copy_(fn(self.static_in))

    def capture(self, t):
        static_in = t.clone()
        static_out = fn(static_in)
        return static_in, static_out, Replay(static_in, static_out)

    monkeypatch.setattr(GraphForward, '_capture', capture)
    g = GraphForward(fn, max_graphs=1)
    assert torch.equal(g(x), x * 2) and not g.graphs  # a shape seen once runs eagerly: one-off sizes are not captured
    out1 = g(x)  # seen twice: captured
    out2 = g(x + 1)  # replayed with the new input copied in; the result is a copy, not the static buffer
    assert torch.equal(out1, x * 2) and torch.equal(out2, (x + 1) * 2) and len(g.graphs) == 1
    ones = torch.ones(1, 3, 2, 2)
    assert torch.equal(g(ones), ones * 2) and torch.equal(g(ones), ones * 2)  # past max_graphs: eager
    assert len(g.graphs) == 1

    def broken(self, t):
        raise RuntimeError('operation not permitted when stream is capturing')

    monkeypatch.setattr(GraphForward, '_capture', broken)
    g = GraphForward(fn)
    assert torch.equal(g(x), x * 2) and torch.equal(g(x), x * 2) and g.failed is not None and not g.usable(x)


def test_fixed_tile_batch_same_output():
    """Tiles padded to one batch shape (one CUDA graph for all) give the unpadded result."""
    torch.manual_seed(0)
    net = load_model(network_options('IMDN_RTC', 2))
    fast = fast_inference_net(net)
    x = torch.rand(1, 3, 25, 27)  # 3 x 3 tiles of 12, batched within a band (a row of tiles): 3, 3 and 3
    shapes = []

    def forward(t):
        shapes.append(t.shape[0])
        return fast(t)

    a = tiled_forward(forward, x, 2, 12, 4, batch=4)
    n_plain = list(shapes)
    shapes.clear()
    b = tiled_forward(forward, x, 2, 12, 4, batch=4, fixed_batch=True, out_device='cpu')
    assert torch.equal(a, b)
    assert n_plain == [3, 3, 3] and shapes == [4, 4, 4]


def test_runtime_checks(monkeypatch):
    import logging
    warned = []
    monkeypatch.setattr(logging.getLogger('lwsr_plugin'), 'warning', warned.append)
    monkeypatch.setattr(fast_cuda, 'bf16_native', lambda device: True)
    assert fast_cuda.check_runtime('cpu', 'bf16').type == 'cpu' and not warned
    monkeypatch.setattr(fast_cuda, 'bf16_native', lambda device: False)  # e.g. an AVX2 CPU: slower, not refused
    assert fast_cuda.check_runtime('cpu', 'bf16').type == 'cpu'
    assert len(warned) == 1 and re.match('--bf16: this CPU has no native bf16 .*; drop --bf16', warned[0]), warned
    assert fast_cuda.limitation(torch.device('cpu'), 'bf16').slow
    assert not fast_cuda.limitation(torch.device('cpu'), 'fp16').slow
    with pytest.raises(fast_cuda.RuntimeProblem, match='--half: .*use --bf16 on CPU'):
        fast_cuda.check_runtime('cpu', 'fp16')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert fast_cuda.check_runtime('cuda:1').index == 1
    with pytest.raises(fast_cuda.RuntimeProblem, match=r'--device cuda:2: this machine has 2 CUDA device\(s\) '
                                                        r'\(cuda:0 to cuda:1\)'):
        fast_cuda.check_runtime('cuda:2')
    monkeypatch.setattr(fast_cuda.shutil, 'which', lambda name: None)
    with pytest.raises(fast_cuda.RuntimeProblem, match='--compile: no C\\+\\+ compiler .*; drop --compile'):
        fast_cuda.check_runtime('cpu', compile=True)
    with pytest.raises(InferenceError, match='--tile 4 is smaller than --tile-overlap 8'):
        Upscaler(torch.nn.Conv2d(3, 3, 3), tile=4, tile_overlap=8)


@pytest.mark.parametrize('extra, message', [
    (['--half'], '--half: float16 inference needs a CUDA device'),
    (['--device', 'cuda:7'], '--device cuda:7:'),
    (['--tile', '4', '--tile-overlap', '8'], '--tile 4 is smaller than --tile-overlap 8'),
    (['--device', 'mps'], '--device mps: only cpu and cuda devices are supported'),
    (['--device', 'gpu0'], '--device gpu0: not a device name'),
])
def test_upscale_bad_runtime_flags(extra, message, tmp_path, capsys, monkeypatch):
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    code = upscale_cli.main([str(src), '-o', str(tmp_path / 'out'), '--arch', 'IMDN_RTC', '--scale', '2'] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_upscale_bf16_on_a_cpu_without_native_bf16_warns_and_runs(tmp_path, capsys, monkeypatch):
    """bf16 there runs, only slower than fp32 (the policy of ``ops.device.limitation``, as for ``train.amp: bf16``):
    one line names the flag and the fix, and the images are written."""
    monkeypatch.setattr(fast_cuda, 'bf16_native', lambda device: device.type == 'cuda')  # e.g. an AVX2 CPU
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    code = upscale_cli.main([str(src), '-o', str(tmp_path / 'out'), '--arch', 'IMDN_RTC', '--scale', '2', '--bf16',
                             '--device', 'cpu'])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith('lwsr-upscale:')]
    assert code == 0 and os.listdir(tmp_path / 'out') == ['a.png'], err
    assert err == ['lwsr-upscale: --bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs several '
                   'times slower than fp32 here; drop --bf16 (fp32 is the fast path on this CPU).'], err


def test_cpu_name_names_the_model_the_isa_and_amx(monkeypatch):
    """The benchmark's and the report's machine line: /proc/cpuinfo's model name, the ISA torch's kernels use and
    '+ AMX' only where the CPU has AMX tiles (oneDNN's bf16 convs run there, several times faster than fp32)."""
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda amx=amx: amx)
        name = fast_cuda.cpu_name()
        assert name.endswith('(AVX512 + AMX)' if amx else '(AVX512)'), name
    if os.path.isfile('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), None)
        assert model is None or name.startswith(model + ' ('), (name, model)


@pytest.mark.parametrize('val', [{}, {'tile': 10, 'tile_overlap': 4, 'self_ensemble': True}])
def test_lwsr_model_test_runs_the_fast_form(val, monkeypatch):
    """``LWSRModel.test`` (validation and lwsr-test) runs the arch's fast form, with the module's output."""
    from basicsr.models import build_model
    opt = {'model_type': 'LWSRModel', 'is_train': False, 'dist': False, 'num_gpu': 0, 'scale': 2, 'rank': 0,
           'network_g': {'type': 'DRN', 'num_rdg': 1, 'num_rdb': 2, 'upscale': 2},
           'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}, 'val': val}
    model = build_model(opt)
    used = []
    real = FastForm.forward
    monkeypatch.setattr(FastForm, 'forward', lambda self, x: used.append(type(self).__name__) or real(self, x))
    x = torch.rand(1, 3, 17, 23)
    model.feed_data({'lq': x})
    model.test()
    assert used and set(used) == {'FastDRN'}
    with torch.no_grad():  # the module itself through the same tiling / ensemble
        ref = model._inference(model.net_g.eval()).float()
    assert (model.output - ref).abs().max().item() <= TOL
