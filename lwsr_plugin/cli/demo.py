"""``lwsr-demo``: the main job on a built-in default, with no download.

1. Builds a small x4 training set from the photos that scikit-image installs (HR mod-cropped, LR by BasicSR's
   MATLAB-exact bicubic ``imresize``) and keeps one photo for validation.
2. Trains a small IMDN with BasicSR's own ``train_pipeline`` on CPU (or GPU when present) for a few minutes.
3. Upscales the validation photo, reports Y-PSNR of the SR result and of bicubic (border shaved by 4, BasicSR's
   ``calculate_psnr``), and writes the SR images plus a side-by-side comparison PNG.
"""
import argparse
import glob
import os
import sys
import time

import lwsr_plugin  # noqa: F401  (registers the archs; module level for spawned workers)

TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'camera')
VAL_PHOTOS = ('chelsea', )
SCALE = 4


def _photo(name):
    import numpy as np
    import skimage.data
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3][..., ::-1].copy()  # RGB -> BGR, as cv2/BasicSR store images


TILE = 192  # training photos are cut into tiles (BasicSR's sub-image idea): a 96-px crop then decodes a small PNG


def _tiles(img, tile):
    h, w = img.shape[:2]
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            yield f'_{y // tile}{x // tile:02d}', img[y:y + tile, x:x + tile]


def build_dataset(root, scale=SCALE):
    """Writes ``<root>/{train,val}/HR`` and ``LR_bicubic/X<scale>`` from scikit-image's sample photos: training photos
    as 192x192 tiles, the validation photo whole (mod-cropped)."""
    import cv2

    from lwsr_plugin.data.resize import bicubic_resize
    for split, names in (('train', TRAIN_PHOTOS), ('val', VAL_PHOTOS)):
        hr_dir = os.path.join(root, split, 'HR')
        lr_dir = os.path.join(root, split, 'LR_bicubic', f'X{scale}')
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
        for name in names:
            img = _photo(name)
            if max(img.shape[:2]) > 800:  # keep the few huge photos from dominating the crops and the I/O
                img = bicubic_resize(img, 0.5)
            h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
            pieces = _tiles(img, TILE) if split == 'train' else [('', img[:h, :w])]
            for suffix, hr in pieces:
                lr = bicubic_resize(hr, 1 / scale)
                cv2.imwrite(os.path.join(hr_dir, f'{name}{suffix}.png'), hr)
                cv2.imwrite(os.path.join(lr_dir, f'{name}{suffix}x{scale}.png'), lr)
    return root


def demo_options(data_root, total_iter, num_feat, num_block, name):
    s = SCALE
    return {
        'name': name,
        'model_type': 'SRModel',
        'scale': s,
        'num_gpu': 'auto',
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'skimage_photos', 'type': 'PairedImageDataset',
                'dataroot_gt': f'{data_root}/train/HR', 'dataroot_lq': f'{data_root}/train/LR_bicubic/X{s}',
                'filename_tmpl': f'{{}}x{s}', 'io_backend': {'type': 'disk'},
                'gt_size': 96, 'use_hflip': True, 'use_rot': True,
                'num_worker_per_gpu': 1, 'batch_size_per_gpu': 16, 'dataset_enlarge_ratio': 2000,
                'prefetch_mode': None,
            },
            'val': {
                'name': 'skimage_val', 'type': 'PairedImageDataset',
                'dataroot_gt': f'{data_root}/val/HR', 'dataroot_lq': f'{data_root}/val/LR_bicubic/X{s}',
                'filename_tmpl': f'{{}}x{s}', 'io_backend': {'type': 'disk'},
            },
        },
        'network_g': {'type': 'IMDN', 'num_feat': num_feat, 'num_block': num_block, 'upscale': s},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                          'eta_min': 1e-5},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {
            'val_freq': total_iter, 'save_img': False,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': s, 'test_y_channel': True}},
        },
        'logger': {'print_freq': max(total_iter // 10, 1), 'save_checkpoint_freq': total_iter,
                   'use_tb_logger': False, 'wandb': {'project': None, 'resume_id': None}},
    }


def evaluate(model_path, opt, data_root, out_dir):
    """SR and bicubic Y-PSNR of every validation photo; writes SR PNGs and one comparison PNG per photo."""
    import cv2
    import numpy as np
    from basicsr.metrics import calculate_psnr
    from lwsr_plugin.data.resize import bicubic_resize
    from lwsr_plugin.inference import Upscaler, load_model
    upscaler = Upscaler(load_model(opt['network_g'], model_path, 'params'))
    results = []
    for hr_path in sorted(glob.glob(os.path.join(data_root, 'val', 'HR', '*.png'))):
        name = os.path.splitext(os.path.basename(hr_path))[0]
        hr = cv2.imread(hr_path)
        lr = cv2.imread(os.path.join(data_root, 'val', 'LR_bicubic', f'X{SCALE}', f'{name}x{SCALE}.png'))
        sr = np.ascontiguousarray(upscaler.upscale(lr))
        bic = bicubic_resize(lr, SCALE)
        psnr_sr = calculate_psnr(sr, hr, crop_border=SCALE, test_y_channel=True)
        psnr_bic = calculate_psnr(bic, hr, crop_border=SCALE, test_y_channel=True)
        cv2.imwrite(os.path.join(out_dir, f'{name}_SR_x{SCALE}.png'), sr)
        nearest = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_NEAREST)
        panels = [nearest, bic.copy(), sr.copy(), hr.copy()]  # labels are drawn on copies, not on saved images
        labels = ['LR (nearest)', f'bicubic {psnr_bic:.2f} dB', f'IMDN {psnr_sr:.2f} dB', 'HR']
        for panel, label in zip(panels, labels):
            cv2.putText(panel, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(panel, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.imwrite(os.path.join(out_dir, f'{name}_comparison.png'), np.concatenate(panels, axis=1))
        results.append((name, psnr_sr, psnr_bic))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output', default='lwsr_demo', help='folder for data, experiments and images')
    parser.add_argument('--iters', type=int, default=1500, help='training iterations (default: 1500)')
    parser.add_argument('--num_feat', type=int, default=32)
    parser.add_argument('--num_block', type=int, default=3)
    args = parser.parse_args(argv)
    import yaml

    import basicsr.train
    out = os.path.abspath(args.output)
    if os.path.exists(os.path.join(out, 'experiments')):
        sys.exit(f'lwsr-demo: {out} already holds a demo run; pass another --output or remove that folder.')
    start = time.time()
    data_root = build_dataset(os.path.join(out, 'data'))
    print(f'[lwsr-demo] training set: {len(TRAIN_PHOTOS)} scikit-image photos, validation: {VAL_PHOTOS} '
          f'({time.time() - start:.1f} s)', flush=True)
    name = 'lwsr_demo_IMDN_x4'
    opt = demo_options(data_root, args.iters, args.num_feat, args.num_block, name)
    opt_path = os.path.join(out, f'{name}.yml')
    with open(opt_path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    argv_saved = sys.argv
    sys.argv = [argv_saved[0], '-opt', opt_path]  # BasicSR's parse_options reads the command line
    try:
        basicsr.train.train_pipeline(out)
    finally:
        sys.argv = argv_saved
    images = os.path.join(out, 'images')
    os.makedirs(images, exist_ok=True)
    results = evaluate(os.path.join(out, 'experiments', name, 'models', 'net_g_latest.pth'), opt, data_root, images)
    print(f'[lwsr-demo] finished in {time.time() - start:.0f} s; images in {images}')
    ok = True
    for img, psnr_sr, psnr_bic in results:
        print(f'[lwsr-demo] {img}: SR (IMDN x4) Y-PSNR {psnr_sr:.2f} dB | bicubic Y-PSNR {psnr_bic:.2f} dB '
              f'| gain {psnr_sr - psnr_bic:+.2f} dB')
        ok &= psnr_sr > psnr_bic
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
