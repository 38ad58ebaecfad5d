"""Inference for every registered arch: model loading, seam-free tiling, x8 self-ensemble, fast paths
(the fast inference form of every arch, channels_last, bf16/fp16, ``torch.compile``, CUDA graphs, pinned-memory
transfers) and image-level handling (RGB, grey, RGBA, 8/16-bit, Y-only models).

``load_model`` builds a network from an arch name + kwargs or from a BasicSR option file's ``network_g`` and loads a
checkpoint (BasicSR ``params``/``params_ema`` or a plain official state dict). ``Upscaler`` runs it on numpy images;
a tiled image streams band by band into its 8/16-bit output (memory: the output plus one band of tiles).
"""
import collections
import inspect
import mmap

import numpy as np
import torch

from lwsr_plugin.fast import FastForm, fast_inference_net
from lwsr_plugin.fast.graphs import GraphForward
from lwsr_plugin.fast.kernels import trim_freed_memory
from lwsr_plugin.fast.tiling import (ImageStatistics, InferenceError, auto_tile_batch, is_tiled,  # noqa: F401
                                     self_ensemble, stream_tiles, tile_count, tile_starts, tile_stat_layers,
                                     tiled_forward)
from lwsr_plugin.fileio import load_state_dict_checked, read_state_dict
from lwsr_plugin.ops.device import RuntimeProblem, check_runtime
from lwsr_plugin.ops.matlab_bicubic import imresize, upsample_integer
from lwsr_plugin.registration import resolve_network


def network_options(arch=None, scale=None, arch_kwargs=None, opt_path=None):
    """``network_g`` dict from an option file (``opt_path``) or from ``arch`` + kwargs; ``scale`` sets ``upscale``
    when the arch takes one (and must agree with an option file's)."""
    if opt_path:
        from lwsr_plugin.options import OptionError, load_yaml
        try:
            opt = load_yaml(opt_path)
        except OptionError as err:
            raise InferenceError(f'--opt {err}') from None
        if not opt.get('network_g'):
            raise InferenceError(f'--opt {opt_path}: no network_g section (not a BasicSR option file).')
        net_opt = dict(opt['network_g'])
        if arch and arch != net_opt.get('type'):
            raise InferenceError(f'--arch {arch} disagrees with network_g.type {net_opt.get("type")} in {opt_path}.')
    else:
        if not arch:
            raise InferenceError('give --arch (a registered arch, e.g. IMDN) or --opt (a BasicSR option file).')
        net_opt = dict(arch_kwargs or {}, type=arch)
    cls = resolve_network(net_opt)
    if scale is not None and 'upscale' in inspect.signature(cls).parameters:
        if opt_path and 'upscale' in net_opt and int(net_opt['upscale']) != int(scale):
            raise InferenceError(f'--scale {scale} disagrees with network_g.upscale {net_opt["upscale"]} in {opt_path}.')
        net_opt['upscale'] = int(scale)
    return net_opt


def load_model(net_opt, ckpt=None, param_key='params_ema'):
    """The network of ``net_opt`` in eval mode, with ``ckpt`` loaded strictly (clear error for another arch/scale)."""
    opt = dict(net_opt)
    cls = resolve_network(opt)
    opt.pop('type')
    try:
        net = cls(**opt)
    except (TypeError, ValueError) as err:
        raise InferenceError(f'{cls.__name__}({opt}): {err}') from None
    # image channels the net takes (the inner convs can be narrower than the input with small num_feat)
    net.lwsr_in_ch = int(opt.get('num_in_ch', inspect.signature(cls).parameters['num_in_ch'].default))
    if ckpt:
        try:
            state, _ = read_state_dict(ckpt, param_key)
        except FileNotFoundError:
            raise InferenceError(f'--ckpt {ckpt}: no such file.') from None
        except Exception as err:  # a truncated or foreign file: pickle/zip errors of every kind
            raise InferenceError(f'--ckpt {ckpt}: not a readable checkpoint ({type(err).__name__}: {err}).') from None
        load_state_dict_checked(net, state, True, '--ckpt', ckpt)
    return net.eval()


def model_scale(net):
    """Output/input size ratio of a network: its ``upscale``; 1 for IMDN_AS (input already resized)."""
    return 1 if type(net).__name__ == 'IMDN_AS' else int(getattr(net, 'upscale', 1))


class Upscaler:
    """Runs a network on images: tiling, ensemble, precision and memory layout options, image kinds.

    Args:
        net (nn.Module): The network (eval mode), inputs and outputs in [0, 1].
        device (str): 'cpu', 'cuda', 'cuda:1', ...
        tile (int): LR core tile side; 0 = whole image. Default: 0.
        tile_overlap (int): LR context pixels around each tile. Default: 8.
        tile_batch (int | None): Tiles per forward; None: :func:`~lwsr_plugin.fast.tiling.auto_tile_batch` of the
            tile in use (one window of a 256 px tile per forward on a CPU, 4 on CUDA). Default: None.
        tile_stats (str): 'image': layers that pool their whole input (IMDN's CCA) get the whole image's
            statistics, at the cost of a second pass over the tiles; 'tile': each tile's own. Default: 'image'.
        ensemble (bool): x8 self-ensemble. Default: False.
        precision (str): 'fp32', 'bf16' or 'fp16' (weights and activations in that type). Default: 'fp32'.
        channels_last (bool): NHWC memory format (faster oneDNN/cuDNN convs). Default: True.
        compile (bool): ``torch.compile`` the network. Default: False.
        fast (bool): Run the arch's fast inference form (:mod:`lwsr_plugin.fast`: the module's output, less memory
            traffic, fused kernels; not combined with ``compile``, which does its own fusion). Default: True.
        cuda_graphs (bool): On CUDA, replay one captured graph per window shape (:class:`fast.graphs.GraphForward`);
            tiles then run in batches of one fixed size. Default: True.
    """

    DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

    def __init__(self, net, device='cpu', tile=0, tile_overlap=8, tile_batch=None, ensemble=False, precision='fp32',
                 channels_last=True, compile=False, fast=True, tile_stats='image', cuda_graphs=True):
        if precision not in self.DTYPES:
            raise InferenceError(f'precision must be one of {sorted(self.DTYPES)}, got {precision!r}.')
        if 0 < tile < tile_overlap:
            raise InferenceError(f'--tile {tile} is smaller than --tile-overlap {tile_overlap}, the receptive-field '
                                 f'context each tile is run with; use --tile >= {tile_overlap} (e.g. 256) or a '
                                 'smaller --tile-overlap.')
        try:
            self.device = check_runtime(device, precision, compile)
        except RuntimeProblem as err:
            raise InferenceError(str(err)) from None
        self.dtype = self.DTYPES[precision]
        self.scale = model_scale(net)
        self.in_ch = _in_channels(net)
        self.name = type(net).__name__
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if fast and not compile:
            net = fast_inference_net(net)
        net = net.to(self.device, self.dtype).to(memory_format=self.memory_format)
        self.stat_layers = tile_stat_layers(net, tile_stats)
        self.net = torch.compile(net) if compile else net
        self.tile, self.tile_overlap, self.batch_asked, self.ensemble = tile, tile_overlap, tile_batch, ensemble
        # graphs only while no statistics hook is installed: the hooks' collecting pass runs Python per call
        self.graphs = GraphForward(self._eager, lambda: all(m.stats_hook is None for m in self.stat_layers)) \
            if cuda_graphs and self.device.type == 'cuda' and not compile else None

    @property
    def tile_batch(self):
        """Windows per tiled forward: the one asked for, else the automatic one of the current ``tile`` (which
        ``lwsr-upscale`` sets per image when it tiles an image by itself)."""
        if self.batch_asked is not None:
            return self.batch_asked
        return auto_tile_batch(self.tile, self.tile_overlap, self.device.type)

    def release_memory(self):
        """Drops the buffers the fast form keeps between forwards and hands the freed heap back to the system (a
        large image's window maps otherwise stay held under the next, smaller image, and under the interpreter's
        teardown). The next forward allocates its buffers again."""
        for module in self.net.modules():
            if isinstance(module, FastForm):
                module.scratch.clear()
        if self.device.type == 'cpu':
            trim_freed_memory()

    def _eager(self, x):
        return self.net(x)

    def _forward(self, x):
        # a fast form takes the fp32 image and reads it at full precision (FastConv.head); a module its own type
        x = x if isinstance(self.net, FastForm) else x.to(self.dtype)
        x = x.contiguous(memory_format=self.memory_format)
        return self.graphs(x) if self.graphs is not None else self.net(x)

    def to_device(self, x):
        """``x`` on the device; a CPU tensor bound for CUDA goes through pinned memory without blocking the host."""
        if self.device.type == 'cuda' and x.device.type == 'cpu':
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def tile_forwards(self, hw):
        """Window forwards that ``upscale`` runs on a network input of ``hw`` = (h, w) px, each reported to its
        ``progress``: tiles x passes (2 with whole-image statistics) x 8 with the ensemble; 0 when untiled."""
        return tile_count(hw[0], hw[1], self.tile, self.stat_layers) * (8 if self.ensemble else 1)

    @torch.inference_mode()
    def run_tensor(self, x, progress=None):
        """(N, C, H, W) float in [0, 1] -> float32 output in [0, 1] on the device. ``progress``: called with the
        number of tile windows after each tiled forward."""
        x = self.to_device(x)

        def one(t):
            return tiled_forward(self._forward, t, self.scale, self.tile, self.tile_overlap, self.tile_batch,
                                 self.stat_layers, fixed_batch=self.graphs is not None, progress=progress).float()

        out = self_ensemble(one, x) if self.ensemble else one(x)
        return out.clamp_(0, 1)

    def _run_planes(self, planes, progress=None):
        """HWC float32 [0, 1] with ``self.in_ch`` channels -> HWC float32 output (clamped)."""
        out = self.run_tensor(_chw(planes), progress)[0]
        if out.is_cuda:  # pinned host buffer: a non-blocking copy, then one wait
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            torch.cuda.current_stream(out.device).synchronize()
            out = host
        return out.numpy().transpose(1, 2, 0)

    def _net_input(self, colour):
        """The network's input planes (HWC float32) from the image's colour planes (BGR or grey, [0, 1]): RGB; Y for
        a Y-only model (IDN §4.1); grey as R = G = B for an RGB model."""
        from basicsr.utils.color_util import bgr2ycbcr
        if self.in_ch == 1 and colour.shape[2] == 3:
            return bgr2ycbcr(colour)[..., :1]
        if self.in_ch == 3 and colour.shape[2] == 1:
            # grey is luma (one convention with evaluation and lwsr-export, docs/evaluation.md): R = G = B in, mean
            # out; a Y-only model takes it as its Y unchanged
            return np.repeat(colour, 3, axis=2)
        return colour[..., ::-1] if colour.shape[2] == 3 else colour  # cv2 order is BGR, the networks take RGB

    def _image_colour(self, out, colour, upsample):
        """The image's colour planes from the network's output planes ``out`` (HWC float32, [0, 1]) and the input
        colour planes they came from: a Y-only model's Cb/Cr are the input's, MATLAB-bicubic upsampled by
        ``upsample`` (planes -> planes at ``out``'s pixels); an RGB model's output on grey is the channel mean."""
        from basicsr.utils.color_util import bgr2ycbcr, ycbcr2bgr
        if self.in_ch == 1 and colour.shape[2] == 3:
            return ycbcr2bgr(np.concatenate([out, upsample(bgr2ycbcr(colour)[..., 1:])], axis=2))
        if self.in_ch == 3 and colour.shape[2] == 1:
            return out.mean(axis=2, keepdims=True)
        return out[..., ::-1] if colour.shape[2] == 3 else out

    def streams(self, hw, outscale=None):
        """Whether ``upscale`` streams an image of ``hw`` = (h, w) px band by band into its output (a tiled image,
        without the ensemble or a resize to another size, which need the whole output in float)."""
        h, w = hw
        same = outscale is None or (self.scale != 1 and (round(h * outscale), round(w * outscale))
                                    == (h * self.scale, w * self.scale))
        return same and not self.ensemble and is_tiled(h, w, self.tile) and min(h, w) >= 3

    def upscale(self, img, outscale=None, progress=None):
        """Upscale a cv2 image (HW grey, HWC BGR or BGRA; uint8 or uint16) by the model's scale, or by ``outscale``
        (IMDN_AS: bicubic to the target size first; other archs: bicubic resize of the SR result). Returns an image of
        the same kind and dtype. A tiled image streams (``streams``); ``progress``: called with the number of tile
        windows after each tiled forward (``tile_forwards`` in all)."""
        if img.dtype not in (np.uint8, np.uint16):
            raise InferenceError(f'unsupported pixel type {img.dtype} (8- or 16-bit images only).')
        if self.streams(img.shape[:2], outscale):
            return self._upscale_bands(img, progress)
        peak = float(np.iinfo(img.dtype).max)
        f = img.astype(np.float32) / peak
        grey = f.ndim == 2
        if grey:
            f = f[..., None]
        alpha = f[..., 3:] if f.shape[2] == 4 else None
        colour = f[..., :3]
        h, w = colour.shape[:2]
        target = None
        if outscale is not None:
            target = (max(1, round(h * outscale)), max(1, round(w * outscale)))
            if self.scale == 1:  # any-scale model (IMDN_AS): its input is the LR image resized to the target
                colour = _resize(colour, target)
        out = self._run_planes(self._net_input(colour), progress)
        size = out.shape[:2]
        out = self._image_colour(out, colour, lambda planes: _resize(planes, size))
        if target is not None and out.shape[:2] != target:
            out = _resize(out, target)
        if alpha is not None:  # alpha is a mask, not a photo: bicubic keeps its edges without SR artefacts
            out = np.concatenate([out, _resize(alpha, out.shape[:2])], axis=2)
        out = _quantize(out, peak, img.dtype)
        return out[..., 0] if grey else out

    @torch.inference_mode()
    def _upscale_bands(self, img, progress):
        """``upscale`` of a tiled image through ``stream_tiles``: the input is converted to float one band of
        rows at a time, and each core's output goes straight into the 8/16-bit output (Cb/Cr of a Y-only model and
        alpha upsampled per core), so memory is the output image plus one band of windows, for any image size.
        Every core is computed as by the whole-image path, so the two give the same bytes."""
        peak = float(np.iinfo(img.dtype).max)
        src = img[..., None] if img.ndim == 2 else img
        h, w, channels = src.shape
        s = self.scale
        out = _mapped_array((h * s, w * s) + img.shape[2:], img.dtype)
        canvas = out[..., None] if img.ndim == 2 else out
        needs_lr = channels == 4 or (self.in_ch == 1 and channels == 3)  # Cb/Cr or alpha come from the input

        def lr(r0, r1, c0, c1):  # the input's planes in [0, 1], as the whole-image path computes them
            return src[r0:r1, c0:c1].astype(np.float32) / peak

        def read_rows(r0, r1):
            return self.to_device(_chw(self._net_input(lr(r0, r1, 0, w)[..., :3])))

        def finish(y0, y1, x0, x1, sr):
            # the bicubic upsampling reads 3 LR px beyond a pixel: with them, the core's part of a region's
            # upsampling is the whole image's
            r0, r1, c0, c1 = max(y0 - 3, 0), min(y1 + 3, h), max(x0 - 3, 0), min(x1 + 3, w)
            region = lr(r0, r1, c0, c1) if needs_lr else np.empty((0, 0, channels), np.float32)
            crop = (slice((y0 - r0) * s, (y1 - r0) * s), slice((x0 - c0) * s, (x1 - c0) * s))

            def upsample(planes):
                return _resize(planes, (planes.shape[0] * s, planes.shape[1] * s))[crop]

            sr = self._image_colour(sr, region[..., :3], upsample)
            if channels == 4:
                sr = np.concatenate([sr, upsample(region[..., 3:])], axis=2)
            canvas[y0 * s:y1 * s, x0 * s:x1 * s] = _quantize(sr, peak, img.dtype)

        # a CUDA core is copied to pinned host memory without waiting and finished one window batch later, so the
        # host's work overlaps the next batch's forward
        lag = self.tile_batch if self.device.type == 'cuda' else 0
        pending = collections.deque()

        def land(keep):  # finishes the pending cores but the last ``keep``
            while len(pending) > keep:
                *box, core, copied = pending.popleft()
                if copied is not None:
                    copied.synchronize()
                finish(*box, core.numpy().transpose(1, 2, 0))

        cores = stream_tiles(self._forward, read_rows, (h, w), 1, s, self.tile, self.tile_overlap, self.tile_batch,
                             self.stat_layers, fixed_batch=self.graphs is not None, progress=progress)
        for y0, y1, x0, x1, core in cores:
            core, copied = core[0].float().clamp_(0, 1), None
            if core.is_cuda:
                host = torch.empty(core.shape, dtype=core.dtype, pin_memory=True)
                host.copy_(core, non_blocking=True)
                core, copied = host, torch.cuda.Event()
                copied.record()
            pending.append((y0, y1, x0, x1, core, copied))
            land(lag)
        land(0)
        return out


def _mapped_array(shape, dtype):
    """A zeroed array in an anonymous memory mapping of its own, which goes back to the system as soon as the array
    is dropped (an ordinary array where the platform has no private mappings): the heap of an inference process
    keeps freed memory for the network's maps (``fast.kernels.keep_freed_memory``), and an output image would stay
    held there, under the next image's or the interpreter's teardown."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not nbytes or not hasattr(mmap, 'MAP_PRIVATE'):
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE), dtype).reshape(shape)


def _chw(planes):
    """(1, C, H, W) tensor of HWC numpy planes."""
    return torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]


def _quantize(out, peak, dtype):
    """Float planes in [0, 1] -> ``dtype`` pixels (x ``peak``, rounded half to even, clipped)."""
    out = np.multiply(out, peak, dtype=np.float32)  # in-place steps: a 8000x8000 RGB float image is 768 MB
    np.round(out, out=out)
    return np.clip(out, 0, peak, out=out).astype(dtype)


def _in_channels(net):
    """Image channels a network takes: as built by ``load_model``, else the narrowest conv input."""
    if hasattr(net, 'lwsr_in_ch'):
        return net.lwsr_in_ch
    return min(m.in_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def _resize(planes, size):
    """MATLAB bicubic resize of HWC float planes to ``size`` (antialiased when shrinking), clamped to [0, 1]."""
    size = tuple(size)
    if planes.shape[:2] == size:
        return planes
    t = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))
    h, w = planes.shape[:2]
    s = size[0] // h
    if s >= 1 and size == (h * s, w * s) and min(h, w) >= 3:  # integer upscale: O(HW) convs, not dense matrices
        return upsample_integer(t, s).clamp_(0, 1).numpy().transpose(1, 2, 0)
    return imresize(t, size=size).clamp_(0, 1).numpy().transpose(1, 2, 0)
