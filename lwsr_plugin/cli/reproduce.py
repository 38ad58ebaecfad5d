"""``lwsr-reproduce``: train a shipped recipe from scratch for a time or iteration budget on whatever device is here,
evaluate Set5/Set14 at log-spaced moments, and write the curve, a plot, the weights and a summary against the paper
to ``results/reproduce/<recipe>/`` (see docs/reproduction.md).

Examples::

    lwsr-reproduce --recipe IDN_x3 --minutes 30
    lwsr-reproduce --recipe IMDN_x4 --minutes 30 --schedule cosine
    lwsr-reproduce --recipe IMDN_x4 --iters 2000 --batch 32 --schedule cosine
    lwsr-reproduce --opt train_myarch_x4.yml --minutes 30

``--opt`` takes any training option file instead of a recipe (its ``user_modules`` included): the same budget,
evaluations and files, under ``<out>/<name>/`` (the option file's ``name``), with bicubic from its ``scale`` and no
paper number.

Run it from the folder that holds ``datasets/``, from any installation: the recipes are the shipped option files
(``lwsr-options list``), or those in the folder ``--options`` names.

The run is BasicSR's own ``train_pipeline`` (through :func:`lwsr_plugin.entry.run`, as ``lwsr-train``) on the
recipe's option file with a few keys changed (name, outputs, seed, budget, validation sets), under a
:class:`~lwsr_plugin.patches.budget.TrainingBudget` that evaluates Set5/Set14 at log-spaced moments of the budget
(evaluation time is not counted as training time), stops the run when the budget is spent and sets the learning rate
of the compressed schedules; :class:`Curve` keeps the evaluations. Written to ``<out>/<recipe>/``: ``curve.csv``
(iteration, training seconds, wall seconds, PSNR/SSIM per set), ``curve.png`` (PSNR vs training time, with the
paper's number and bicubic as lines), ``net_g.pth`` (final weights, BasicSR's ``params`` key), ``summary.md``
(device, precision, data, time, final numbers vs paper), ``options.yml`` and BasicSR's experiment folder.

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
import argparse
import csv
import os
import sys
from dataclasses import dataclass, field

# Light at module level: no torch/BasicSR (--help and argument errors answer at once).
from lwsr_plugin.options import load_yaml
from lwsr_plugin.options.shipped import not_shipped, shipped_dir, shipped_path

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
    shipped: bool = True  # False: a user's option file (--opt), which has no paper to compare with


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
# the schedules fitted into the budget: Schedule.KINDS of lwsr_plugin.patches.budget, which loads BasicSR
COMPRESSED = ('cosine', 'wsd')


class ReproduceError(ValueError):
    """A recipe that cannot run here; the message names what is missing and the command that makes it."""


def _exists(root, path):
    return os.path.exists(path if os.path.isabs(path) else os.path.join(root, path))


def training_data(recipe, train_set, workdir, opt_file=None):
    """``(dataset option dict, description)`` for the recipe's training set, falling back from DIV2K to the 291 set;
    ReproduceError naming the preparation command (for the option file ``opt_file``) when neither is there."""
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
                             f'-opt {opt_file or "options/" + recipe.file}` from the DIV2K download) or, as a '
                             f'fallback, on the 291 set ({hr}; make it with `{prepare}`).')
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


class Curve:
    """The evaluations of one run, an ``evaluate`` callback of its training budget: every validation set run through
    the model, one row per evaluation (iteration, training and wall seconds, PSNR and SSIM per set)."""

    def __init__(self):
        self.rows = []

    def __call__(self, budget):
        row = {'iteration': budget.done, 'train_seconds': round(budget.train_s, 2)}
        model = budget.model
        for loader in budget.val_loaders:
            name = loader.dataset.opt['name']
            model.validation(loader, budget.done, None, False)
            results = getattr(model, 'metric_results', {})
            row[f'{name}_psnr'] = round(float(results.get('psnr', float('nan'))), 4)
            row[f'{name}_ssim'] = round(float(results.get('ssim', float('nan'))), 4)
        row['wall_seconds'] = round(budget.wall_s, 2)
        self.rows.append(row)


def build_options(recipe_name, options_dir, workdir, minutes, iters, seed, schedule, batch, sets):
    """``(recipe, option dict, data note)`` of a shipped recipe's run: its option file with the keys the run sets."""
    recipe = RECIPES[recipe_name]
    path = os.path.join(options_dir, recipe.file) if options_dir else shipped_path(recipe.file)
    if path is None:
        raise ReproduceError(not_shipped(recipe.file))
    if not os.path.isfile(path):
        raise ReproduceError(f'{path} is missing: pass --options <folder with the train_*.yml files>, or leave '
                             '--options out for the shipped recipes.')
    opt = load_yaml(path)
    return (recipe, *_budgeted_options(recipe, opt, path, recipe_name, workdir, iters, seed, schedule, batch, sets))


def user_recipe(opt_file):
    """``(name, Recipe, option dict)`` of a user's training option file: its ``name``, its ``scale``, no paper
    number; trained on the data it names, or on the 291 set (Y when ``network_g.num_in_ch`` is 1) as a recipe is."""
    from lwsr_plugin.options import OptionError
    if not os.path.isfile(opt_file):
        raise ReproduceError(f'--opt {opt_file}: no such file; give a training option file (e.g. one made by '
                             '`lwsr-options copy train_IMDN_x4`).')
    try:
        opt = load_yaml(opt_file)
    except OptionError as err:
        raise ReproduceError(f'--opt {err}') from None
    missing = [k for k in ('name', 'scale', 'network_g', 'datasets', 'train') if not opt.get(k)]
    if missing or 'train' not in opt['datasets']:
        raise ReproduceError(f'--opt {opt_file}: no {", ".join(missing) or "datasets.train"}; give a training option '
                             'file with name, scale, network_g, datasets.train and train (see train_IMDN_x4.yml).')
    in_ch = (opt['network_g'] or {}).get('num_in_ch', 3)
    recipe = Recipe(opt_file, int(opt['scale']), '291' if in_ch == 1 else 'DIV2K', shipped=False)
    return str(opt['name']), recipe, opt


def _budgeted_options(recipe, opt, path, name, workdir, iters, seed, schedule, batch, sets):
    """``(option dict, data note)``: ``opt`` with the run's name, seed, data, validation sets, batch and budget."""
    train_set, notes = training_data(recipe, opt['datasets']['train'], workdir, path)
    val_template = next((v for k, v in opt['datasets'].items() if k != 'train'), None)
    if val_template is None:
        raise ReproduceError(f'{path} has no validation set to copy the colour/metric settings from.')
    opt['name'] = f'reproduce_{name}'
    opt['manual_seed'] = seed
    opt['datasets'] = {'train': train_set, **validation_sets(val_template, recipe, workdir, sets)}
    paper_batch = train_set.get('batch_size_per_gpu')
    if batch:
        train_set['batch_size_per_gpu'] = batch
        # Caffe-style losses (IDN) sum over the batch and weight by 1 / batch: keep the per-sample weight
        for loss in (opt['train'].get('pixel_opt'), (opt['train'].get('two_stage') or {}).get('pixel_opt')):
            if loss and loss.get('reduction') == 'sum' and paper_batch:
                loss['loss_weight'] = float(loss.get('loss_weight', 1.0)) * paper_batch / batch
        if schedule in COMPRESSED and paper_batch:
            for key in [k for k in opt['train'] if k.startswith('optim_')]:
                opt['train'][key]['lr'] = float(opt['train'][key]['lr']) * batch / paper_batch
    # the budget ends the run; BasicSR's own loop only needs to go on long enough
    # (the recipe's total keeps its milestones and two-stage switch where the paper has them)
    opt['train']['total_iter'] = max(int(opt['train'].get('total_iter', 0)), (iters or 0) + 1)
    opt.setdefault('val', {})['val_freq'] = 10 ** 12  # evaluations are driven by the budget
    opt['val']['save_img'] = False
    opt.setdefault('logger', {}).update(print_freq=opt['logger'].get('print_freq', 100), save_checkpoint_freq=10 ** 12,
                                        use_tb_logger=False)
    opt['logger']['wandb'] = {'project': None, 'resume_id': None}
    opt.setdefault('path', {}).update(pretrain_network_g=None, resume_state=None)
    return opt, notes


def run(recipe_name=None, minutes=None, iters=None, options_dir=None, out='results/reproduce', sets=SETS,
        evals=8, schedule='paper', seed=0, batch=None, workdir='.', opt_file=None):
    """Train ``recipe_name`` for ``minutes`` of training time (or ``iters`` iterations) from its option file in
    ``options_dir`` (None: the shipped one), or the user's option file ``opt_file`` instead of a recipe; returns the
    summary dict."""
    import yaml

    from lwsr_plugin import entry
    from lwsr_plugin.fileio import write_text_atomic
    from lwsr_plugin.patches.budget import TrainingBudget
    if opt_file is None and recipe_name not in RECIPES:
        raise ReproduceError(f'--recipe {recipe_name}: not a recipe. Use one of {", ".join(RECIPES)}.')
    if not minutes and not iters:
        raise ReproduceError('give a budget: --minutes M or --iters N.')
    if opt_file is None:
        recipe, opt, data_note = build_options(recipe_name, options_dir, workdir, minutes, iters, seed, schedule,
                                               batch, sets)
    else:
        recipe_name, recipe, opt = user_recipe(opt_file)
        opt, data_note = _budgeted_options(recipe, opt, opt_file, recipe_name, workdir, iters, seed, schedule, batch,
                                           sets)
    out_dir = os.path.join(out, recipe_name)
    os.makedirs(out_dir, exist_ok=True)
    opt['path']['root'] = os.path.abspath(out_dir)  # experiments/ and the log go beside the results
    opt_path = os.path.abspath(os.path.join(out_dir, 'options.yml'))
    write_text_atomic(opt_path, yaml.safe_dump(opt, sort_keys=False))

    curve = Curve()
    budget = TrainingBudget(minutes, iters, schedule=schedule, evaluate=curve,
                            moments=log_spaced(minutes * 60 if minutes else iters, evals))
    cwd = os.getcwd()
    try:
        os.chdir(workdir)  # the option file's dataset paths are relative to the folder that holds datasets/
        with budget:
            entry.run('train', ['-opt', opt_path], default_root=os.path.abspath(out_dir),
                      default_source='lwsr-reproduce --out')
    finally:
        os.chdir(cwd)
    if budget.model is None or not curve.rows:
        raise ReproduceError('the run ended before its first evaluation; see the log above.')
    return _write_results(recipe_name, recipe, opt, budget, curve.rows, out_dir, data_note, minutes, iters, schedule)


def _device_line(model):
    import torch
    device = model.device
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)} (CUDA)'
    return f'CPU, {torch.get_num_threads()} threads'


def write_curve(path, rows, sets):
    """The evaluations as CSV (iteration, training/wall seconds, PSNR and SSIM per set), written atomically."""
    import io

    from lwsr_plugin.fileio import write_text_atomic
    columns = ['iteration', 'train_seconds', 'wall_seconds'] + [f'{s}_{m}' for s in sets for m in ('psnr', 'ssim')]
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def _write_results(name, recipe, opt, budget, rows, out_dir, data_note, minutes, iters, schedule):
    from lwsr_plugin.cli.report import can_plot
    from lwsr_plugin.fileio import atomic_save, write_text_atomic
    sets = [loader.dataset.opt['name'] for loader in budget.val_loaders]
    write_curve(os.path.join(out_dir, 'curve.csv'), rows, sets)

    model = budget.model
    net = model.get_bare_model(model.net_g)
    atomic_save({'params': {k: v.detach().cpu() for k, v in net.state_dict().items()}},
                os.path.join(out_dir, 'net_g.pth'))

    final = rows[-1]
    bicubic = BICUBIC.get(recipe.scale, {})
    options = getattr(model, 'train_options', None)
    precision = (options.amp or 'fp32') if options is not None else 'fp32'
    paper = recipe.shipped
    lines = [f'# lwsr-reproduce {name}', '',
             f'- device: {_device_line(model)}; precision: {precision}; channels_last: '
             f'{getattr(options, "channels_last", False)}',
             f'- training data: {data_note}',
             f'- budget: {f"{minutes} min of training" if minutes else f"{iters} iterations"}; schedule: {schedule}; '
             f'batch {opt["datasets"]["train"].get("batch_size_per_gpu")}; seed {opt["manual_seed"]}',
             f'- trained: {final["iteration"]} iterations in {final["train_seconds"] / 60:.1f} min of training '
             f'({budget.eval_s / 60:.1f} min of evaluation besides)', '',
             '| set | PSNR | SSIM | bicubic | gain over bicubic |' + (' paper | to the paper |' if paper else ''),
             '|---|---|---|---|---|' + ('---|---|' if paper else '')]
    summary = {'recipe': name, 'iterations': final['iteration'], 'train_seconds': final['train_seconds'], 'sets': {}}
    for s in sets:
        psnr, ssim = final[f'{s}_psnr'], final[f'{s}_ssim']
        b, p = bicubic.get(s), recipe.paper.get(s)
        lines.append(f'| {s} | {psnr:.2f} | {ssim:.4f} | {b if b is not None else "-"} | '
                     f'{f"{psnr - b:+.2f}" if b is not None else "-"} |'
                     + (f' {p if p is not None else "-"} | {f"{psnr - p:+.2f}" if p is not None else "-"} |'
                        if paper else ''))
        summary['sets'][s] = {'psnr': psnr, 'ssim': ssim, 'bicubic': b, 'paper': p}
    plot = can_plot()
    curve_files = 'curve.csv, curve.png' if plot else 'curve.csv (curve.png skipped: matplotlib is not installed)'
    source = f'Paper numbers: {recipe.paper_source}.' if paper else \
        f'{recipe.file}: no paper number (not a shipped recipe).'
    lines += ['', f'{source} Bicubic: IDN Table 2. The curve: {curve_files}.', '']
    write_text_atomic(os.path.join(out_dir, 'summary.md'), '\n'.join(lines))
    print('\n'.join(lines), flush=True)
    # the plot last: whatever happens to it, the summary, the CSV and the weights are already on disk
    if plot:
        plot_curves([(f'{name} (this run)', rows)], sets, recipe, os.path.join(out_dir, 'curve.png'))
    else:
        print('lwsr-reproduce: curve.png skipped: matplotlib is not installed (curve.csv and summary.md are written); '
              'for the plot install it with: pip install "lwsr_plugin[report]"', file=sys.stderr)
    return summary


def plot_curves(curves, sets, recipe, path):
    """PSNR vs training time (log scale), one panel per set, one line per ``(label, rows)`` curve, with the paper's
    number and bicubic as horizontal lines; written atomically to ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from lwsr_plugin.fileio import atomic_target
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


def parser():
    p = argparse.ArgumentParser(prog='lwsr-reproduce', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument('--recipe', choices=list(RECIPES), help='shipped training recipe')
    what.add_argument('--opt', metavar='TRAIN_YML',
                      help="any training option file (its user_modules included) instead of a recipe; results under "
                      "<out>/<its name>/")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument('--minutes', type=float, help='training-time budget (evaluations not counted)')
    budget.add_argument('--iters', type=int, help='iteration budget')
    p.add_argument('--schedule', choices=('paper', ) + COMPRESSED, default='paper',
                   help="paper: the recipe's schedule cut by the budget; cosine: warm-up + cosine to 0 over the "
                   "budget; wsd: the recipe's rate for 80 %% of the budget, then linear to 0")
    p.add_argument('--batch', type=int, default=None, help="batch size (default: the recipe's); with --schedule "
                   'cosine or wsd the learning rate is scaled by batch / recipe batch')
    p.add_argument('--evals', type=int, default=8, help='log-spaced evaluations over the budget')
    p.add_argument('--sets', nargs='+', default=['Set5', 'Set14'], help='evaluation sets under datasets/')
    p.add_argument('--seed', type=int, default=0, help='manual_seed of the run')
    p.add_argument('--options', default=shipped_dir(),
                   help='folder with the train_*.yml files: the shipped option files unless given')
    p.add_argument('--out', default='results/reproduce', help='results folder (<out>/<recipe or name>/)')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.minutes is not None and args.minutes <= 0 or args.iters is not None and args.iters < 1:
        parser().error('the budget must be positive: --minutes > 0 or --iters >= 1')
    if args.evals < 1:
        parser().error('--evals must be >= 1')
    if args.batch is not None and args.batch < 1:
        parser().error('--batch must be >= 1')
    try:
        run(args.recipe, opt_file=args.opt, minutes=args.minutes, iters=args.iters, options_dir=args.options, out=args.out,
            sets=args.sets, evals=args.evals, schedule=args.schedule, seed=args.seed, batch=args.batch)
    except ReproduceError as err:
        print(f'lwsr-reproduce: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
