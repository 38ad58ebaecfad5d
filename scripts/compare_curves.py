"""Side by side of training curves (``lwsr-reproduce``'s or ``scripts/plain_loop.py``'s ``curve.csv``) of one recipe:
a Markdown table of PSNR at each evaluation moment of the training time, the difference of every curve to the
first, and one plot (``lwsr_plugin.cli.reproduce.plot_curves``) with the paper's number and bicubic.

    python scripts/compare_curves.py --recipe IMDN_x4 --set Set5 \\
        --curve "plugin (paper schedule)=results/a/IMDN_x4/curve.csv" \\
        --curve "plain PyTorch loop=results/plain/IMDN_x4/curve.csv" --plot docs/reproduction/IMDN_x4_vs_plain.png

Runs compared this way should run side by side (same machine, same moment, same share of it): the evaluation moments
are then the same log-spaced training times in every CSV, and rows are matched by their position.
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_curve(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.DictReader(f))


def table(curves, set_name):
    """Markdown: one row per evaluation moment (training minutes of the first curve), iterations and PSNR per curve,
    and each later curve's PSNR minus the first's."""
    first_label = curves[0][0]
    head = ['training min'] + [f'{label}: iters / PSNR' for label, _ in curves] + \
        [f'{label} - {first_label}' for label, _ in curves[1:]]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for i in range(max(len(rows) for _, rows in curves)):
        cells, psnrs = [], []
        minutes = next(float(rows[i]['train_seconds']) / 60 for _, rows in curves if i < len(rows))
        for _, rows in curves:
            if i < len(rows):
                psnr = float(rows[i][f'{set_name}_psnr'])
                cells.append(f'{int(rows[i]["iteration"]):,} / {psnr:.2f}')
                psnrs.append(psnr)
            else:
                cells.append('-')
                psnrs.append(None)
        deltas = [f'{p - psnrs[0]:+.2f}' if p is not None and psnrs[0] is not None else '-' for p in psnrs[1:]]
        lines.append(f'| {minutes:.1f} | ' + ' | '.join(cells + deltas) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    from lwsr_plugin.cli.reproduce import RECIPES, plot_curves
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--recipe', required=True, choices=list(RECIPES))
    p.add_argument('--curve', action='append', required=True, metavar='LABEL=CSV',
                   help='a curve to compare (repeat; the first is the reference of the differences)')
    p.add_argument('--set', default='Set5')
    p.add_argument('--plot', help='PNG to write')
    args = p.parse_args(argv)
    curves = []
    for item in args.curve:
        label, sep, path = item.partition('=')
        if not sep or not os.path.isfile(path):
            print(f'compare_curves: --curve {item!r}: expected LABEL=CSV with an existing CSV file', file=sys.stderr)
            return 2
        rows = read_curve(path)
        if not rows or f'{args.set}_psnr' not in rows[0]:
            print(f'compare_curves: {path} has no {args.set}_psnr column (evaluated sets differ?)', file=sys.stderr)
            return 2
        curves.append((label, rows))
    print(table(curves, args.set))
    if args.plot:
        plot_curves(curves, [args.set], RECIPES[args.recipe], args.plot)
        print(f'\nplot: {args.plot}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
