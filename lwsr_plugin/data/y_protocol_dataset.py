"""``YProtocolDataset``: Y-channel test sets for 1-channel models (IDN), with the LR made as IDN's paper made it or
read from the 8-bit LR files a deployed model would get.

``lq_from: hr`` (default) is IDN's evaluation protocol (IDN §4.1.2; ``test_IDN.m`` of the official IDN-Caffe release),
which produced the paper's Tables 2 and 3:

1. the ground truth is the Y channel of the HR image, MATLAB ``rgb2ycbcr`` on uint8 (so Y is rounded to integers),
   cut to a multiple of the scale (MATLAB ``modcrop``);
2. the LR input is MATLAB ``imresize(Y, 1/scale, 'bicubic')`` of that Y in floating point, never rounded to 8 bits;
3. a single-channel image is its own Y (``rgb2ycbcr`` is only applied to colour images).

The model's output is rounded to uint8 and ``scale`` pixels are shaved by BasicSR's test path and the option file's
``crop_border``, which completes the protocol.

``lq_from: file`` reads the LR images of ``dataroot_lq`` (``filename_tmpl`` as ``PairedImageDataset``) and takes
their Y without rounding, which is what ``lwsr-upscale`` feeds a Y model; the ground truth is the rounded Y of the HR
image cut to ``scale`` x the LR size. Its numbers are slightly lower than the paper's (docs/evaluation.md).

Both modes share the plugin's grey-image convention: a single-channel image is luma, used as Y as stored (BasicSR's
loader would first make it three equal channels and then map v to 16 + 219 v / 255).
"""
import os

import cv2
import numpy as np
import torch
from torch.utils import data

from basicsr.utils.registry import DATASET_REGISTRY

from lwsr_plugin.data.images import IMG_EXTS
from lwsr_plugin.ops.matlab_bicubic import imresize

# MATLAB rgb2ycbcr's luma row for RGB in [0, 255] (ITU-R BT.601, studio swing)
_Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966]) / 255.


def read_y(path, rounded=True):
    """Y channel of an 8-bit image file as float64 in [0, 255]: a grey image as stored, a colour image (alpha
    dropped) through MATLAB ``rgb2ycbcr``; ``rounded`` rounds Y as ``rgb2ycbcr`` on uint8 does."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'{path}: unreadable or not an image; fix or remove the file.')
    if img.dtype != np.uint8:
        raise ValueError(f'{path}: {img.dtype} pixels; the benchmark protocols are defined on 8-bit images, '
                         'convert it to 8 bits.')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return img.astype(np.float64)
    rgb = img[..., 2::-1].astype(np.float64)  # cv2 order is BGR(A)
    y = 16. + rgb @ _Y_WEIGHTS_RGB
    # MATLAB's uint8 conversion rounds halves away from zero (np.round would round them to even)
    return np.floor(y + 0.5) if rounded else y


@DATASET_REGISTRY.register()
class YProtocolDataset(data.Dataset):
    """Test set of (LR Y, HR Y) pairs, 1-channel float tensors in [0, 1].

    Options:
        dataroot_gt (str): Folder of HR images (colour or grey, 8 bit).
        scale (int): Set by BasicSR from the option file's top-level ``scale``.
        lq_from (str): ``hr`` (IDN's protocol, default) or ``file``.
        dataroot_lq (str): ``lq_from: file`` only: folder of LR images.
        filename_tmpl (str): ``lq_from: file`` only: LR file stem from the HR stem, e.g. ``'{}x4'``. Default ``'{}'``.
        io_backend (dict): ``{type: disk}`` only.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        name = opt.get('name', 'YProtocolDataset')
        self.scale = int(opt['scale'])
        self.lq_from = opt.get('lq_from', 'hr')
        if self.lq_from not in ('hr', 'file'):
            raise ValueError(f'datasets.{name}.lq_from: {self.lq_from!r} is not a mode; use hr (IDN protocol: float '
                             'MATLAB-bicubic LR made from the HR Y) or file (the 8-bit LR files of dataroot_lq).')
        backend = (opt.get('io_backend') or {'type': 'disk'}).get('type', 'disk')
        if backend != 'disk':
            raise ValueError(f'datasets.{name}.io_backend: {backend} is not supported by YProtocolDataset; use '
                             '{type: disk} (the benchmark sets are image folders).')
        if opt.get('color'):
            raise ValueError(f'datasets.{name}.color: YProtocolDataset always returns Y; remove "color: '
                             f'{opt["color"]}".')
        folder = opt['dataroot_gt']
        self.gt_paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                               if n.lower().endswith(IMG_EXTS) and not n.startswith('.'))
        if not self.gt_paths:
            raise ValueError(f'datasets.{name}.dataroot_gt: {folder} holds no images; point it to the HR folder.')
        self.lq_paths = self.gt_paths
        if self.lq_from == 'file':
            if not opt.get('dataroot_lq'):
                raise ValueError(f'datasets.{name}: lq_from: file needs dataroot_lq (the LR folder); add it or use '
                                 'lq_from: hr.')
            self.lq_paths = [self._lq_path(p, opt['dataroot_lq'], opt.get('filename_tmpl', '{}'), name)
                             for p in self.gt_paths]

    @staticmethod
    def _lq_path(gt_path, folder, tmpl, name):
        stem = tmpl.format(os.path.splitext(os.path.basename(gt_path))[0])
        for ext in (os.path.splitext(gt_path)[1], ) + IMG_EXTS:
            path = os.path.join(folder, stem + ext)
            if os.path.isfile(path):
                return path
        raise ValueError(f'datasets.{name}.dataroot_lq: no LR image {stem}.* in {folder} for {gt_path}; check '
                         'dataroot_lq and filename_tmpl.')

    def __len__(self):
        return len(self.gt_paths)

    def __getitem__(self, index):
        s = self.scale
        gt = read_y(self.gt_paths[index])
        if self.lq_from == 'hr':
            gt = gt[:gt.shape[0] - gt.shape[0] % s, :gt.shape[1] - gt.shape[1] % s]
            # float64 as MATLAB's im2double, cast only for the network
            lq = imresize(torch.from_numpy(gt / 255.)[None], scale=1 / s).float()
        else:
            lq_y = read_y(self.lq_paths[index], rounded=False)
            h, w = lq_y.shape
            if gt.shape[0] < h * s or gt.shape[1] < w * s:
                raise ValueError(f'{self.gt_paths[index]}: HR {gt.shape[1]}x{gt.shape[0]} is smaller than {s} x the '
                                 f'LR {self.lq_paths[index]} ({w}x{h}); check the scale and the folders.')
            gt = gt[:h * s, :w * s]
            lq = torch.from_numpy(lq_y / 255.)[None].float()
        gt = torch.from_numpy(gt / 255.)[None].float()
        return {'lq': lq, 'gt': gt, 'lq_path': self.lq_paths[index], 'gt_path': self.gt_paths[index]}
