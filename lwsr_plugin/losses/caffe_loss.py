"""IDN's training losses (Hui et al., CVPR 2018, §3.1.1 "Loss function", eqs. 4 and 5) as IDN-Caffe computes them.

The paper writes both losses per sample: ``l_MAE = 1/N sum_i ||I_i - Î_i||_1`` (eq. 5) and ``l_MSE = 1/N sum_i
||I_i - Î_i||_2^2`` (eq. 4), N the number of patches in the batch; "we first train the network with MAE loss and then
fine-tune it by MSE loss". IDN was trained with the Caffe package (§4.2), whose loss layers keep that normalisation:

* IDN-Caffe's own ``L1Loss`` layer (``train/src/caffe/layers/l1_loss_layer.cpp``, the ``loss`` layer of its training
  prototxts): forward ``asum(a - b) / num``, backward ``sign(a - b) / num``;
* Caffe's ``EuclideanLoss`` (the fine-tune loss): forward ``dot(a - b, a - b) / num / 2``, backward ``(a - b) / num``.

``num`` is the batch size. A loss normalised per sample, not per pixel, sets how strongly the solver's L2 weight decay
(1e-4) pulls against the data term, and dividing by the batch a pass actually holds keeps that balance at any
``batch_size_per_gpu``, under ``train.accumulate`` (each of k micro-batches is normalised by its own size and then
divided by k: the k passes add up to the whole batch's loss) and under DDP (which averages the processes' gradients).

Both take BasicSR's pixel-loss call ``(pred, target, weight=None)`` and reduce in fp32 whatever the input dtype, so a
bf16 output summed over a batch keeps fp32 precision.
"""
from torch import nn

from basicsr.losses.basic_loss import l1_loss, mse_loss
from basicsr.utils.registry import LOSS_REGISTRY


class _PerSampleLoss(nn.Module):
    """Sum of the element-wise loss ``elementwise`` (a BasicSR ``@weighted_loss`` function) over a batch, divided by
    ``divisor`` times the batch size N (Caffe's ``num``).

    Args:
        loss_weight (float): Factor on the loss (Caffe's ``loss_weight``). Default: 1.0.
    """
    divisor = 1

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, **kwargs):
        """
        Args:
            pred (Tensor): (N, C, H, W) network output.
            target (Tensor): (N, C, H, W) ground truth.
            weight (Tensor, optional): (N, C or 1, H, W) element-wise weights, as BasicSR's pixel losses take them.
        """
        # fp32 before the sum: a bf16 sum over a whole batch keeps 3 significant digits. Dividing after the sum, as
        # Caffe does, makes the loss bit-for-bit the batch-tied ``sum x 2^-k`` when N is a power of two
        total = self.elementwise(pred.float(), target.float(), weight, reduction='sum')
        return self.loss_weight * (total / (self.divisor * pred.shape[0]))


@LOSS_REGISTRY.register()
class CaffeL1Loss(_PerSampleLoss):
    """IDN's MAE (§3.1.1, eq. 5; stage 1 and the §4.2 pre-training) as IDN-Caffe's ``L1Loss`` layer computes it:
    ``loss_weight * sum(|pred - target|) / N``, the sum over every element of the batch, N the batch size.

    Equals BasicSR's ``L1Loss`` with ``reduction: sum`` and ``loss_weight: 1 / N`` for that one N.

    Args:
        loss_weight (float): Factor on the loss (Caffe's ``loss_weight``). Default: 1.0.
    """
    elementwise = staticmethod(l1_loss)


@LOSS_REGISTRY.register()
class CaffeEuclideanLoss(_PerSampleLoss):
    """IDN's MSE fine-tune loss (§3.1.1, eq. 4; stage 2) as Caffe's ``EuclideanLoss`` layer computes it:
    ``loss_weight * sum((pred - target)^2) / (2 N)``, the sum over every element of the batch, N the batch size.

    The layer's 1/2 (absent from eq. 4) is what the released training ran with; its gradient is ``(pred - target) / N``.
    Equals BasicSR's ``MSELoss`` with ``reduction: sum`` and ``loss_weight: 1 / (2 N)`` for that one N.

    Args:
        loss_weight (float): Factor on the loss (Caffe's ``loss_weight``). Default: 1.0.
    """
    divisor = 2
    elementwise = staticmethod(mse_loss)
