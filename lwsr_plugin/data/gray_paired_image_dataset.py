"""``PairedGrayImageDataset``: BasicSR's ``PairedImageDataset`` for 1-channel (Y-only) records, such as the LMDBs of
``lwsr_plugin.data.set291 --y-only`` that IDN trains on.

BasicSR decodes every record with ``cv2.IMREAD_COLOR``, which turns a grey PNG into three equal channels, and its
``color: y`` option would then apply the RGB->Y formula again (mapping v to 16 + 219 v / 255). This dataset keeps
one of the equal channels instead, so ``lq``/``gt`` are (1, h, w) tensors holding the stored values.
"""
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.registry import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class PairedGrayImageDataset(PairedImageDataset):
    """Paired dataset of grey/Y records returning 1-channel ``lq`` and ``gt``; options as ``PairedImageDataset``
    except ``color`` (the records already are Y) and ``mean``/``std``, which take one value each."""

    def __init__(self, opt):
        if opt.get('color'):
            raise ValueError(f'{type(self).__name__}: records are already one channel; remove "color: '
                             f'{opt["color"]}" from the dataset options.')
        super().__init__(opt)

    def __getitem__(self, index):
        data = super().__getitem__(index)
        data['lq'] = data['lq'][:1]
        data['gt'] = data['gt'][:1]
        return data
