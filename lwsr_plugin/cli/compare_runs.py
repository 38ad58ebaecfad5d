"""``lwsr-compare-runs``: runs of ``lwsr-reproduce`` (or any folder with its ``curve.csv``) side by side at equal
training time: a Markdown table of each run's PSNR at common moments, the final numbers, and one plot.

Examples::

    lwsr-compare-runs results/reproduce/MySR_x4 results/reproduce/IMDN_x4 -o results/compare/mysr_vs_imdn
    lwsr-compare-runs "plugin=results/a/IMDN_x4/curve.csv" "plain loop=results/plain/IMDN_x4" --sets Set5

A run is a folder holding ``curve.csv`` (its ``summary.md`` heading gives the label, else the folder name), a
``curve.csv`` itself, or ``LABEL=`` either of them. The moments are the evaluation times of the first run; each run's
PSNR at a moment is its **nearest earlier evaluation** (the last one at or before it: what that run had reached after
that much training), no interpolation. An evaluation up to 2 % after the moment counts as at it, because the budget
evaluates after the iteration that crosses the moment, so runs with the same ``--minutes`` share their moments; a
moment before a run's first evaluation, or more than 2 % after its last, shows ``-``. Each later run's difference to
the first follows.

``-o OUT`` writes ``OUT.md`` (the tables) and ``OUT.png`` (PSNR vs training time, one panel per set, bicubic from the
scale and the paper's number of a shipped recipe among the runs or of ``--recipe``), each atomically.
"""
import argparse
import csv
import os
import sys

# Light at module level: no torch/BasicSR (--help and argument errors answer at once).
from lwsr_plugin.cli.reproduce import RECIPES, Recipe

TOLERANCE = 0.02  # an evaluation this fraction after a moment is at it (see the module docstring)


class CompareError(ValueError):
    """A run that cannot be compared; the message names the argument and the fix."""


def read_run(item):
    """``(label, rows, name, folder)`` of one ``RUN_DIR``, ``curve.csv`` or ``LABEL=`` either; ``name`` is the run's
    name from its ``summary.md`` heading (``# lwsr-reproduce NAME``), or None; ``folder`` holds its ``curve.csv``."""
    label, sep, path = item.partition('=')
    if not sep or os.path.exists(item):
        label, path = None, item
    csv_path = os.path.join(path, 'curve.csv') if os.path.isdir(path) else path
    if not os.path.isfile(csv_path):
        raise CompareError(f'{item}: no curve.csv there; give a run folder of lwsr-reproduce (<out>/<name>/), its '
                           'curve.csv, or LABEL=either.')
    with open(csv_path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    if not rows or 'train_seconds' not in rows[0]:
        raise CompareError(f'{item}: {csv_path} has no evaluation rows (expected lwsr-reproduce\'s curve.csv).')
    name = None
    summary = os.path.join(os.path.dirname(csv_path), 'summary.md')
    if os.path.isfile(summary):
        with open(summary, encoding='utf-8') as f:
            heading = f.readline().strip()
        name = heading.lstrip('# ').replace('lwsr-reproduce ', '', 1) or None
    folder = os.path.dirname(os.path.abspath(csv_path))
    return label or name or os.path.basename(folder), rows, name, folder


def psnr_at(rows, seconds, set_name):
    """``(iteration, PSNR)`` of the nearest earlier evaluation of ``rows`` at ``seconds`` of training (see the module
    docstring for the tolerance), or None before the first or well after the last."""
    limit = seconds * (1 + TOLERANCE)
    earlier = [r for r in rows if float(r['train_seconds']) <= limit and r.get(f'{set_name}_psnr') not in (None, '')]
    if not earlier or seconds > float(rows[-1]['train_seconds']) * (1 + TOLERANCE):
        return None
    last = earlier[-1]
    return int(last['iteration']), float(last[f'{set_name}_psnr'])


def moments_table(runs, set_name):
    """Markdown: one line per evaluation moment of the first run (training minutes), iterations / PSNR of every run
    at it, and each later run's PSNR minus the first's."""
    first = runs[0][0]
    head = ['training min'] + [f'{label}: iters / PSNR' for label, _ in runs] + \
        [f'{label} - {first}' for label, _ in runs[1:]]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in runs[0][1]:
        seconds = float(row['train_seconds'])
        found = [psnr_at(rows, seconds, set_name) for _, rows in runs]
        cells = [f'{v[0]:,} / {v[1]:.2f}' if v else '-' for v in found]
        deltas = [f'{v[1] - found[0][1]:+.2f}' if v and found[0] else '-' for v in found[1:]]
        lines.append(f'| {seconds / 60:.1f} | ' + ' | '.join(cells + deltas) + ' |')
    return '\n'.join(lines)


def final_table(runs, sets):
    """Markdown: each run's last evaluation (iterations, training minutes, PSNR / SSIM per set)."""
    lines = ['| run | iterations | training min | ' + ' | '.join(f'{s} PSNR / SSIM' for s in sets) + ' |',
             '|' + '---|' * (3 + len(sets))]
    for label, rows in runs:
        last = rows[-1]
        cells = [f"{float(last[f'{s}_psnr']):.2f} / {float(last[f'{s}_ssim']):.4f}"
                 if last.get(f'{s}_psnr') not in (None, '') else '-' for s in sets]
        lines.append(f"| {label} | {int(last['iteration']):,} | {float(last['train_seconds']) / 60:.1f} | "
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def report(runs, sets):
    """The whole Markdown: the moments table per set, then the final numbers."""
    parts = ['# lwsr-compare-runs', '',
             'PSNR (Y) at equal training time: the nearest earlier evaluation of each run at each evaluation moment '
             f'of {runs[0][0]} (no interpolation; an evaluation up to {TOLERANCE:.0%} after a moment counts as at '
             'it; `-`: no evaluation of that run at that time).']
    for s in sets:
        parts += ['', f'## {s}', '', moments_table(runs, s)]
    parts += ['', '## Final', '', final_table(runs, sets), '']
    return '\n'.join(parts)


def plot_recipe(names, recipe_name, runs_dirs):
    """The Recipe whose bicubic (its scale) and paper lines the plot draws: ``--recipe``, else the first run named
    after a shipped recipe, else the ``scale`` of the first run's ``options.yml`` with no paper number."""
    name = recipe_name or next((n for n in names if n in RECIPES), None)
    if name:
        return RECIPES[name]
    from lwsr_plugin.options import load_yaml
    for folder in runs_dirs:
        opt_file = os.path.join(folder, 'options.yml')
        if os.path.isfile(opt_file):
            return Recipe(opt_file, int(load_yaml(opt_file).get('scale', 0)), '', shipped=False)
    return Recipe('', 0, '', shipped=False)


def parser():
    p = argparse.ArgumentParser(prog='lwsr-compare-runs', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('runs', nargs='+', metavar='RUN_DIR',
                   help='run folders (or their curve.csv, or LABEL=either); the first is the reference')
    p.add_argument('-o', '--out', metavar='OUT', help='write OUT.md (the tables) and OUT.png (the plot)')
    p.add_argument('--sets', nargs='+', default=None, help='sets to compare (default: those every run evaluated)')
    p.add_argument('--recipe', choices=list(RECIPES), default=None,
                   help="recipe whose paper numbers the plot draws (default: the first run named after one)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        read = [read_run(item) for item in args.runs]
    except CompareError as err:
        print(f'lwsr-compare-runs: {err}', file=sys.stderr)
        return 2
    runs = [(label, rows) for label, rows, _, _ in read]
    common = [c[:-len('_psnr')] for c in runs[0][1][0] if c.endswith('_psnr')
              and all(c in rows[0] for _, rows in runs)]
    sets = args.sets or common
    missing = [s for s in sets if s not in common]
    if missing or not sets:
        print(f'lwsr-compare-runs: --sets {" ".join(missing) or "(none)"}: not evaluated by every run; give some of '
              f'{" ".join(common) or "(no set in common: rerun with the same --sets)"}.', file=sys.stderr)
        return 2
    text = report(runs, sets)
    print(text)
    if args.out:
        from lwsr_plugin.cli.reproduce import plot_curves
        from lwsr_plugin.cli.report import can_plot
        from lwsr_plugin.fileio import write_text_atomic
        stem, ext = os.path.splitext(args.out)
        stem = stem if ext in ('.md', '.png') else args.out
        os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
        write_text_atomic(stem + '.md', text)
        print(f'wrote {stem}.md')
        if can_plot():
            recipe = plot_recipe([r[2] for r in read], args.recipe, [r[3] for r in read])
            plot_curves(runs, sets, recipe, stem + '.png')
            print(f'wrote {stem}.png')
        else:
            print('lwsr-compare-runs: the plot is skipped: matplotlib is not installed; install it with: '
                  'pip install "lwsr_plugin[report]"', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
