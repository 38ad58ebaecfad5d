"""``lwsr-reproduce``: train a shipped recipe from scratch for a time or iteration budget on whatever device is here,
evaluate Set5/Set14 at log-spaced moments, and write the curve, a plot, the weights and a summary against the paper
to ``results/reproduce/<recipe>/`` (see :mod:`lwsr_plugin.reproduce` and docs/reproduction.md).

Examples::

    lwsr-reproduce --recipe IDN_x3 --minutes 30
    lwsr-reproduce --recipe IMDN_x4 --minutes 30 --schedule cosine
    lwsr-reproduce --recipe IMDN_x4 --iters 2000 --batch 32 --schedule cosine

Run it from the folder that holds ``datasets/`` and the shipped ``options/`` (the lwsr_plugin checkout), or pass
``--options``.
"""
import argparse
import sys

# Light module: no torch/BasicSR at import time (--help and argument errors answer at once).
RECIPE_NAMES = ('IDN_x2', 'IDN_x3', 'IDN_x4', 'IMDN_x2', 'IMDN_x3', 'IMDN_x4', 'DRN_x4', 'sLWSR16_x4', 'sLWSR32_x4')


def parser():
    p = argparse.ArgumentParser(prog='lwsr-reproduce', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--recipe', required=True, choices=RECIPE_NAMES, help='shipped training recipe')
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument('--minutes', type=float, help='training-time budget (evaluations not counted)')
    budget.add_argument('--iters', type=int, help='iteration budget')
    p.add_argument('--schedule', choices=('paper', 'cosine', 'wsd'), default='paper',
                   help="paper: the recipe's schedule cut by the budget; cosine: warm-up + cosine to 0 over the "
                   "budget; wsd: the recipe's rate for 80 %% of the budget, then linear to 0")
    p.add_argument('--batch', type=int, default=None, help="batch size (default: the recipe's); with --schedule "
                   'cosine or wsd the learning rate is scaled by batch / recipe batch')
    p.add_argument('--evals', type=int, default=8, help='log-spaced evaluations over the budget')
    p.add_argument('--sets', nargs='+', default=['Set5', 'Set14'], help='evaluation sets under datasets/')
    p.add_argument('--seed', type=int, default=0, help='manual_seed of the run')
    p.add_argument('--options', default='options', help='folder with the shipped train_*.yml files')
    p.add_argument('--out', default='results/reproduce', help='results folder (<out>/<recipe>/)')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.minutes is not None and args.minutes <= 0 or args.iters is not None and args.iters < 1:
        parser().error('the budget must be positive: --minutes > 0 or --iters >= 1')
    if args.evals < 1:
        parser().error('--evals must be >= 1')
    if args.batch is not None and args.batch < 1:
        parser().error('--batch must be >= 1')
    from lwsr_plugin.reproduce import ReproduceError, run
    try:
        run(args.recipe, minutes=args.minutes, iters=args.iters, options_dir=args.options, out=args.out,
            sets=args.sets, evals=args.evals, schedule=args.schedule, seed=args.seed, batch=args.batch)
    except ReproduceError as err:
        print(f'lwsr-reproduce: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
