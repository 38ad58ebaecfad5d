"""Tiled and self-ensembled forwards of any network, for inference and for validation during training.

``stream_tiles`` cuts an image into cores run inside overlapping windows (no seams, memory bounded by the window
batch), one band (row of tiles) at a time, and hands each core's output to its caller as it is computed, so a
caller can assemble an output of any size in its final form without ever holding the image in float.
``tiled_forward`` is its tensor form (input and output tensors). Layers that pool their whole input (IMDN's
contrast-aware channel attention, §3.1 of the IMDN paper) get the whole image's statistics through a first,
collecting pass over the same bands (``ImageStatistics``). ``self_ensemble`` is the x8 geometric self-ensemble of
the "+" rows of the papers.
"""
import torch

from lwsr_plugin.archs.blocks import contrast


class InferenceError(ValueError):
    """A bad model, checkpoint, image or inference option, reported as one line."""


# window pixels per forward on a CPU when the batch is automatic: one window of a 256 px tile (272 x 272 with its
# context) already keeps the cores busy, so batching more of them costs each one's feature maps (IMDN x4, fp32:
# about 220 MiB per 272 x 272 window) and gains no speed (a 1000x750 photo at x4: 12.2 s with 1 window per
# forward, 12.0 s with 4)
AUTO_BATCH_PIXELS = 2**16
AUTO_BATCH_MAX = 4  # and on CUDA, where windows in one launch fill the device


def auto_tile_batch(tile, overlap, device_type='cpu'):
    """Windows per forward when none is given: on CUDA ``AUTO_BATCH_MAX``; on a CPU as many ``tile + 2 * overlap``
    windows as make ``AUTO_BATCH_PIXELS`` px, at least one and at most ``AUTO_BATCH_MAX`` (one for 256 px tiles,
    three for 128 px, four for 64 px)."""
    if device_type == 'cuda' or tile <= 0:
        return AUTO_BATCH_MAX
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_PIXELS // (tile + 2 * overlap) ** 2))


def tile_starts(size, tile):
    """Starts of the core tiles along one side: 0, tile, 2*tile, ... (the last core may be shorter)."""
    return list(range(0, size, tile))


def is_tiled(h, w, tile):
    """Whether an ``h`` x ``w`` input runs in tiles of ``tile`` px (else in one forward)."""
    return tile > 0 and (h > tile or w > tile)


def tile_count(h, w, tile, stat_layers=()):
    """Window forwards that ``stream_tiles`` / ``tiled_forward`` run on an ``h`` x ``w`` input: one per tile, twice
    with ``stat_layers`` (the collecting pass, then the output pass); 0 for an untiled input."""
    if not is_tiled(h, w, tile):
        return 0
    return len(tile_starts(h, tile)) * len(tile_starts(w, tile)) * (2 if stat_layers else 1)


_STATS_CHUNK = 2**18  # float64 values per step of the statistics' sums (2 MiB)


class ImageStatistics:
    """Whole-image statistics for layers that pool their entire input (IMDN's CCA, eq. 5), for tiled inference.

    A tile's mean/std differ from the image's, so a tiled CCA network drifts from its whole-image output (on Set5
    butterfly, tiles of 32 LR px: 46.7 dB). Tiled inference therefore runs twice: the first pass collects, per layer
    and image, the sums over every tile's *core* (each image pixel once) in float64; the second pass runs every tile
    with the image-wide std + mean of those sums. Installed as each layer's ``stats_hook``.
    """

    def __init__(self, layers, num_images):
        self.layers, self.num_images = list(layers), num_images
        self.sums, self.image = {}, {}
        self.collecting = True
        self.regions = []  # per window of the current batch: (image index, y0, y1, x0, x1, win_h, win_w)

    def __enter__(self):
        for layer in self.layers:
            layer.stats_hook = self
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.stats_hook = None

    def finish_collecting(self):
        """Image-wide std + mean per layer from the collected sums; later calls use them."""
        for layer, (s1, s2, count) in self.sums.items():
            mean = s1 / count
            std = (s2 / count - mean.square()).clamp_(min=0).sqrt_()
            self.image[layer] = std + mean
        self.collecting = False

    def __call__(self, layer, x):
        if len(self.regions) != x.shape[0]:
            raise RuntimeError(f'{type(layer).__name__}: {x.shape[0]} maps for {len(self.regions)} tile windows '
                               '(a network that changes the batch size cannot use image-wide statistics).')
        if self.collecting:
            fh, fw = x.shape[-2:]
            s1, s2, count = self.sums.setdefault(layer, (
                torch.zeros(self.num_images, x.shape[1], dtype=torch.float64, device=x.device),
                torch.zeros(self.num_images, x.shape[1], dtype=torch.float64, device=x.device),
                torch.zeros(self.num_images, 1, dtype=torch.float64, device=x.device)))
            for i, (img, y0, y1, x0, x1, wh, ww) in enumerate(self.regions):
                # the core in this layer's resolution (IMDN_AS pools at 1/4 of its input)
                part = x[i, :, y0 * fh // wh:y1 * fh // wh, x0 * fw // ww:x1 * fw // ww]
                # float64 a few rows at a time: a whole core in float64 would be twice a float32 map (a 256 px
                # core of 64 channels: 32 MiB, and as much again for its squares) on top of the window's maps
                rows = max(1, _STATS_CHUNK // max(1, part.shape[0] * part.shape[2]))
                for r in range(0, part.shape[1], rows):
                    chunk = part[:, r:r + rows].double()
                    s1[img] += chunk.sum((1, 2))
                    s2[img] += chunk.square_().sum((1, 2))
                count[img] += part[0].numel()
            return contrast(x)
        idx = torch.tensor([r[0] for r in self.regions], device=x.device)
        return self.image[layer][idx].to(x.dtype).reshape(x.shape[0], x.shape[1], 1, 1)


def tile_stat_layers(net, tile_stats='image', key='tile_stats'):
    """For ``tiled_forward``: with ``tile_stats`` 'image', the layers of ``net`` that pool their whole input and accept
    a ``stats_hook`` (IMDN's CCA); with 'tile', none (each tile uses its own statistics). ``key`` names the option in
    the error for any other value."""
    if tile_stats not in ('image', 'tile'):
        raise InferenceError(f"{key} must be 'image' or 'tile', got {tile_stats!r}.")
    return [m for m in net.modules() if hasattr(m, 'stats_hook')] if tile_stats == 'image' else []


def stream_tiles(forward, read_rows, size, num_images, scale, tile, overlap=8, batch=4, stat_layers=(),
                 fixed_batch=False, progress=None):
    """Seam-free tiled inference, band by band: yields ``(y0, y1, x0, x1, core)`` for every core tile, ``core`` being
    the network output of input rows ``y0:y1`` and columns ``x0:x1`` (``num_images``, C, (y1-y0)*scale,
    (x1-x0)*scale), on the forward's device and valid until the next core is asked for.

    The image (``size`` = (h, w)) is cut into ``tile``-sided cores; each core is run inside a window grown by
    ``overlap`` px of real context on every side (shifted inward at the borders, so all windows have one size and
    run ``batch`` at a time, within one band), and only the core's output is kept. Every output pixel comes from
    exactly one window, with no blending, so there is no seam. The input is read one band at a time:
    ``read_rows(r0, r1)`` returns its rows ``r0:r1`` (``num_images``, C, r1-r0, w) on the forward's device, so
    memory is one band of input plus one window batch, whatever the image size.

    ``stat_layers`` (see ``tile_stat_layers``): layers that pool their whole input; they then get the whole
    image's statistics through a first, collecting pass over the bands (``ImageStatistics``), so tiles match the
    untiled output; only the second pass yields. ``fixed_batch``: the last, smaller batch of a band is filled up
    with repeats of its last window, so every forward has one shape (one CUDA graph serves them all; the extra
    outputs are dropped); without it, a lone window (``batch`` > 1) runs beside one copy of itself. ``progress``:
    called with the number of windows (copies not counted) after each forward, in both passes."""
    h, w = size
    win_h, win_w = min(tile + 2 * overlap, h), min(tile + 2 * overlap, w)
    bands = []
    for y0 in tile_starts(h, tile):
        cols = [(x0, min(x0 + tile, w), min(max(x0 - overlap, 0), w - win_w)) for x0 in tile_starts(w, tile)]
        bands.append((y0, min(y0 + tile, h), min(max(y0 - overlap, 0), h - win_h), cols))
    windows_per_pass = len(bands) * len(bands[0][3])

    def run(stats):
        for y0, y1, sy, cols in bands:
            band = read_rows(sy, sy + win_h)
            for i in range(0, len(cols), batch):
                group = cols[i:i + batch]
                fill = 0
                if fixed_batch and stats is None and windows_per_pass > batch:
                    fill = batch - len(group)
                elif len(group) * num_images == 1 and batch > 1:
                    # a network may take another path for a single image (the fast IMDN folds its attention into a
                    # weight, equal up to float rounding): a lone window runs beside a copy of itself, so no
                    # window's output depends on how the windows fall into batches
                    fill = 1
                starts = [sx for _, _, sx in group] + [group[-1][2]] * fill
                if stats is not None:  # the copies' cores are empty: they add nothing to the statistics
                    stats.regions = [(img, y0 - sy, y1 - sy, x0 - sx, x1 - sx, win_h, win_w)
                                     for x0, x1, sx in group for img in range(num_images)]
                    stats.regions += [(img, 0, 0, 0, 0, win_h, win_w) for _ in range(fill) for img in range(num_images)]
                res = forward(torch.cat([band[..., sx:sx + win_w] for sx in starts], dim=0))
                if progress is not None:
                    progress(len(group))
                if stats is not None and stats.collecting:
                    continue
                for (x0, x1, sx), r in zip(group, res.split(num_images, dim=0)):
                    yield y0, y1, x0, x1, r[..., (y0 - sy) * scale:(y1 - sy) * scale,
                                            (x0 - sx) * scale:(x1 - sx) * scale]
            del band  # the next band's rows replace it, not join it

    if not stat_layers:
        yield from run(None)
        return
    with ImageStatistics(stat_layers, num_images) as stats:
        for _ in run(stats):
            pass
        stats.finish_collecting()
        yield from run(stats)


def tiled_forward(forward, x, scale, tile, overlap=8, batch=4, stat_layers=(), fixed_batch=False, out_device=None,
                  progress=None):
    """``stream_tiles`` on a tensor ``x`` (N, C, H, W), its cores assembled into one output tensor (a single forward
    when ``x`` fits one tile). ``out_device``: where the output is assembled; a CPU output of a CUDA forward is
    pinned host memory that each core is copied to without waiting, so the transfers overlap the next windows'
    compute. The other arguments are ``stream_tiles``'s."""
    n, _, h, w = x.shape
    if not is_tiled(h, w, tile):
        return forward(x)
    out_device = torch.device(out_device) if out_device is not None else x.device
    pinned = out_device.type == 'cpu' and x.is_cuda
    out = None
    for y0, y1, x0, x1, core in stream_tiles(forward, lambda r0, r1: x[..., r0:r1, :], (h, w), n, scale, tile,
                                             overlap, batch, stat_layers, fixed_batch, progress):
        if out is None:
            out = torch.empty((n, core.shape[1], h * scale, w * scale), dtype=core.dtype, device=out_device,
                              pin_memory=pinned)
        out[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale].copy_(core, non_blocking=pinned)
    if pinned:
        torch.cuda.current_stream(x.device).synchronize()  # the last non-blocking copies have landed
    return out


def self_ensemble(forward, x):
    """x8 geometric self-ensemble (Lim et al., EDSR, CVPR-W 2017; used by DRN/IMDN '+' results): the input under
    the 8 flips x 90-degree rotations, each output mapped back and averaged."""
    acc = None
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(x, k, dims=(-2, -1))
            t = t.flip(-1) if flip else t
            y = forward(t).float()
            y = y.flip(-1) if flip else y
            y = torch.rot90(y, -k, dims=(-2, -1))
            acc = y if acc is None else acc + y
    return acc / 8
