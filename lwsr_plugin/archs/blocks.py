"""Building blocks shared by the plugin archs, written once.

Parameter names follow the official releases where checkpoints exist (IMDN: ``conv_du``, ``upsampler.0``), so that
official state dicts load strictly into every arch that uses these blocks.
"""
import torch
from torch import nn


# RGB mean of DIV2K's training images, which EDSR-lineage models (DRN, s-LWSR) subtract from their input
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv_layer(in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, bias=True):
    """Convolution with 'same' padding for odd kernels (spatial size kept at stride 1, halved at stride 2)."""
    padding = (kernel_size - 1) // 2 * dilation
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=padding, dilation=dilation, groups=groups, bias=bias)


def activation(act_type='lrelu', neg_slope=0.05, inplace=True):
    """Activation by name. IMDN and IDN use LeakyReLU with slope 0.05 (IMDN Table 1, IDN §3)."""
    act_type = act_type.lower()
    if act_type == 'relu':
        return nn.ReLU(inplace)
    if act_type == 'lrelu':
        return nn.LeakyReLU(neg_slope, inplace)
    if act_type == 'prelu':
        return nn.PReLU(init=neg_slope)
    if act_type == 'elu':
        return ELU(neg_slope, inplace)
    raise ValueError(f'Unknown activation {act_type!r}: use relu, lrelu, prelu or elu.')


class _ELUTrain(torch.autograd.Function):
    """ELU for training on CPU with the vectorised ``exp`` (see :class:`ELU`). Backward from the saved output by
    PyTorch's own (fast) ``elu_backward`` kernel, as its in-place ELU does: 1 where y > 0, else alpha * exp(x) =
    y + alpha."""

    @staticmethod
    def forward(ctx, x, alpha):
        negative = torch.clamp(x, max=0).exp_().sub_(1).mul_(alpha)
        y = x.clamp(min=0).add_(negative)
        ctx.alpha = alpha
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, ctx.alpha, 1.0, 1.0, True, y), None


class ELU(nn.ELU):
    """ELU (DRN §3.1, alpha 0.2) computed with the vectorised ``exp`` on CPU: PyTorch's CPU ELU kernel takes ~6.5 ns
    per negative element here (1.5 ms on a 16x90x160 map against 0.19 ms for ``exp``; in bf16 training 28 ms per
    call, 78 % of a DRN training step), which made ELU half of DRN's forward time. alpha * (exp(x) - 1) differs from
    the expm1 form by < 1.2e-7 * alpha. Training uses the same forward with a hand-written backward
    (:class:`_ELUTrain`); other devices use ``F.elu`` unchanged."""

    def forward(self, x):
        if x.device.type != 'cpu':
            return super().forward(x)
        if x.requires_grad and torch.is_grad_enabled():
            return _ELUTrain.apply(x, self.alpha)
        negative = torch.clamp(x, max=0).exp_().sub_(1).mul_(self.alpha)
        return (x.clamp_(min=0) if self.inplace else x.clamp(min=0)).add_(negative)


class _Contrast(torch.autograd.Function):
    """Eq. 5 with a hand-written backward: d(std)/dx = (x - mean) / (HW * std) (the mean's own term cancels, since
    the deviations sum to 0) and d(mean)/dx = 1 / HW, one fused pass over the map. Autograd's generic chain (sqrt,
    mean, square, sub, mean) made several full-size temporaries and accumulations per CCA layer in training."""

    @staticmethod
    def forward(ctx, x):
        mean = x.mean(dim=(2, 3), keepdim=True)
        centred = x - mean
        std = centred.square().mean(dim=(2, 3), keepdim=True).sqrt()
        ctx.save_for_backward(centred, std)
        return std + mean

    @staticmethod
    def backward(ctx, grad):
        centred, std = ctx.saved_tensors
        hw = centred.shape[2] * centred.shape[3]
        # a constant map (std 0) has centred 0: its std term is 0, where autograd's sqrt backward would give NaN
        coef = grad / (std.clamp_min(torch.finfo(std.dtype).tiny) * hw)
        return torch.addcmul(grad / hw, centred, coef)


def contrast(x):
    """Global contrast of each feature map: standard deviation + mean over H x W (IMDN eq. 5)."""
    # two passes (mean, then mean of squared deviations) instead of torch.std_mean: the same population std to
    # ~1e-7, but std_mean's Welford kernel is ~6x slower on 64-channel maps and was 10% of an IMDN forward
    if torch.is_grad_enabled() and x.requires_grad:
        return _Contrast.apply(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
    return std + mean


class CCALayer(nn.Module):
    """Contrast-aware channel attention (IMDN §3.2.2, Fig. 3): SE-style gating driven by eq. 5 instead of the mean.

    Args:
        channels (int): Feature channels.
        reduction (int): Squeeze ratio of the two 1x1 convs. Default: 16.
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        squeezed = max(channels // reduction, 1)  # narrow test/demo configs still get a 1-channel squeeze
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, squeezed, 1, bias=True), nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, channels, 1, bias=True), nn.Sigmoid())
        # Set by tiled inference (lwsr_plugin.inference.tiled_forward): a callable (layer, x) -> (N, C, 1, 1) that
        # supplies image-wide statistics, since a tile's own mean/std differ from the whole image's.
        self.stats_hook = None

    def statistics(self, x):
        """Eq. 5 input: std + mean of each feature map, (N, C, 1, 1)."""
        return contrast(x) if self.stats_hook is None else self.stats_hook(self, x)

    def forward(self, x):
        return x * self.conv_du(self.statistics(x))


def pixelshuffle_block(in_channels, out_channels, upscale, kernel_size=3):
    """One conv to ``out_channels * upscale**2`` then sub-pixel shuffle (ESPCN; IMDN's and DRN's upsampler)."""
    return nn.Sequential(conv_layer(in_channels, out_channels * upscale**2, kernel_size), nn.PixelShuffle(upscale))


class ShortcutBlock(nn.Module):
    """``x + sub(x)``; named ``sub`` as in the official IMDN_RTC graph."""

    def __init__(self, sub):
        super().__init__()
        self.sub = sub

    def forward(self, x):
        return x + self.sub(x)


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


def check_upscale(upscale, arch):
    """Fail early, naming the YAML key, when ``network_g.upscale`` is not a positive integer."""
    if not isinstance(upscale, int) or isinstance(upscale, bool) or upscale < 1:
        raise ValueError(f'{arch}: network_g.upscale must be a positive integer (2, 3 or 4), got {upscale!r}.')


class ResBlock(nn.Module):
    """EDSR residual block without BN: ``x + res_scale * conv(act(conv(x)))`` (s-LWSR §III-A, eq. 1).

    Parameter names ``body.0`` / ``body.2`` follow the EDSR/RCAN code base that s-LWSR's release uses. With
    ``act=False`` the activation slot holds ``nn.Identity`` so that the block is really linear (s-LWSR §III-E) while
    the conv names stay the same.

    Args:
        num_feat (int): Channels in and out. Default: 64.
        kernel_size (int): Kernel of both convs. Default: 3.
        act (bool): Keep the ReLU between the convs. Default: True.
        res_scale (float): Scale of the residual branch (alpha in eq. 1). Default: 1.
    """

    def __init__(self, num_feat=64, kernel_size=3, act=True, res_scale=1.):
        super().__init__()
        self.res_scale = res_scale
        self.body = nn.Sequential(
            conv_layer(num_feat, num_feat, kernel_size), nn.ReLU(inplace=True) if act else nn.Identity(),
            conv_layer(num_feat, num_feat, kernel_size))

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual with linear bottleneck (Sandler et al., CVPR 2018; s-LWSR §III-D, Fig. 4):
    1x1 expansion to ``expansion * num_feat`` channels, ReLU, 3x3 depthwise conv, ReLU, 1x1 linear projection,
    identity shortcut. No BN, as everywhere in EDSR-style SR networks.

    ReLU instead of MobileNetV2's ReLU6: SR features here live on the 0-255 pixel scale, where a cap at 6 would
    saturate most activations.

    Args:
        num_feat (int): Channels in and out. Default: 64.
        expansion (float): Hidden width / ``num_feat`` (MobileNetV2's t). Default: 6.
        act (bool): Keep the two ReLUs; False makes the block linear (s-LWSR §III-E). Default: True.
    """

    def __init__(self, num_feat=64, expansion=6, act=True):
        super().__init__()
        hidden = max(1, int(round(num_feat * expansion)))
        self.body = nn.Sequential(
            conv_layer(num_feat, hidden, 1), nn.ReLU(inplace=True) if act else nn.Identity(),
            conv_layer(hidden, hidden, 3, groups=hidden), nn.ReLU(inplace=True) if act else nn.Identity(),
            conv_layer(hidden, num_feat, 1))

    def forward(self, x):
        return x + self.body(x)


class MeanShift(nn.Module):
    """Fixed per-channel affine map ``y = W x + b`` (a 1x1 conv), by default ``x + sign * img_range * rgb_mean``.

    The map is kept as plain tensor attributes, not parameters or buffers: it is not trained, not counted, and not
    broadcast by DDP (as the mean in BasicSR's EDSR). EDSR-era checkpoints store ``sub_mean`` / ``add_mean`` as
    conv weights which in practice drifted during training (their ``requires_grad=False`` was set on the module, not
    on its parameters); those ``weight`` / ``bias`` keys are optional here: when present in a state dict they are
    consumed and used, so such a checkpoint loads strictly and reproduces its outputs. ``state_dict()`` contains
    them only when they differ from the plain mean shift, so a round trip keeps the drifted values.

    Args:
        rgb_mean (sequence[float]): Mean per channel in [0, 1].
        img_range (float): Pixel range the mean is scaled to. Default: 255.
        sign (int): -1 subtracts the mean, +1 adds it back. Default: -1.
    """

    def __init__(self, rgb_mean, img_range=255., sign=-1):
        super().__init__()
        n = len(rgb_mean)
        self.weight = torch.eye(n).view(n, n, 1, 1)
        self.bias = sign * img_range * torch.tensor(rgb_mean, dtype=torch.float32)
        self._default = (self.weight.clone(), self.bias.clone())

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() move the plain tensors too, as they would buffers, so forward does not copy them
        # host-to-device on every call; the defaults follow so that is_default still compares like with like
        self.weight, self.bias = fn(self.weight), fn(self.bias)
        self._default = tuple(fn(t) for t in self._default)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x):
        # a no-op when _apply already matched them to the input; needed after loading CPU tensors into a moved model
        return nn.functional.conv2d(x, self.weight.to(x), self.bias.to(x))

    def is_default(self):
        return torch.equal(self.weight, self._default[0]) and torch.equal(self.bias, self._default[1])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.is_default():
            destination[prefix + 'weight'] = self.weight.clone()
            destination[prefix + 'bias'] = self.bias.clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in ('weight', 'bias'):
            key = prefix + name
            if key in state_dict:
                value = state_dict.pop(key)  # consumed here, so strict loading does not report it as unexpected
                old = getattr(self, name)
                if value.shape != old.shape:
                    error_msgs.append(f'size mismatch for {key}: copying {tuple(value.shape)} into {tuple(old.shape)}.')
                    continue
                setattr(self, name, value.detach().to(torch.float32).clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
