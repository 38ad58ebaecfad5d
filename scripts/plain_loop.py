"""The papers' recipe in a plain PyTorch loop, for the side-by-side of docs/reproduction.md: what a user would write
without BasicSR or the plugin's training path.

    python scripts/plain_loop.py --recipe IDN_x3 --minutes 30     # -> results/plain/IDN_x3/curve.csv

Same network (the plugin's arch, built from the recipe's ``network_g``), same training LMDBs, same batch, patch size,
optimizer, learning rate and pixel loss as ``lwsr-reproduce --recipe <same>`` (its ``build_options``), same seed;
fp32, NCHW, a ``torch.utils.data.DataLoader`` with the recipe's workers, random crops (the two-stage recipe's stage-1
patch for IDN) and the recipe's flips. Set5/Set14 are evaluated at the same log-spaced moments of the training time
with BasicSR's metric functions on the same test sets, and written in the same CSV columns.
"""
import argparse
import os
import random
import sys
import time

import cv2
import numpy as np
import torch


class LmdbPairs(torch.utils.data.Dataset):
    """GT/LQ pairs from BasicSR-format LMDBs (PNG bytes under the keys of ``meta_info.txt``), randomly cropped."""

    def __init__(self, gt_path, lq_path, gt_size, scale, flips):
        self.gt_path, self.lq_path = gt_path, lq_path
        with open(os.path.join(gt_path, 'meta_info.txt'), encoding='utf-8') as f:
            self.keys = [line.split(' ')[0].rsplit('.', 1)[0] for line in f if line.strip()]
        self.gt_size, self.scale, self.flips = gt_size, scale, flips
        self.envs = None

    def __len__(self):
        return len(self.keys)

    def _read(self, env, key):
        with env.begin(write=False) as txn:
            buf = txn.get(key.encode('ascii'))
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0
        return img[..., None] if img.ndim == 2 else img[..., ::-1]  # BGR -> RGB

    def __getitem__(self, index):
        import lmdb
        if self.envs is None:  # opened in the worker that reads
            self.envs = [lmdb.open(p, readonly=True, lock=False, readahead=False) for p in (self.gt_path, self.lq_path)]
        gt, lq = (self._read(env, self.keys[index]) for env in self.envs)
        lq_size = self.gt_size // self.scale
        top, left = random.randint(0, lq.shape[0] - lq_size), random.randint(0, lq.shape[1] - lq_size)
        lq = lq[top:top + lq_size, left:left + lq_size]
        gt = gt[top * self.scale:(top + lq_size) * self.scale, left * self.scale:(left + lq_size) * self.scale]
        if self.flips and random.random() < 0.5:
            gt, lq = gt[:, ::-1], lq[:, ::-1]
        if self.flips and random.random() < 0.5:
            gt, lq = gt[::-1], lq[::-1]
        to_tensor = (lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))))
        return to_tensor(lq), to_tensor(gt)


def _seed_worker(worker_id):
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def evaluate(net, val_sets, scale, y_only, device):
    """{set: (PSNR, SSIM)} with BasicSR's metric functions (Y channel, border = scale), as the plugin's validation."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils import bgr2ycbcr
    results = {}
    net.eval()
    with torch.no_grad():
        for name, pairs in val_sets.items():
            psnr = ssim = 0.0
            for gt_path, lq_path in pairs:
                gt = cv2.imread(gt_path, cv2.IMREAD_COLOR).astype(np.float32) / 255.0
                lq = cv2.imread(lq_path, cv2.IMREAD_COLOR).astype(np.float32) / 255.0
                gt = gt[:lq.shape[0] * scale, :lq.shape[1] * scale]  # as BasicSR's paired dataset crops test GT
                if y_only:
                    gt, lq = bgr2ycbcr(gt, y_only=True)[..., None], bgr2ycbcr(lq, y_only=True)[..., None]
                else:
                    gt, lq = gt[..., ::-1], lq[..., ::-1]
                x = torch.from_numpy(np.ascontiguousarray(lq.transpose(2, 0, 1)))[None].to(device)
                out = net(x).clamp(0, 1)[0].cpu().numpy().transpose(1, 2, 0)
                out_img = (out * 255.0).round()
                gt_img = (gt * 255.0).round()
                if not y_only:
                    out_img, gt_img = out_img[..., ::-1], gt_img[..., ::-1]
                psnr += calculate_psnr(out_img, gt_img, crop_border=scale, test_y_channel=not y_only)
                ssim += calculate_ssim(out_img, gt_img, crop_border=scale, test_y_channel=not y_only)
            results[name] = (float(psnr) / len(pairs), float(ssim) / len(pairs))
    net.train()
    return results


def main(argv=None):
    import lwsr_plugin  # noqa: F401  (the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    from lwsr_plugin.cli.reproduce import RECIPES, build_options, log_spaced, write_curve
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--recipe', required=True, choices=list(RECIPES))
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument('--minutes', type=float)
    budget.add_argument('--iters', type=int)
    parser.add_argument('--evals', type=int, default=8)
    parser.add_argument('--sets', nargs='+', default=['Set5', 'Set14'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--options', default='options')
    parser.add_argument('--out', default='results/plain')
    args = parser.parse_args(argv)

    recipe, opt, data_note = build_options(args.recipe, args.options, '.', args.minutes, args.iters, args.seed,
                                           'paper', None, args.sets)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    from lwsr_plugin.options.workers import resolve_auto_workers
    resolve_auto_workers(opt)  # the shipped `num_worker_per_gpu: auto`, by the plugin's own rule
    train = opt['datasets']['train']
    two_stage = opt['train'].get('two_stage')
    gt_size = two_stage['stage1_gt_size'] if two_stage else train['gt_size']
    data = LmdbPairs(train['dataroot_gt'], train['dataroot_lq'], gt_size, recipe.scale,
                     bool(train.get('use_hflip') or train.get('use_rot')))
    loader = torch.utils.data.DataLoader(data, batch_size=train['batch_size_per_gpu'], shuffle=True, drop_last=True,
                                         num_workers=int(train.get('num_worker_per_gpu', 0)),
                                         worker_init_fn=_seed_worker, persistent_workers=False)
    if len(loader) == 0:
        print(f'plain_loop: {train["dataroot_gt"]} holds {len(data)} records, fewer than one batch of '
              f'{train["batch_size_per_gpu"]}; prepare the full set (see docs/reproduction.md).', file=sys.stderr)
        return 2
    kwargs = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    net = ARCH_REGISTRY.get(opt['network_g']['type'])(**kwargs).to(device)
    optim_opt = dict(opt['train']['optim_g'])
    optimizer = torch.optim.Adam(net.parameters(), lr=float(optim_opt['lr']),
                                 betas=tuple(optim_opt.get('betas', (0.9, 0.999))),
                                 weight_decay=float(optim_opt.get('weight_decay', 0)))
    from basicsr.losses import build_loss
    criterion = build_loss(dict(opt['train']['pixel_opt']))  # the recipe's own loss type, its weight included
    val_sets = {}
    for ds in (v for k, v in opt['datasets'].items() if k != 'train'):
        names = sorted(os.listdir(ds['dataroot_gt']))
        val_sets[ds['name']] = [(os.path.join(ds['dataroot_gt'], n),
                                 os.path.join(ds['dataroot_lq'], ds['filename_tmpl'].format(os.path.splitext(n)[0])
                                              + os.path.splitext(n)[1])) for n in names]
    y_only = opt['network_g'].get('num_in_ch', 3) == 1
    budget = args.minutes * 60 if args.minutes else args.iters
    moments = log_spaced(budget, args.evals)
    rows, train_s, iteration, start = [], 0.0, 0, time.perf_counter()
    done = False
    while not done:
        last = time.perf_counter()
        for lq, gt in loader:
            lq, gt = lq.to(device), gt.to(device)
            loss = criterion(net(lq), gt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            now = time.perf_counter()
            train_s += now - last
            position = train_s if args.minutes else iteration
            while moments and position >= moments[0] - 1e-9:
                moments.pop(0)
                row = {'iteration': iteration, 'train_seconds': round(train_s, 2)}
                for name, (psnr, ssim) in evaluate(net, val_sets, recipe.scale, y_only, device).items():
                    row[f'{name}_psnr'], row[f'{name}_ssim'] = round(psnr, 4), round(ssim, 4)
                row['wall_seconds'] = round(time.perf_counter() - start, 2)
                rows.append(row)
                print(row, flush=True)
            if not moments:
                done = True
                break
            last = time.perf_counter()
    out = os.path.join(args.out, args.recipe)
    os.makedirs(out, exist_ok=True)
    write_curve(os.path.join(out, 'curve.csv'), rows, list(val_sets))
    print(f'plain loop {args.recipe} on {data_note}: {iteration} iterations in {train_s / 60:.1f} min -> '
          f'{os.path.join(out, "curve.csv")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
