"""Tiled and self-ensembled forwards of any network, for inference and for validation during training.

``tiled_forward`` cuts an image into cores run inside overlapping windows (no seams, memory bounded by the window
batch); layers that pool their whole input (IMDN's contrast-aware channel attention, §3.1 of the IMDN paper) get the
whole image's statistics through a first, collecting pass (``ImageStatistics``). ``self_ensemble`` is the x8
geometric self-ensemble of the "+" rows of the papers.
"""
import torch

from lwsr_plugin.archs.blocks import contrast


class InferenceError(ValueError):
    """A bad model, checkpoint, image or inference option, reported as one line."""


def tile_starts(size, tile):
    """Starts of the core tiles along one side: 0, tile, 2*tile, ... (the last core may be shorter)."""
    return list(range(0, size, tile))


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
                part = x[i, :, y0 * fh // wh:y1 * fh // wh, x0 * fw // ww:x1 * fw // ww].double()
                s1[img] += part.sum((1, 2))
                s2[img] += part.square().sum((1, 2))
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


def tiled_forward(forward, x, scale, tile, overlap=8, batch=4, stat_layers=(), fixed_batch=False, out_device=None):
    """Seam-free tiled inference: the image is cut into ``tile``-sided cores; each core is run inside a window grown
    by ``overlap`` LR pixels of real context on every side (shifted inward at the borders, so all windows have one
    size and run ``batch`` at a time), and only the core's output is kept. Every output pixel comes from exactly one
    window, with no blending, so there is no seam and memory is bounded by the window batch.

    ``stat_layers`` (see ``tile_stat_layers``): layers that pool their whole input; they then get the whole
    image's statistics through a first, collecting pass (``ImageStatistics``), so tiles match the untiled output.
    ``fixed_batch``: the last, smaller batch is filled up with repeats of its last window, so every forward has one
    shape (one CUDA graph serves them all; the extra outputs are dropped). ``out_device``: where the output is
    assembled; a CPU output of a CUDA forward is pinned host memory that each core is copied to without waiting,
    so the transfers overlap the next windows' compute."""
    _, _, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return forward(x)
    n = x.shape[0]
    win_h, win_w = min(tile + 2 * overlap, h), min(tile + 2 * overlap, w)
    jobs = []
    for y0 in tile_starts(h, tile):
        for x0 in tile_starts(w, tile):
            sy = min(max(y0 - overlap, 0), h - win_h)
            sx = min(max(x0 - overlap, 0), w - win_w)
            jobs.append((y0, min(y0 + tile, h), x0, min(x0 + tile, w), sy, sx))

    out_device = torch.device(out_device) if out_device is not None else x.device
    pinned = out_device.type == 'cpu' and x.is_cuda

    def run(keep, stats=None):
        out = None
        for i in range(0, len(jobs), batch):
            group = jobs[i:i + batch]
            if stats is not None:
                stats.regions = [(img, y0 - sy, y1 - sy, x0 - sx, x1 - sx, win_h, win_w)
                                 for y0, y1, x0, x1, sy, sx in group for img in range(n)]
            starts = [(sy, sx) for _, _, _, _, sy, sx in group]
            if fixed_batch and stats is None and len(jobs) > batch:
                starts += starts[-1:] * (batch - len(group))
            windows = torch.cat([x[..., sy:sy + win_h, sx:sx + win_w] for sy, sx in starts], dim=0)
            res = forward(windows)
            if not keep:
                continue
            res = res.split(n, dim=0)
            if out is None:
                out = torch.empty((n, res[0].shape[1], h * scale, w * scale), dtype=res[0].dtype, device=out_device,
                                  pin_memory=pinned)
            for (y0, y1, x0, x1, sy, sx), r in zip(group, res):
                out[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale].copy_(
                    r[..., (y0 - sy) * scale:(y1 - sy) * scale, (x0 - sx) * scale:(x1 - sx) * scale],
                    non_blocking=pinned)
        if pinned:
            torch.cuda.current_stream(x.device).synchronize()  # the last non-blocking copies have landed
        return out

    if not stat_layers:
        return run(True)
    with ImageStatistics(stat_layers, n) as stats:
        run(False, stats)
        stats.finish_collecting()
        return run(True, stats)


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
