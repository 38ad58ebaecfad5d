"""``LWSRModel``: BasicSR's SRModel whose test-time forward can use the x8 self-ensemble and tiled inference.

Option keys (under ``val``, any test or training YAML with ``model_type: LWSRModel``)::

    val:
      self_ensemble: true   # average over the 8 flips x rot90 of the input, each mapped back (the "+" rows, e.g.
                            # DRN+ / s-LWSR+ in the papers; Lim et al. 2017, "geometric self-ensemble")
      tile: 0               # LR tile side in pixels; 0 = whole image at once
      tile_overlap: 16      # LR context added around each tile and thrown away after the forward

Training is SRModel's, unchanged; validation during training uses the same options.
"""
import torch

from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY


def _dihedral(x, k, flip):
    """The transform ``k`` quarter turns after an optional horizontal flip (one of the 8 symmetries of a square)."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _dihedral_inverse(x, k, flip):
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def self_ensemble_forward(forward, x):
    """Geometric self-ensemble: the mean of ``T^-1(forward(T(x)))`` over the 8 flips x rotations ``T``."""
    out = None
    for flip in (False, True):
        for k in range(4):
            y = _dihedral_inverse(forward(_dihedral(x, k, flip)), k, flip)
            out = y if out is None else out + y
    return out / 8


def tiled_forward(forward, x, scale, tile, overlap=16):
    """Run ``forward`` on ``tile`` x ``tile`` LR tiles, each with ``overlap`` LR pixels of context on every side
    (clipped at the image border), and paste each tile's own (context-free) part of the output.

    The result equals the whole-image forward where the receptive field fits in the overlap; memory is that of one
    tile. ``forward`` maps an LR batch to ``scale`` times its size.
    """
    if tile <= 0:
        return forward(x)
    if overlap < 0:
        raise ValueError(f'tile_overlap must be >= 0, got {overlap}.')
    b, _, h, w = x.shape
    out = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            py1, px1 = min(y1 + overlap, h), min(x1 + overlap, w)
            part = forward(x[..., py0:py1, px0:px1])
            if out is None:
                out = part.new_zeros(b, part.shape[1], h * scale, w * scale)
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                part[..., oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out


@MODEL_REGISTRY.register()
class LWSRModel(SRModel):
    """SRModel with ``val.self_ensemble``, ``val.tile`` and ``val.tile_overlap`` at test time (see module docstring)."""

    def _inference(self, net):
        val_opt = self.opt.get('val') or {}
        scale = self.opt['scale']
        tile, overlap = int(val_opt.get('tile', 0) or 0), int(val_opt.get('tile_overlap', 16))

        def forward(x):
            return tiled_forward(net, x, scale, tile, overlap)

        if val_opt.get('self_ensemble', False):
            return self_ensemble_forward(forward, self.lq)
        return forward(self.lq)

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = self._inference(net)
        if was_training:
            net.train()
