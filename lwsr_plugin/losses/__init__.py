"""The papers' training losses that BasicSR lacks, registered in BasicSR's ``LOSS_REGISTRY``; an option file names
them under ``train.pixel_opt`` (and ``train.two_stage.pixel_opt``) like BasicSR's own.

* ``caffe_loss``: ``CaffeL1Loss`` and ``CaffeEuclideanLoss``, IDN's MAE and MSE (Hui et al., CVPR 2018, §3.1.1
  eqs. 5 and 4) normalised as its Caffe training did: the sum over the batch divided by the batch size (and by 2 for
  the Euclidean loss), at any batch size and under ``train.accumulate``.

The other papers' losses are BasicSR's ``L1Loss`` with ``reduction: mean``: IMDN (eq. 2) and s-LWSR (Table I) train
with the ``nn.L1Loss()`` of their PyTorch code; DRN (eq. 16, MAE) released no code. None of their recipes has weight
decay, so their loss's normalisation only rescales what Adam sees.

Every `*_loss.py` module of this folder registers its classes in BasicSR's registries. They are imported by
:func:`lwsr_plugin.register`, which runs before any module of this folder (the plugin's import finder sees to it)."""
