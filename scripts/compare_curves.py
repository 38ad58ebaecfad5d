"""``python scripts/compare_curves.py --recipe R --set S --curve LABEL=CSV ... [--plot P.png]``: the older form of
``lwsr-compare-runs`` (see its --help), which it runs: every curve labelled, the set chosen, the plot and the tables
written beside each other as ``P.png`` and ``P.md``."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from lwsr_plugin.cli import compare_runs
    from lwsr_plugin.cli.reproduce import RECIPES
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--recipe', required=True, choices=list(RECIPES))
    p.add_argument('--curve', action='append', required=True, metavar='LABEL=CSV',
                   help='a curve to compare (repeat; the first is the reference of the differences)')
    p.add_argument('--set', default='Set5')
    p.add_argument('--plot', help='PNG to write (the tables go beside it as .md)')
    args = p.parse_args(argv)
    for item in args.curve:
        if '=' not in item:
            print(f'compare_curves: --curve {item!r}: expected LABEL=CSV with an existing CSV file', file=sys.stderr)
            return 2
    return compare_runs.main(args.curve + ['--sets', args.set, '--recipe', args.recipe]
                             + (['-o', args.plot] if args.plot else []))


if __name__ == '__main__':
    sys.exit(main())
