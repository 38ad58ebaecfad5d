"""TensorBoard beyond BasicSR's scalars, for every model (BasicSR's SRModel and the plugin's): validation crops, and
the training loop's speed, data wait and learning rate. Both write to the run's ``tb_logger`` (``logger.use_tb_logger:
true``, rank 0 only) and do nothing without one.

* At each validation, the first :data:`CROP_IMAGES` images of each validation set are written as one image each: the
  :data:`CROP` x :data:`CROP` HR-pixel crop at the image centre (the whole image when smaller), LR (nearest-upscaled)
  | bicubic (MATLAB's, of the LR) | SR | HR side by side, tag ``val_<set>/<image name>``, step = the iteration. The
  visuals are those validation computes anyway (captured from ``get_current_visuals``), so there is no extra forward;
  1-channel (Y-only) images are shown in grey.
* Every ``logger.print_freq`` iterations, beside BasicSR's own scalars: ``train/it_per_s`` and
  ``train/data_wait_share`` from BasicSR's timers, the averaged iteration time and data time that its line prints as
  ``time (data)`` (the iteration time includes the wait for the batch; validation and checkpoints are outside both),
  and ``train/lr``, the learning rate of the first optimizer (``train/lr/group_<i>`` per param group when it has
  several), as ``get_current_learning_rate`` returns it.
"""
import contextlib
import os

import torch

from lwsr_plugin.ops.matlab_bicubic import imresize

CROP = 96  # HR pixels per side of each crop
CROP_IMAGES = 2  # images per validation set shown
_BICUBIC_MARGIN = 4  # LR pixels of context around the crop: bicubic reads 2 on each side, so the crop is exact


def _box(img, top, left, height, width):
    return img[..., top:top + height, left:left + width]


def crop_panel(visuals, scale, crop=CROP):
    """One CHW float image in [0, 1], RGB: LR (nearest) | bicubic | SR | HR of the centre crop of ``visuals`` (BasicSR's
    ``get_current_visuals``: ``lq``, ``result`` and optionally ``gt``, NCHW); HR is left out when there is none."""
    lq = visuals['lq'][0].float()
    h, w = lq.shape[-2:]
    side = max(crop // scale, 1)
    ch, cw = min(side, h), min(side, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    t0, l0 = max(top - _BICUBIC_MARGIN, 0), max(left - _BICUBIC_MARGIN, 0)
    region = lq[..., t0:min(top + ch + _BICUBIC_MARGIN, h), l0:min(left + cw + _BICUBIC_MARGIN, w)]
    bicubic = _box(imresize(region, scale=scale), (top - t0) * scale, (left - l0) * scale, ch * scale, cw * scale)
    nearest = _box(lq, top, left, ch, cw).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    panels = [nearest, bicubic]
    for key in ('result', 'gt'):
        if visuals.get(key) is not None:
            panels.append(_box(visuals[key][0].float(), top * scale, left * scale, ch * scale, cw * scale))
    # an SR or HR image that is not exactly scale x LR (a model that crops) is cut to the common size
    height, width = min(p.shape[-2] for p in panels), min(p.shape[-1] for p in panels)
    panels = [p[..., :height, :width] for p in panels]
    panels = [p.expand(3, -1, -1) if p.shape[0] == 1 else p[:3] for p in panels]
    return torch.cat(panels, dim=-1).clamp(0, 1)


class _ValidationCrops:
    """The visuals of the first images one validation shows, captured while it runs; then written as crops."""

    def __init__(self, model, dataset_name):
        self.model, self.dataset_name = model, dataset_name
        self.names, self.panels = [], []

    @contextlib.contextmanager
    def capturing(self):
        """While active, the model's ``feed_data`` notes each image's name and ``get_current_visuals`` keeps the
        crop of the first :data:`CROP_IMAGES` images (instance attributes, removed on exit)."""
        model, feed_data, get_current_visuals = self.model, self.model.feed_data, self.model.get_current_visuals
        scale = int(model.opt['scale'])

        def feed(data):
            # the HR file's name is the image's (the LR file's often carries a suffix, e.g. babyx4)
            paths = (data.get('gt_path') or data.get('lq_path')) if isinstance(data, dict) else None
            self.names.append(os.path.splitext(os.path.basename(paths[0]))[0] if paths else None)
            return feed_data(data)

        def visuals():
            out = get_current_visuals()
            if len(self.panels) < CROP_IMAGES and len(self.panels) < len(self.names):
                name = self.names[len(self.panels)] or f'{len(self.panels):03d}'
                self.panels.append((name, crop_panel(out, scale)))
            return out

        model.feed_data, model.get_current_visuals = feed, visuals
        try:
            yield self
        finally:
            del model.feed_data, model.get_current_visuals

    def write(self, tb_logger, current_iter):
        for name, panel in self.panels:
            tb_logger.add_image(f'val_{self.dataset_name}/{name}', panel, current_iter)


def wrap_validation(original):
    """Validation that also writes the crops of its first images to ``tb_logger`` (when there is one)."""

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        # an instance attribute already there would be another capture in progress (a validation inside one)
        if tb_logger is None or 'get_current_visuals' in vars(self):
            return original(self, dataloader, current_iter, tb_logger, save_img)
        crops = _ValidationCrops(self, dataloader.dataset.opt['name'])
        with crops.capturing():
            result = original(self, dataloader, current_iter, tb_logger, save_img)
        crops.write(tb_logger, current_iter)
        return result

    validation.__wrapped__ = original
    return validation


def training_scalars(log_vars):
    """``{tag: value}`` of the training scalars for one of BasicSR's ``MessageLogger`` calls (its ``log_vars``)."""
    scalars = {}
    iter_time, data_time = log_vars.get('time'), log_vars.get('data_time')
    if iter_time:
        scalars['train/it_per_s'] = 1.0 / iter_time
        if data_time is not None:
            scalars['train/data_wait_share'] = data_time / iter_time
    lrs = list(log_vars.get('lrs') or [])
    if len(lrs) == 1:
        scalars['train/lr'] = lrs[0]
    else:
        scalars.update((f'train/lr/group_{i}', lr) for i, lr in enumerate(lrs))
    return scalars


def wrap_message_logger_call(original):
    """BasicSR's periodic line, with :func:`training_scalars` written to its ``tb_logger`` first (the line pops the
    timers out of ``log_vars``)."""

    def __call__(self, log_vars):
        tb_logger = getattr(self, 'tb_logger', None)
        if tb_logger is not None and 'iter' in log_vars:
            for tag, value in training_scalars(log_vars).items():
                tb_logger.add_scalar(tag, value, log_vars['iter'])
        return original(self, log_vars)

    __call__.__wrapped__ = original
    return __call__


def install():
    """Wrap BasicSR's ``BaseModel.validation`` and ``MessageLogger.__call__`` (every model inherits them)."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.logger import MessageLogger
    BaseModel.validation = wrap_validation(BaseModel.validation)
    MessageLogger.__call__ = wrap_message_logger_call(MessageLogger.__call__)
