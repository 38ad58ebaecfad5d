"""Tiled upscaling streams into the 8/16-bit output: peak memory bounded by the output (a scaled-down measurement of
``scripts/benchmark_upscale_memory.py``), the same bytes as the tensor path and the whole-image path for every image
kind, and a progress bar that counts tiles."""
import os
import re
import subprocess
import textwrap

import cv2
import numpy as np
import pytest
import torch

from _utils import PY
from lwsr_plugin.cli import upscale as upscale_cli
from lwsr_plugin.convert.caffe_idn import convert_idn_caffemodel
from lwsr_plugin.inference import Upscaler, load_model, network_options

# a small x4 net of IMDN's family: its attention layers make --tile-stats image run two passes
SMALL_FEAT = 16
SMALL = ['--arch', 'IMDN', '--scale', '4', '--arch-kwarg', f'num_feat={SMALL_FEAT}', '--arch-kwarg', 'num_block=1']
MIB = 2**20
# peak RSS of one command varies between runs here by up to ~25 MiB (shared library pages): twice that
SPREAD_MIB = 48

PEAK_SCRIPT = textwrap.dedent('''
    import resource, sys
    from lwsr_plugin.cli.upscale import main
    code = main(sys.argv[1:])
    print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'exit', code)
''')


def _peak_mib(args, cwd):
    """Peak RSS (MiB) of a fresh process running ``lwsr-upscale args``, read when the command returns (the
    interpreter's own teardown after it is not the command's)."""
    proc = subprocess.run([PY, '-c', PEAK_SCRIPT] + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    match = re.search(r'peak_rss_kib (\d+) exit 0', proc.stdout)
    assert match, proc.stdout + proc.stderr[-3000:]
    return int(match.group(1)) / 1024


@pytest.fixture(scope='module')
def photo(datasets_dir):
    return cv2.imread(os.path.join(datasets_dir, 'Urban100', 'HR', 'img_002.png'))


@pytest.mark.slow
def test_peak_memory_bounded_by_output(tmp_path, photo):
    """A 1000x750 photo at x4 (12 MP out), tiled, both passes: peak RSS <= the same command on a strip of the photo
    one band of tiles tall (torch, BasicSR, the net, one band of windows: the fixed part) + 4 bytes per output
    pixel + the run-to-run spread of the fixed part. Measured: strip 909-935 MiB, photo 943-968 MiB (its 8-bit
    output alone is 34 MiB); with whole-output float buffers, as before streaming, the photo took 1174-1178 MiB."""
    tile, overlap = 128, 8
    big = cv2.resize(photo, (1000, 750), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / 'big.png'), big)
    cv2.imwrite(str(tmp_path / 'strip.png'), big[:tile + 2 * overlap])  # windows of the photo's size, one band
    common = SMALL + ['--tile', str(tile), '--tile-overlap', str(overlap), '--tile-batch', '4', '--device', 'cpu',
                      '--overwrite']
    strip = _peak_mib([str(tmp_path / 'strip.png'), '-o', str(tmp_path / 'a')] + common, str(tmp_path))
    peak = _peak_mib([str(tmp_path / 'big.png'), '-o', str(tmp_path / 'b')] + common, str(tmp_path))
    assert cv2.imread(str(tmp_path / 'b' / 'big.png')).shape == (3000, 4000, 3)
    bound = strip + 4 * 4000 * 3000 / MIB + SPREAD_MIB
    print(f'one band {strip:.0f} MiB, photo {peak:.0f} MiB, bound {bound:.0f} MiB')
    assert peak <= bound, (strip, peak, bound)


def _quantized(out):
    """Float planes in [0, 1] -> uint8, as ``Upscaler.upscale`` rounds them."""
    out = np.multiply(out, 255, dtype=np.float32)
    np.round(out, out=out)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


@pytest.mark.parametrize('tile_stats', ['image', 'tile'])
def test_streaming_equals_tensor_output(shared, datasets_dir, tile_stats):
    """The official IMDN x4, fp32, on a real photo cut into 4 x 5 tiles (a lone last window in each band): the
    streamed image equals the tensor path's output of the same tiles, byte for byte."""
    net = load_model(network_options('IMDN', 4), shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'))
    up = Upscaler(net, tile=32, tile_overlap=8, tile_batch=4, tile_stats=tile_stats)
    img = cv2.imread(os.path.join(datasets_dir, 'Set14', 'HR', 'ppt3.png'))[200:300, 150:300]
    assert up.streams(img.shape[:2])
    streamed = up.upscale(img)
    x = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / 255)[None]
    tensor = _quantized(up.run_tensor(x)[0].numpy().transpose(1, 2, 0)[..., ::-1])
    assert streamed.shape == (400, 600, 3) and streamed.dtype == np.uint8
    assert np.array_equal(streamed, tensor)


def test_streaming_equals_whole_image_path_for_every_kind(shared, datasets_dir):
    """Grey, RGBA and 16-bit images, and a Y-only model (Cb/Cr and alpha upsampled per core, 3 px of context): the
    same bytes streamed as through the whole-image path with the same tiles."""
    img = cv2.imread(os.path.join(datasets_dir, 'Set14', 'HR', 'zebra.png'))[100:160, 150:230]
    rgba16 = np.concatenate([img, img[..., :1]], axis=2).astype(np.uint16) * 257
    imdn = load_model(network_options('IMDN', 4), shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'))
    state, kwargs = convert_idn_caffemodel(shared('anchors', 'idn', 'IDN_x4.caffemodel'), 4)
    idn = load_model(network_options('IDN', 4, kwargs))
    idn.load_state_dict(state)
    cases = [(imdn, img[..., 1]), (imdn, rgba16), (idn, img), (idn, rgba16)]
    for net, image in cases:
        up = Upscaler(net, tile=24, tile_overlap=6, tile_batch=3)
        assert up.streams(image.shape[:2])
        streamed = up.upscale(image)
        up.streams = lambda *args: False  # the whole-image path: one float output, converted at the end
        whole = up.upscale(image)
        assert streamed.dtype == whole.dtype == image.dtype and np.array_equal(streamed, whole), type(net).__name__


def test_progress_counts_tiles(tmp_path, datasets_dir, capsys, monkeypatch):
    """``progress`` gets every window forward, both passes; the command shows one bar of tiles per tiled image,
    asked for (--tile) or chosen because the image is too large for one pass."""
    lr = cv2.imread(os.path.join(datasets_dir, 'Set14', 'HR', 'comic.png'))
    up = Upscaler(load_model(network_options('IMDN', 4, {'num_feat': SMALL_FEAT, 'num_block': 1})), tile=16)
    counted = []
    up.upscale(lr[:40, :50], progress=counted.append)
    assert sum(counted) == up.tile_forwards((40, 50)) == 3 * 4 * 2
    cv2.imwrite(str(tmp_path / 'small.png'), lr[:40, :50])
    args = [str(tmp_path / 'small.png'), '-o', str(tmp_path / 'out'), '--overwrite'] + SMALL
    assert upscale_cli.main(args + ['--tile', '16']) == 0
    assert re.search(r'small\.png: +0%.*0/24 .*tile/s', capsys.readouterr().err)
    assert upscale_cli.main(args + ['--tile', '16', '--tile-stats', 'tile']) == 0
    assert re.search(r'0/12 .*tile/s', capsys.readouterr().err)
    assert upscale_cli.main(args) == 0  # untiled: no bar of tiles
    assert 'tile/s' not in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / 'large.png'), lr[:300, :200])
    monkeypatch.setattr(upscale_cli, 'memory_budget', lambda device: 0)  # as if the image did not fit in memory
    args[0] = str(tmp_path / 'large.png')
    assert upscale_cli.main(args) == 0
    err = capsys.readouterr().err
    assert 'tiling it (256 px tiles)' in err and re.search(r'large\.png: +0%.*0/4 .*tile/s', err)


def test_automatic_tile_batch_fits_the_window_not_a_count():
    """Without --tile-batch a CPU runs as many windows per forward as make 65536 LR px (one 272x272 window of a
    256 px tile, whose maps alone are ~220 MiB for IMDN x4 in fp32), at most 4; CUDA runs 4. The batch follows the
    tile the command picks for an image, and a given --tile-batch wins."""
    from lwsr_plugin.fast.tiling import auto_tile_batch
    assert [auto_tile_batch(t, 8) for t in (256, 128, 64, 16)] == [1, 3, 4, 4]
    assert auto_tile_batch(256, 8, 'cuda') == 4
    up = Upscaler(load_model(network_options('IMDN', 4, {'num_feat': SMALL_FEAT, 'num_block': 1})), tile=256)
    assert up.tile_batch == 1
    up.tile = 64
    assert up.tile_batch == 4
    assert Upscaler(up.net.net, tile=256, tile_batch=2).tile_batch == 2
    parser = upscale_cli.build_parser()
    assert parser.parse_args(['a.png', '-o', 'out']).tile_batch is None


def test_windows_per_forward_and_memory_released(datasets_dir):
    """A 256 px tiled image on a CPU: every forward holds one window (the progress sees 1 per call), and
    ``release_memory`` drops the fast form's window buffers. Windows batched otherwise sum in another order (oneDNN,
    the plain module as well): at most one level on a few pixels in a million."""
    img = cv2.imread(os.path.join(datasets_dir, 'Set14', 'HR', 'comic.png'))[:300, :250]  # 2 x 1 tiles of 256
    net = load_model(network_options('IMDN', 4, {'num_feat': SMALL_FEAT, 'num_block': 1}))
    up = Upscaler(net, tile=256, tile_stats='tile')
    calls = []
    one = up.upscale(img, progress=calls.append)
    assert calls == [1, 1]
    assert up.net.scratch.nbytes() > 0
    up.release_memory()
    assert up.net.scratch.nbytes() == 0
    two = Upscaler(net, tile=256, tile_batch=2, tile_stats='tile').upscale(img)
    diff = np.abs(one.astype(int) - two)
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 1e-4 * diff.size
