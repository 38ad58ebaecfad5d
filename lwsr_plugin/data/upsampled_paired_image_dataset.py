"""Paired dataset whose LR image is resized to the HR size first: the input of IMDN_AS (IMDN §3.3, Fig. 5), whose
output has its input's size, so any scale factor goes through one model."""
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.registry import DATASET_REGISTRY

from lwsr_plugin.ops.matlab_bicubic import imresize


@DATASET_REGISTRY.register()
class UpsampledPairedImageDataset(PairedImageDataset):
    """BasicSR's ``PairedImageDataset`` (same options) with ``lq`` MATLAB-bicubic resized to the size of ``gt``.

    Keep the top-level ``scale`` at the LR->HR factor: BasicSR uses it to crop (train) or trim (test) the GT to
    ``scale`` x LR, after which the resize makes both the same size.
    """

    def __getitem__(self, index):
        data = super().__getitem__(index)
        data['lq'] = imresize(data['lq'], size=tuple(data['gt'].shape[-2:])).clamp(0, 1)
        return data
