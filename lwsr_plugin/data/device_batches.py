"""``DeviceBatches``: training batches of ``InMemoryPairedImageDataset`` cut on the model's device.

With ``on_device: true`` in the train dataset, the DataLoader only delivers pair indices (``{'index': tensor}``) and
``LWSRModel.feed_data`` passes them here. The whole decoded set (the dataset's cache: uint8 HWC BGR images, GT and
LQ) is copied to the device once, as one flat uint8 tensor with an int64 ``(n, 2, 4)`` index of ``(offset, h, w, c)``;
each batch is then cut from it with one gather: no decoding, no per-sample Python and no host-to-device copy of
pixels, so the data path costs the GPU a few small kernels per step and the CPU nothing.

The patches follow BasicSR's distributions: the position of ``paired_random_crop`` (LQ top/left uniform over
``[0, h_lq - gt_size // scale]`` / ``[0, w_lq - ...]``, GT at scale x that) and the flips and transposition of
``augment`` (hflip if ``use_hflip``, vflip and transpose if ``use_rot``, each with p = 0.5, flips before the
transposition); values as ``img2tensor(imfrombytes(..., float32=True), bgr2rgb=True)`` (float32 = uint8 / 255, RGB,
NCHW), ``color: y`` as ``bgr2ycbcr(y_only=True)`` (in float32), ``mean``/``std`` by the same ``normalize``. The draws
come from a ``torch.Generator`` on the device, not from Python's ``random``, so the patches are not the ones
``PairedImageDataset`` would give for the same seed; they are reproducible for a seed (``seed`` argument, else the
dataset's ``seed`` option, else one draw from torch's global generator, which BasicSR seeds with ``manual_seed +
rank``), and every DDP rank adds its rank to it so that ranks draw differently.

On a CPU device the mapped cache file is used in place (copying it would only duplicate it in RAM).
"""
import time
import warnings

import torch
from torchvision.transforms.functional import normalize

from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from lwsr_plugin.data.in_memory_paired_image_dataset import (GT, LQ, InMemoryPairedImageDataset, format_size)

# memory left free on a CUDA device beside the set: the network, its activations and the optimiser need some too
RESERVE_BYTES = 1 << 30
# basicsr.utils.color_util.bgr2ycbcr(y_only=True): Y = (24.966 B + 128.553 G + 65.481 R + 16) / 255, B, G, R in [0, 1]
Y_WEIGHTS_BGR = (24.966, 128.553, 65.481)


def device_memory(device):
    """``(free, total)`` bytes of a CUDA device; None for devices without such a query (CPU, where the set is not
    copied, and others)."""
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)
    return None


class DeviceBatches:
    """Random training patches of ``InMemoryPairedImageDataset`` cut on ``device`` (see module docstring).

    Reproduces the distribution of BasicSR's ``paired_random_crop`` + ``augment`` + ``img2tensor`` (and
    ``bgr2ycbcr`` for ``color: y``), as ``PairedImageDataset`` applies them.

    Args:
        dataset_opt (dict): the train dataset's options (as BasicSR passes them to the dataset, with ``phase`` and
            ``scale``; ``phase`` defaults to ``train``). The cache is the dataset's: built here if it is missing,
            reused otherwise.
        device (torch.device | str): where the set is kept and the batches are cut.
        seed (int, optional): seed of the draws (before the rank is added); see module docstring.

    Attributes:
        dataset: the ``InMemoryPairedImageDataset`` whose cache is used.
        buffer: flat uint8 tensor of all images on ``device``; ``index``: ``(n, 2, 4)`` int64 on ``device``.
        seed: the seed of ``generator`` (rank included).
    """

    def __init__(self, dataset_opt, device, seed=None):
        # on_device: the dataset then checks what this needs (train phase, seed) and is never read item by item
        opt = {'phase': 'train', **dataset_opt, 'on_device': True}
        self.dataset = dataset = InMemoryPairedImageDataset(opt)
        self.device = device = torch.device(device)
        if device.type == 'cuda' and device.index is None:
            self.device = device = torch.device('cuda', torch.cuda.current_device())
        self.scale = dataset.scale
        self.gt_size = opt['gt_size']
        self.lq_size = self.gt_size // self.scale
        self.use_hflip, self.use_rot = bool(opt['use_hflip']), bool(opt['use_rot'])
        self.y_only = opt.get('color') == 'y'
        self.mean, self.std = opt.get('mean'), opt.get('std')

        buffer, index = dataset.cache_data()
        if not (index[:, :, 3] == 3).all():  # the gather below assumes HWC with 3 channels (imdecode IMREAD_COLOR)
            raise dataset._error(f'the cache {dataset.cache_path} holds images without 3 channels; delete it so that '
                                 'it is built again.')
        self.count = len(index)
        self._check_memory(buffer.nbytes + index.nbytes)
        start = time.time()
        self.buffer = self._to_device(buffer)
        self.index = torch.from_numpy(index).to(device)
        # channel order of the gather: RGB output reads B, G, R planes reversed; Y reads them in BGR order
        self._channels = torch.tensor([0, 1, 2] if self.y_only else [2, 1, 0], device=device)
        how = 'mapped in place' if device.type == 'cpu' else f'copied to {device} in {time.time() - start:.1f} s'
        get_root_logger().info(f'{dataset.name} ({opt.get("name", "train")}): {self.count} GT/LQ pairs '
                               f'({format_size(buffer.nbytes)}) {how}; training batches are cut on {device}.')

        if seed is None:
            seed = opt.get('seed')
        if seed is None:
            # BasicSR seeds torch's global generator with manual_seed + rank: this draw follows manual_seed
            seed = int(torch.randint(0, 1 << 62, (1,)).item())
        rank, _ = get_dist_info()
        self.seed = int(seed) + rank
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)

    # ------------------------------------------------------------------------------------------------ set up
    def _check_memory(self, nbytes):
        memory = device_memory(self.device)
        if memory is None:
            return
        free, _ = memory
        if nbytes + RESERVE_BYTES > free:
            ds = self.dataset
            raise ds._error(
                f'on_device: true needs {format_size(nbytes)} ({nbytes} bytes) on {self.device} for the decoded '
                f'{self.count} GT/LQ pairs of {ds.gt_folder} plus {format_size(RESERVE_BYTES)} kept for training, '
                f'but {format_size(free)} are free there; set on_device: false (the DataLoader cuts the batches '
                'from the host cache) or train on fewer images (meta_info_file; max_memory bounds the decoded set).')

    def _to_device(self, buffer):
        """The mapped cache data as a flat uint8 tensor on the device."""
        with warnings.catch_warnings():
            # torch warns that the mapping is read-only: nothing here ever writes into it
            warnings.filterwarnings('ignore', message='The given NumPy array is not writable')
            flat = torch.from_numpy(buffer)
        # straight from the mapping: the host never holds a second copy of a set that may be tens of GB
        return flat if self.device.type == 'cpu' else flat.to(self.device)

    # ------------------------------------------------------------------------------------------------ batches
    def __len__(self):
        return self.count

    def __call__(self, indices, return_params=False):
        """``{'lq': (N, C, p, p), 'gt': (N, C, p * scale, p * scale)}`` float32 on the device for pair indices
        ``indices`` (any int tensor or sequence; C is 3, RGB, or 1 for ``color: y``). With ``return_params``, also
        the draws: ``(batch, {'index', 'top', 'left', 'hflip', 'vflip', 'rot90'})`` (LQ top/left; GT ones are
        ``scale`` times them; flips and transposition in ``augment``'s order)."""
        idx = torch.as_tensor(indices)
        if idx.device.type == 'cpu' and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.count):
            # checked only where it costs no device synchronisation (indices from the DataLoader are on the CPU)
            raise IndexError(f'DeviceBatches: pair indices must be in [0, {self.count}), got {idx.min()}..'
                             f'{idx.max()}.')
        idx = idx.to(self.device, torch.long).reshape(-1)
        n = idx.numel()
        rec = self.index.index_select(0, idx)
        lq_h, lq_w = rec[:, LQ, 1], rec[:, LQ, 2]

        # paired_random_crop's randint(0, h_lq - p) per sample; 62-bit draws reduced modulo the span are uniform
        # to within span / 2**62
        draws = torch.randint(0, 1 << 62, (2, n), generator=self.generator, device=self.device)
        top = draws[0] % (lq_h - self.lq_size + 1)
        left = draws[1] % (lq_w - self.lq_size + 1)
        # augment's three coin flips; all three are drawn even when disabled so that the stream does not depend
        # on use_hflip / use_rot
        coins = torch.rand((3, n), generator=self.generator, device=self.device) < 0.5
        off = torch.zeros_like(coins[0])
        hflip = coins[0] if self.use_hflip else off
        vflip = coins[1] if self.use_rot else off
        rot90 = coins[2] if self.use_rot else off

        lq = self._cut(rec[:, LQ], top, left, self.lq_size, hflip, vflip, rot90)
        gt = self._cut(rec[:, GT], top * self.scale, left * self.scale, self.gt_size, hflip, vflip, rot90)
        if self.mean is not None or self.std is not None:
            normalize(lq, self.mean, self.std, inplace=True)
            normalize(gt, self.mean, self.std, inplace=True)
        batch = {'lq': lq, 'gt': gt}
        if return_params:
            return batch, {'index': idx, 'top': top, 'left': left, 'hflip': hflip, 'vflip': vflip, 'rot90': rot90}
        return batch

    def _cut(self, rec, top, left, size, hflip, vflip, rot90):
        """``(N, C, size, size)`` float32 patches at ``(top, left)`` of the images ``rec`` (``(N, 4)`` offset, h, w,
        c), flipped/transposed per sample by moving the coordinates the pixels are read from."""
        k = torch.arange(size, device=self.device).view(1, size)
        # augment flips first: the flipped crop's row k is the image's row top + (size-1-k if vflip else k), its
        # column k the image's column left + (size-1-k if hflip else k); as byte offsets into the flat buffer
        rows = torch.where(vflip.view(-1, 1), size - 1 - k, k) + top.view(-1, 1)
        cols = torch.where(hflip.view(-1, 1), size - 1 - k, k) + left.view(-1, 1)
        rows = rec[:, 0].view(-1, 1) + rows * (rec[:, 2] * 3).view(-1, 1)
        cols = cols * 3
        # ... then transposes: output (i, j) is the flipped crop's (j, i), so the row term goes along j instead of
        # i. Per sample the offset of output (i, j) is along_i[i] + along_j[j]: one broadcast add, no (N, p, p) grid
        # of coordinates to transform
        rot90 = rot90.view(-1, 1)
        along_i = torch.where(rot90, cols, rows)
        along_j = torch.where(rot90, rows, cols)
        flat = along_i.view(-1, 1, size, 1) + (along_j.view(-1, 1, 1, size) + self._channels.view(1, -1, 1, 1))
        # imfrombytes(float32=True)'s uint8 -> float32 / 255, which rounds the same way here
        patch = torch.take(self.buffer, flat).float().div_(255.)
        if self.y_only:
            b, g, r = patch.unbind(1)
            wb, wg, wr = Y_WEIGHTS_BGR
            patch = ((b * wb + g * wg + r * wr + 16.) / 255.).unsqueeze(1)
        return patch
