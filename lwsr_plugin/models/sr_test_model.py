"""``LWSRModel``: BasicSR's SRModel whose test-time forward can use the x8 self-ensemble and tiled inference.

Option keys (under ``val``, any test or training YAML with ``model_type: LWSRModel``)::

    val:
      self_ensemble: true   # average over the 8 flips x rot90 of the input, each mapped back (the "+" rows, e.g.
                            # DRN+ / s-LWSR+ in the papers; Lim et al. 2017, "geometric self-ensemble")
      tile: 0               # LR tile side in pixels; 0 = whole image at once
      tile_overlap: 16      # LR context added around each tile and thrown away after the forward
      tile_stats: image     # image: whole-image statistics for layers that pool their input (IMDN's CCA), by a
                            # first pass over the tiles; tile: each tile's own (one pass, drifts from whole-image)

Training is SRModel's, unchanged; validation during training uses the same options.
"""
import torch

from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY
from lwsr_plugin.inference import self_ensemble, tile_stat_layers, tiled_forward


@MODEL_REGISTRY.register()
class LWSRModel(SRModel):
    """SRModel with ``val.self_ensemble``, ``val.tile`` and ``val.tile_overlap`` at test time (see module docstring)."""

    def _inference(self, net):
        val_opt = self.opt.get('val') or {}
        scale = self.opt['scale']
        tile, overlap = int(val_opt.get('tile', 0) or 0), int(val_opt.get('tile_overlap', 16))

        if overlap < 0:
            raise ValueError(f'val.tile_overlap must be >= 0, got {overlap}.')
        layers = tile_stat_layers(net, val_opt.get('tile_stats', 'image'), 'val.tile_stats')

        def forward(x):
            return tiled_forward(net, x, scale, tile, overlap, stat_layers=layers)

        if val_opt.get('self_ensemble', False):
            return self_ensemble(forward, self.lq)
        return forward(self.lq)

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = self._inference(net)
        if was_training:
            net.train()
