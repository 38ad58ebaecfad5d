"""``LWSRModel``: BasicSR's SRModel with the plugin's fast training options and test-time extras; the base of every
plugin model.

Training options (under ``train``: ``amp``, ``channels_last``, ``compile``, ``grad_clip``, ``tf32``,
``max_nonfinite_steps``; under ``val``: ``amp``) are described in :mod:`lwsr_plugin.models.training_options`; without
them the model trains exactly as SRModel. ``logger.save_format: safetensors`` writes network weights as
``net_g_<iter>.safetensors`` (keys ``params.<name>`` / ``params_ema.<name>``, BasicSR's split) instead of ``.pth``.

Test-time option keys (under ``val``, any test or training YAML with ``model_type: LWSRModel``)::

    val:
      self_ensemble: true   # average over the 8 flips x rot90 of the input, each mapped back (the "+" rows, e.g.
                            # DRN+ / s-LWSR+ in the papers; Lim et al. 2017, "geometric self-ensemble")
      tile: 0               # LR tile side in pixels; 0 = whole image at once
      tile_overlap: 16      # LR context added around each tile and thrown away after the forward
      tile_stats: image     # image: whole-image statistics for layers that pool their input (IMDN's CCA), by a
                            # first pass over the tiles; tile: each tile's own (one pass, drifts from whole-image)

Validation during training uses the same options, on the plain (uncompiled) network.
"""
import contextlib
import os
from collections import OrderedDict

import torch

from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from lwsr_plugin.fast.tiling import self_ensemble, tile_stat_layers, tiled_forward
from lwsr_plugin.fileio import all_finite, require_safetensors, save_safetensors
from lwsr_plugin.models.training_options import TrainingOptionError, TrainingOptions, accumulate_steps
from lwsr_plugin.options import keys
from lwsr_plugin.patches.checkpoints import extra_training_state

SAVE_FORMATS = keys.allowed('logger.save_format')


@MODEL_REGISTRY.register()
class LWSRModel(SRModel):
    """SRModel with the fast training options, the non-finite guard, safetensors checkpoints, and ``val.self_ensemble``
    / ``val.tile`` / ``val.tile_overlap`` at test time (see module docstring)."""

    def __init__(self, opt):
        try:  # before SRModel builds the network: bad options fail before any work
            self.train_options, self.save_format = self.parse_options(opt)
        except TrainingOptionError as err:
            raise SystemExit(f'lwsr_plugin: {err}') from None
        self._train_forward = None
        super().__init__(opt)

    @staticmethod
    def parse_options(opt):
        """``(TrainingOptions, save_format)`` of an option dict; raises TrainingOptionError naming the option.
        Also run by ``lwsr-train``'s option check, so mistakes fail before BasicSR creates any folder."""
        num_gpu = opt.get('num_gpu', 0)
        device = torch.device('cuda' if num_gpu not in (0, None) and torch.cuda.is_available() else 'cpu')
        options = TrainingOptions(opt, device)
        save_format = str((opt.get('logger') or {}).get('save_format', keys.default('logger.save_format'))).lower()
        if save_format not in SAVE_FORMATS:
            raise TrainingOptionError(f'logger.save_format: {save_format!r} is not a checkpoint format. Use '
                                      'safetensors or pth.')
        if save_format == 'safetensors':
            require_safetensors('logger.save_format: safetensors')
        return options, save_format

    # ------------------------------------------------------------------------------------------------ training
    def model_to_device(self, net):
        return super().model_to_device(self.train_options.prepare_network(net))

    def init_training_settings(self):
        super().init_training_settings()
        options = self.train_options
        options.apply_backend_flags()
        if getattr(self, 'net_g_ema', None) is not None:
            self.net_g_ema = options.prepare_network(self.net_g_ema)
        try:
            self._train_forward = options.training_forward(self.net_g)
        except TrainingOptionError as err:
            raise SystemExit(f'lwsr_plugin: {err}') from None
        if ((self.opt.get('datasets') or {}).get('train') or {}).get('on_device'):
            self._device_batches()  # the set goes to the device now: a memory problem shows before iteration 1
        get_root_logger().info(f'Training options: {options.describe()}.')
        if options.accumulate > 1:
            train_set = self.opt['datasets']['train']
            micro, world = train_set.get('micro_batch'), self.opt.get('world_size', 1)
            get_root_logger().info(
                f'Gradient accumulation: each iteration loads {train_set["batch_size_per_gpu"]} samples per process '
                f'and runs {options.accumulate} forward/backward passes of {micro} before one optimizer step; global '
                f'batch {world * train_set["batch_size_per_gpu"]} = {world} process(es) x {micro} x '
                f'{options.accumulate}. Iterations and the learning-rate schedule count optimizer steps.')

    def feed_data(self, data):
        if 'index' in data and 'lq' not in data:  # InMemoryPairedImageDataset with on_device: the batch is cut here
            data = self._device_batches()(data['index'])
        prepare = self.train_options.prepare_batch
        self.lq = prepare(data['lq'].to(self.device, non_blocking=True))
        if 'gt' in data:
            self.gt = prepare(data['gt'].to(self.device, non_blocking=True))

    def _device_batches(self):
        if getattr(self, '_device_cutter', None) is None:
            from lwsr_plugin.data.device_batches import DeviceBatches
            self._device_cutter = DeviceBatches(self.opt['datasets']['train'], self.device)
        return self._device_cutter

    def compute_losses(self, output, gt):
        """SRModel's pixel + perceptual losses, in fp32. Returns ``(total, OrderedDict of the parts)``."""
        output, gt = output.float(), gt.float()
        l_total = 0
        loss_dict = OrderedDict()
        if self.cri_pix:
            l_pix = self.cri_pix(output, gt)
            l_total += l_pix
            loss_dict['l_pix'] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output, gt)
            if l_percep is not None:
                l_total += l_percep
                loss_dict['l_percep'] = l_percep
            if l_style is not None:
                l_total += l_style
                loss_dict['l_style'] = l_style
        return l_total, loss_dict

    def optimize_parameters(self, current_iter):
        options = self.train_options
        self.optimizer_g.zero_grad(set_to_none=True)
        forward = self.net_g if self._train_forward is None else self._train_forward
        if options.accumulate == 1:
            with options.autocast():
                self.output = forward(self.lq)
            l_total, loss_dict = self.compute_losses(self.output, self.gt)
            stepped = options.backward_and_step(l_total, self.optimizer_g, self.net_g.parameters(), current_iter)
        else:
            l_total, loss_dict = self._accumulate(forward, current_iter)
            stepped = options.step(l_total, self.optimizer_g, self.net_g.parameters(), current_iter)
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if options.nonfinite_total:
            self.log_dict['nonfinite_steps'] = float(options.nonfinite_total)
        if stepped and self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _accumulate(self, forward, current_iter):
        """Forward/backward of ``train.accumulate`` equal micro-batches of the fed batch, each loss divided by their
        number so the gradients add up to the whole batch's mean; DDP all-reduces once, on the last one. Returns the
        batch's total loss and its parts (means over the micro-batches)."""
        options = self.train_options
        k = options.accumulate
        if self.lq.shape[0] % k:
            raise SystemExit(f'lwsr_plugin: a training batch of {self.lq.shape[0]} samples cannot be split into '
                             f'train.accumulate: {k} equal micro-batches at iter {current_iter}; the loader batch must '
                             'be accumulate x batch_size_per_gpu (set by lwsr_plugin when the run starts).')
        ddp = isinstance(self.net_g, torch.nn.parallel.DistributedDataParallel)
        total, parts = 0.0, OrderedDict()
        for i, (lq, gt) in enumerate(zip(self.lq.chunk(k), self.gt.chunk(k))):
            with self.net_g.no_sync() if ddp and i < k - 1 else contextlib.nullcontext():
                with options.autocast():
                    self.output = forward(lq)
                l_micro, micro_dict = self.compute_losses(self.output, gt)
                options.backward(l_micro / k)
            total = total + l_micro.detach() / k
            for name, value in micro_dict.items():
                parts[name] = parts.get(name, 0.0) + value.detach() / k
        return total, parts

    # -------------------------------------------------------------------------------------------- checkpoints
    def save(self, epoch, current_iter):
        nets = [self.net_g] + ([self.net_g_ema] if hasattr(self, 'net_g_ema') else [])
        if not all(all_finite(self.get_bare_model(n)) for n in nets):
            get_root_logger().error(f'Not saving iter {current_iter}: the network has non-finite weights; the last '
                                    'checkpoint on disk stays the newest.')
            return
        super().save(epoch, current_iter)

    def save_network(self, net, net_label, current_iter, param_key='params'):
        if self.save_format == 'pth':
            return super().save_network(net, net_label, current_iter, param_key)
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        tensors = {}
        for net_, key in zip(nets, keys):
            for name, value in self.get_bare_model(net_).state_dict().items():
                name = name[7:] if name.startswith('module.') else name
                tensors[f'{key}.{name}'] = value.detach().cpu().contiguous()
        label = 'latest' if current_iter == -1 else current_iter
        path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.safetensors')
        save_safetensors(tensors, path, metadata={'network_g': self.opt['network_g']['type'],
                                                          'param_keys': ','.join(keys)})

    def save_training_state(self, epoch, current_iter):
        state = self.train_options.state_dict()
        cutter = getattr(self, '_device_cutter', None)
        if cutter is not None:  # on_device batches draw their crops from their own generator
            state['device_batches'] = cutter.generator.get_state()
        with extra_training_state(lwsr=state):
            super().save_training_state(epoch, current_iter)

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        state = resume_state.get('lwsr') or {}
        self.train_options.load_state_dict(state)
        cutter = getattr(self, '_device_cutter', None)
        if cutter is not None and state.get('device_batches') is not None:
            cutter.generator.set_state(state['device_batches'].cpu())  # a generator's state is a CPU tensor

    # ---------------------------------------------------------------------------------------------- inference
    def _inference(self, net):
        val_opt = self.opt.get('val') or {}
        scale = self.opt['scale']
        tile = int(val_opt.get('tile', keys.default('val.tile')) or 0)
        overlap = int(val_opt.get('tile_overlap', keys.default('val.tile_overlap')))

        if overlap < 0:
            raise ValueError(f'val.tile_overlap must be >= 0, got {overlap}.')
        layers = tile_stat_layers(net, val_opt.get('tile_stats', keys.default('val.tile_stats')), 'val.tile_stats')

        def forward(x):
            return tiled_forward(net, x, scale, tile, overlap, stat_layers=layers)

        if val_opt.get('self_ensemble', keys.default('val.self_ensemble')):
            return self_ensemble(forward, self.lq)
        return forward(self.lq)

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        with torch.no_grad(), self.train_options.autocast(training=False):
            from lwsr_plugin.fast import fast_inference_net
            # the arch's fast inference form (the module's fp32 output, faster; lwsr_plugin.fast), rebuilt per call
            # since training changes the weights; under autocast the plain net, as the forms run in their weights' dtype
            fast = net if torch.is_autocast_enabled(self.device.type) else fast_inference_net(self.get_bare_model(net))
            self.output = self._inference(fast).float()
        if was_training:
            net.train()


def apply_accumulate(opt):
    """``train.accumulate: k``: the training loader delivers ``k`` micro-batches per iteration (the model splits
    them). Refused, with the fix, for a model that does not accumulate (BasicSR's own would just train on a larger
    batch)."""
    train_opt = opt.get('train') or {}
    if 'accumulate' not in train_opt:
        return
    try:
        k = accumulate_steps(train_opt)
    except TrainingOptionError as err:
        raise SystemExit(f'lwsr_plugin: {err}') from None
    if k == 1:
        return
    model_type = opt.get('model_type', 'SRModel')
    model = MODEL_REGISTRY.get(model_type) if model_type in MODEL_REGISTRY else None
    if model is None or not issubclass(model, LWSRModel):
        raise SystemExit(f'lwsr_plugin: train.accumulate needs a plugin model (model_type: LWSRModel, '
                         f'TwoStageSRModel or a subclass); {model_type} does not accumulate. Change model_type or '
                         'remove train.accumulate.')
    train_set = (opt.get('datasets') or {}).get('train') or {}
    if 'batch_size_per_gpu' in train_set and 'micro_batch' not in train_set:
        train_set['micro_batch'] = train_set['batch_size_per_gpu']
        train_set['batch_size_per_gpu'] = train_set['batch_size_per_gpu'] * k
