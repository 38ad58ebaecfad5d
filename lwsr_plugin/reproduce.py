"""Train a shipped recipe from scratch for a time or iteration budget and record how close it gets to the paper.

The run is BasicSR's own ``train_pipeline`` (through :func:`lwsr_plugin.entry.run`, as ``lwsr-train``) on the
recipe's option file with a few keys changed (name, outputs, seed, budget, validation sets). Around it, hooks on the
model built for the run evaluate Set5/Set14 at log-spaced moments of the budget (evaluation time is not counted as
training time), stop the run when the budget is spent, and keep the curve. Written to ``<out>/<recipe>/``:
``curve.csv`` (iteration, training seconds, wall seconds, PSNR/SSIM per set), ``curve.png`` (PSNR vs training time,
with the paper's number and bicubic as lines), ``net_g.pth`` (final weights, BasicSR's ``params`` key),
``summary.md`` (device, precision, data, time, final numbers vs paper), ``options.yml`` and BasicSR's experiment folder.

Schedules (``--schedule``):

* ``paper``: the recipe's own schedule (optimizer, learning rate, milestones) cut off by the budget, as a truncated
  paper run would be.
* ``cosine``: the schedule compressed into the budget: the learning rate warms up linearly over the first 3 % of the
  budget and then follows a half cosine to 0 at its end, measured in training time (or iterations with ``--iters``),
  so every budget ends with a fully decayed learning rate.
* ``wsd`` (warm-up-stable-decay without the warm-up): the recipe's learning rate held, as the paper holds it over
  the first part of its run, for the first 80 % of the budget, then a linear decay to 0 over the last 20 %: a short
  run keeps the fast progress of the full learning rate and still ends annealed.

With ``--batch`` and ``cosine`` or ``wsd``, the learning rate is scaled by ``batch / recipe batch`` (the linear scaling
rule of Goyal et al. 2017).
"""
import csv
import math
import os
import time
from dataclasses import dataclass, field

import torch

from lwsr_plugin.fileio import atomic_save, atomic_target, write_text_atomic
from lwsr_plugin.options import load_yaml

# Bicubic on the Y channel, border = scale (IDN Table 2, the same numbers in IMDN's and DRN's tables)
BICUBIC = {2: {'Set5': 33.66, 'Set14': 30.24}, 3: {'Set5': 30.39, 'Set14': 27.55},
           4: {'Set5': 28.42, 'Set14': 26.00}}


@dataclass
class Recipe:
    file: str  # options/<file>
    scale: int
    data: str  # 'DIV2K' or '291': what the paper trains on
    paper: dict = field(default_factory=dict)  # Set5/Set14 PSNR of the paper (Y, border = scale)
    paper_source: str = ''


RECIPES = {
    'IDN_x2': Recipe('train_IDN_x2.yml', 2, '291', {'Set5': 37.83, 'Set14': 33.30}, 'IDN Table 2'),
    'IDN_x3': Recipe('train_IDN_x3.yml', 3, '291', {'Set5': 34.11, 'Set14': 29.99}, 'IDN Table 2'),
    'IDN_x4': Recipe('train_IDN_x4.yml', 4, '291', {'Set5': 31.82, 'Set14': 28.25}, 'IDN Table 2'),
    'IMDN_x2': Recipe('train_IMDN_x2.yml', 2, 'DIV2K', {'Set5': 38.00, 'Set14': 33.63}, 'IMDN Table 5'),
    'IMDN_x3': Recipe('train_IMDN_x3.yml', 3, 'DIV2K', {'Set5': 34.36, 'Set14': 30.32}, 'IMDN Table 5'),
    'IMDN_x4': Recipe('train_IMDN_x4.yml', 4, 'DIV2K', {'Set5': 32.21, 'Set14': 28.58}, 'IMDN Table 5'),
    # DRN's Table 3 x4 rows are not legible in the paper text we have; s-LWSR's Table I gives x4 with self-ensemble
    'DRN_x4': Recipe('train_DRN_x4.yml', 4, 'DIV2K', {}, 'not legible in DRN Table 3'),
    'sLWSR16_x4': Recipe('train_sLWSR16_x4.yml', 4, 'DIV2K', {}, 's-LWSR Table I gives 31.78 with self-ensemble'),
    'sLWSR32_x4': Recipe('train_sLWSR32_x4.yml', 4, 'DIV2K', {}, 's-LWSR Table I gives 32.15 with self-ensemble'),
}
SETS = ('Set5', 'Set14')


class ReproduceError(ValueError):
    """A recipe that cannot run here; the message names what is missing and the command that makes it."""


class _BudgetSpent(BaseException):
    """Ends BasicSR's training loop from inside it (not an Exception: no handler on the way may swallow it)."""


def _exists(root, path):
    return os.path.exists(path if os.path.isabs(path) else os.path.join(root, path))


def training_data(recipe, train_set, workdir):
    """``(dataset option dict, description)`` for the recipe's training set, falling back from DIV2K to the 291 set;
    ReproduceError naming the preparation command when neither is there."""
    gt, lq = train_set.get('dataroot_gt'), train_set.get('dataroot_lq')
    if _exists(workdir, gt) and _exists(workdir, lq):
        return dict(train_set), f'{gt} / {lq}'
    scale = recipe.scale
    y = recipe.data == '291'  # IDN trains on Y; the others on RGB
    name = '291_Y' if y else '291'
    hr, lr = f'datasets/291/{name}_HR.lmdb', f'datasets/291/{name}_LR_bicubic_X{scale}.lmdb'
    # --min-size: every record must give a training patch (the loader checks gt_size against the smallest image)
    prepare = ('lwsr-prepare-291 --input datasets/T91 datasets/BSD200 --out datasets/291'
               + (' --y-only' if y else '') + f' --min-size {train_set.get("gt_size", 0)}')
    if recipe.data == 'DIV2K' and _exists(workdir, hr) and _exists(workdir, lr):
        fallback = dict(train_set, dataroot_gt=hr, dataroot_lq=lr, io_backend={'type': 'lmdb'})
        fallback.pop('meta_info_file', None)
        return fallback, f'{hr} / {lr} (the 291 set: DIV2K, the paper\'s data, is not in datasets/)'
    if recipe.data == 'DIV2K':
        raise ReproduceError(f'{gt} is missing: this recipe trains on DIV2K (make it with `lwsr-prepare-div2k '
                             f'-opt options/{recipe.file}` from the DIV2K download) or, as a fallback, on the 291 set '
                             f'({hr}; make it with `{prepare}`).')
    raise ReproduceError(f'{gt} is missing: this recipe trains on the 291 set; make it with `{prepare}`.')


def validation_sets(train_opt_val, recipe, workdir, sets):
    """BasicSR test-set entries for ``sets`` that are present under ``datasets/``, in the recipe's colour."""
    template = dict(train_opt_val)
    out = {}
    for i, name in enumerate(sets):
        hr, lr = f'datasets/{name}/HR', f'datasets/{name}/LR_bicubic/X{recipe.scale}'
        if not (_exists(workdir, hr) and _exists(workdir, lr)):
            continue
        out[f'val_{i + 1}'] = dict(template, name=name, dataroot_gt=hr, dataroot_lq=lr,
                                   filename_tmpl=f'{{}}x{recipe.scale}')
    if not out:
        raise ReproduceError(f'none of {", ".join(sets)} is under datasets/ (HR and LR_bicubic/X{recipe.scale}); '
                             'make them with `lwsr-prepare-benchmark` (docs/data_preparation.md).')
    return out


def log_spaced(total, count):
    """``count`` moments from ``total / 2**(count-1)`` to ``total``, doubling."""
    return [total / 2 ** (count - 1 - k) for k in range(count)]


class Schedule:
    """Learning rate as a function of the budget's progress (0..1): ``cosine``: linear warm-up over ``warmup``, then
    a half cosine to 0; ``wsd``: held until ``1 - decay``, then linear to 0 (no warm-up: the papers start at full
    rate)."""

    KINDS = ('cosine', 'wsd')

    def __init__(self, base_lrs, kind='cosine', warmup=0.03, decay=0.2):
        if kind not in self.KINDS:
            raise ValueError(f'schedule {kind!r}: expected one of {", ".join(self.KINDS)}')
        self.base_lrs = list(base_lrs)
        self.kind = kind
        self.warmup = warmup if kind == 'cosine' else 0.0
        self.decay = decay

    def factor(self, progress):
        progress = min(max(progress, 0.0), 1.0)
        if progress < self.warmup:
            return progress / self.warmup
        if self.kind == 'wsd':
            return min(1.0, (1.0 - progress) / self.decay)
        return 0.5 * (1 + math.cos(math.pi * (progress - self.warmup) / (1 - self.warmup)))

    def apply(self, optimizers, progress):
        f = self.factor(progress)
        lrs = iter(self.base_lrs)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group['lr'] = next(lrs) * f


class Recorder:
    """The hooks around one training run: log-spaced evaluations, the budget, the budget's schedule."""

    def __init__(self, minutes, iters, evals, schedule):
        self.budget_s = minutes * 60 if minutes else None
        self.iters = iters
        self.moments = log_spaced(self.budget_s if self.budget_s else iters, evals)
        self.schedule_kind = schedule
        self.schedule = None
        self.rows = []
        self.model = None
        self.val_loaders = []
        self.train_s = 0.0  # training time, evaluations excluded
        self.eval_s = 0.0
        self._last = None
        self.start = None

    def progress(self, current_iter):
        if self.budget_s:
            return self.train_s / self.budget_s
        return (current_iter - 1) / self.iters

    def before_iteration(self, model, current_iter):
        now = time.perf_counter()
        if self._last is None:
            self.start = now
        else:
            self.train_s += now - self._last
        done = current_iter - 1
        position = self.train_s if self.budget_s else done
        while self.moments and position >= self.moments[0] - 1e-9 and done > 0:
            self.moments.pop(0)
            self.evaluate(done)
        finished = (self.budget_s and self.train_s >= self.budget_s) or (self.iters and done >= self.iters)
        if finished:
            if not self.rows or self.rows[-1]['iteration'] != done:
                self.evaluate(done)
            raise _BudgetSpent()
        if self.schedule_kind in Schedule.KINDS:
            if self.schedule is None:
                self.schedule = Schedule([g['initial_lr'] if 'initial_lr' in g else g['lr']
                                          for o in model.optimizers for g in o.param_groups], self.schedule_kind)
            self.schedule.apply(model.optimizers, self.progress(current_iter))
        self._last = time.perf_counter()

    def evaluate(self, iteration):
        start = time.perf_counter()
        row = {'iteration': iteration, 'train_seconds': round(self.train_s, 2)}
        model = self.model
        for loader in self.val_loaders:
            name = loader.dataset.opt['name']
            model.validation(loader, iteration, None, False)
            results = getattr(model, 'metric_results', {})
            row[f'{name}_psnr'] = round(float(results.get('psnr', float('nan'))), 4)
            row[f'{name}_ssim'] = round(float(results.get('ssim', float('nan'))), 4)
        self.eval_s += time.perf_counter() - start
        row['wall_seconds'] = round(time.perf_counter() - self.start, 2) if self.start else 0.0
        self.rows.append(row)
        self._last = time.perf_counter()  # evaluation time is not training time
        return row


def build_options(recipe_name, options_dir, workdir, minutes, iters, seed, schedule, batch, sets):
    recipe = RECIPES[recipe_name]
    path = os.path.join(options_dir, recipe.file)
    if not os.path.isfile(path):
        raise ReproduceError(f'{path} is missing: run lwsr-reproduce from the lwsr_plugin checkout (it reads the '
                             'shipped options/) or pass --options <folder with the train_*.yml files>.')
    opt = load_yaml(path)
    train_set, notes = training_data(recipe, opt['datasets']['train'], workdir)
    val_template = next((v for k, v in opt['datasets'].items() if k != 'train'), None)
    if val_template is None:
        raise ReproduceError(f'{path} has no validation set to copy the colour/metric settings from.')
    opt['name'] = f'reproduce_{recipe_name}'
    opt['manual_seed'] = seed
    opt['datasets'] = {'train': train_set, **validation_sets(val_template, recipe, workdir, sets)}
    paper_batch = train_set.get('batch_size_per_gpu')
    if batch:
        train_set['batch_size_per_gpu'] = batch
        # Caffe-style losses (IDN) sum over the batch and weight by 1 / batch: keep the per-sample weight
        for loss in (opt['train'].get('pixel_opt'), (opt['train'].get('two_stage') or {}).get('pixel_opt')):
            if loss and loss.get('reduction') == 'sum' and paper_batch:
                loss['loss_weight'] = float(loss.get('loss_weight', 1.0)) * paper_batch / batch
        if schedule in Schedule.KINDS and paper_batch:
            for key in [k for k in opt['train'] if k.startswith('optim_')]:
                opt['train'][key]['lr'] = float(opt['train'][key]['lr']) * batch / paper_batch
    # the budget ends the run; BasicSR's own loop only needs to go on long enough
    # (the recipe's total keeps its milestones and two-stage switch where the paper has them)
    opt['train']['total_iter'] = max(int(opt['train'].get('total_iter', 0)), (iters or 0) + 1)
    opt.setdefault('val', {})['val_freq'] = 10 ** 12  # evaluations are driven by the recorder
    opt['val']['save_img'] = False
    opt.setdefault('logger', {}).update(print_freq=opt['logger'].get('print_freq', 100), save_checkpoint_freq=10 ** 12,
                                        use_tb_logger=False)
    opt['logger']['wandb'] = {'project': None, 'resume_id': None}
    opt.setdefault('path', {}).update(pretrain_network_g=None, resume_state=None)
    return recipe, opt, notes


def run(recipe_name, minutes=None, iters=None, options_dir='options', out='results/reproduce', sets=SETS,
        evals=8, schedule='paper', seed=0, batch=None, workdir='.'):
    """Train ``recipe_name`` for ``minutes`` of training time (or ``iters`` iterations); returns the summary dict."""
    import yaml

    import basicsr.train as train_mod
    from lwsr_plugin import entry
    if recipe_name not in RECIPES:
        raise ReproduceError(f'--recipe {recipe_name}: not a recipe. Use one of {", ".join(RECIPES)}.')
    if not minutes and not iters:
        raise ReproduceError('give a budget: --minutes M or --iters N.')
    out_dir = os.path.join(out, recipe_name)
    os.makedirs(out_dir, exist_ok=True)
    recipe, opt, data_note = build_options(recipe_name, options_dir, workdir, minutes, iters, seed, schedule, batch,
                                           sets)
    opt['path']['root'] = os.path.abspath(out_dir)  # experiments/ and the log go beside the results
    opt_path = os.path.abspath(os.path.join(out_dir, 'options.yml'))
    write_text_atomic(opt_path, yaml.safe_dump(opt, sort_keys=False))

    recorder = Recorder(minutes, iters, evals, schedule)
    build_model, make_loaders = train_mod.build_model, train_mod.create_train_val_dataloader

    def capture_model(model_opt):
        model = build_model(model_opt)
        recorder.model = model
        update = model.update_learning_rate

        def update_learning_rate(current_iter, warmup_iter=-1):
            recorder.before_iteration(model, current_iter)
            update(current_iter, warmup_iter)
            if recorder.schedule is not None:  # BasicSR's scheduler stepped; the budget's schedule wins
                recorder.schedule.apply(model.optimizers, recorder.progress(current_iter))

        model.update_learning_rate = update_learning_rate
        return model

    def capture_loaders(loader_opt, logger):
        result = make_loaders(loader_opt, logger)
        recorder.val_loaders = result[2]
        return result

    train_mod.build_model, train_mod.create_train_val_dataloader = capture_model, capture_loaders
    cwd = os.getcwd()
    try:
        os.chdir(workdir)  # the option file's dataset paths are relative to the folder that holds datasets/
        entry.run('train', ['-opt', opt_path], default_root=os.path.abspath(out_dir),
                  default_source='lwsr-reproduce --out')
    except _BudgetSpent:
        pass
    finally:
        os.chdir(cwd)
        train_mod.build_model, train_mod.create_train_val_dataloader = build_model, make_loaders
    if recorder.model is None or not recorder.rows:
        raise ReproduceError('the run ended before its first evaluation; see the log above.')
    return _write_results(recipe_name, recipe, opt, recorder, out_dir, data_note, minutes, iters, schedule)


def _device_line(model):
    device = model.device
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)} (CUDA)'
    return f'CPU, {torch.get_num_threads()} threads'


def write_curve(path, rows, sets):
    """The evaluations as CSV (iteration, training/wall seconds, PSNR and SSIM per set), written atomically."""
    import io
    columns = ['iteration', 'train_seconds', 'wall_seconds'] + [f'{s}_{m}' for s in sets for m in ('psnr', 'ssim')]
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def _write_results(name, recipe, opt, recorder, out_dir, data_note, minutes, iters, schedule):
    rows = recorder.rows
    sets = [loader.dataset.opt['name'] for loader in recorder.val_loaders]
    write_curve(os.path.join(out_dir, 'curve.csv'), rows, sets)

    model = recorder.model
    net = model.get_bare_model(model.net_g)
    atomic_save({'params': {k: v.detach().cpu() for k, v in net.state_dict().items()}},
                os.path.join(out_dir, 'net_g.pth'))

    final = rows[-1]
    bicubic = BICUBIC.get(recipe.scale, {})
    plot_curves([(f'{name} (this run)', rows)], sets, recipe, os.path.join(out_dir, 'curve.png'))
    options = getattr(model, 'train_options', None)
    precision = (options.amp or 'fp32') if options is not None else 'fp32'
    lines = [f'# lwsr-reproduce {name}', '',
             f'- device: {_device_line(model)}; precision: {precision}; channels_last: '
             f'{getattr(options, "channels_last", False)}',
             f'- training data: {data_note}',
             f'- budget: {f"{minutes} min of training" if minutes else f"{iters} iterations"}; schedule: {schedule}; '
             f'batch {opt["datasets"]["train"].get("batch_size_per_gpu")}; seed {opt["manual_seed"]}',
             f'- trained: {final["iteration"]} iterations in {final["train_seconds"] / 60:.1f} min of training '
             f'({recorder.eval_s / 60:.1f} min of evaluation besides)', '',
             '| set | PSNR | SSIM | bicubic | gain over bicubic | paper | to the paper |',
             '|---|---|---|---|---|---|---|']
    summary = {'recipe': name, 'iterations': final['iteration'], 'train_seconds': final['train_seconds'], 'sets': {}}
    for s in sets:
        psnr, ssim = final[f'{s}_psnr'], final[f'{s}_ssim']
        b, p = bicubic.get(s), recipe.paper.get(s)
        lines.append(f'| {s} | {psnr:.2f} | {ssim:.4f} | {b if b is not None else "-"} | '
                     f'{f"{psnr - b:+.2f}" if b is not None else "-"} | {p if p is not None else "-"} | '
                     f'{f"{psnr - p:+.2f}" if p is not None else "-"} |')
        summary['sets'][s] = {'psnr': psnr, 'ssim': ssim, 'bicubic': b, 'paper': p}
    lines += ['', f'Paper numbers: {recipe.paper_source}. Bicubic: IDN Table 2. The curve: curve.csv, curve.png.', '']
    write_text_atomic(os.path.join(out_dir, 'summary.md'), '\n'.join(lines))
    print('\n'.join(lines), flush=True)
    return summary


def plot_curves(curves, sets, recipe, path):
    """PSNR vs training time (log scale), one panel per set, one line per ``(label, rows)`` curve, with the paper's
    number and bicubic as horizontal lines; written atomically to ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    bicubic = BICUBIC.get(recipe.scale, {})
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for label, rows in curves:
            rows = [r for r in rows if r.get(f'{s}_psnr') not in (None, '')]
            ax.plot([float(r['train_seconds']) / 60 for r in rows], [float(r[f'{s}_psnr']) for r in rows], 'o-',
                    label=label)
        if recipe.paper.get(s) is not None:
            ax.axhline(recipe.paper[s], color='black', ls='--', label=f'paper {recipe.paper[s]}')
        if bicubic.get(s) is not None:
            ax.axhline(bicubic[s], color='tab:gray', ls=':', label=f'bicubic {bicubic[s]}')
        ax.set_xscale('log')
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel('training time (min, log scale)')
        ax.set_ylabel(f'{s} PSNR (dB, Y)')
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_target(path, suffix='.png') as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
