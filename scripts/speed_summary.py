"""The README's speed table: per arch, the training step against a plain PyTorch loop and the fast inference form
against the plain module, from one run of each benchmark on this machine.

It runs ``scripts/benchmark_training.py`` (the shipped recipe's batch and patch; plain loop vs the plugin's shipped
fast options; ``speed-up`` column) and ``scripts/benchmark_inference.py`` (LR input of a 1280x720 output; ``fast
fp32`` and ``fast bf16`` ratios to the baseline: the official forward for IMDN, the plain NCHW module otherwise) as
subprocesses, reads their Markdown tables and prints one table with the machine line::

    python scripts/speed_summary.py                       # IMDN x4, IDN x3, s-LWSR32 x4
    python scripts/speed_summary.py --archs IMDN_x4 DRN_x4 --rounds 3 --repeats 3
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# the case names of the two benchmarks for one arch
ARCHS = {'IMDN_x4': ('IMDN_x4', 'IMDN_x4'), 'IDN_x3': ('IDN_x3', 'IDN_x3'), 'DRN_x4': ('DRN_x4', 'DRN_x4'),
         'sLWSR32_x4': ('sLWSR32_x4', 'SLWSR32_x4')}


def run(argv):
    """The stdout of one benchmark run; its failure ends this script with the benchmark's last lines."""
    proc = subprocess.run([sys.executable] + argv, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'speed_summary: {" ".join(argv)} failed ({proc.returncode}): '
                         f'{proc.stderr.strip()[-600:]}')
    return proc.stdout


def table_rows(text):
    """``{header: value}`` dicts of the first Markdown table in ``text`` (bold markers dropped from headers)."""
    lines = [line for line in text.splitlines() if line.startswith('|')]
    if len(lines) < 3:
        return []
    header = [h.strip().replace('**', '') for h in lines[0].strip('|').split('|')]
    return [dict(zip(header, (c.strip() for c in line.strip('|').split('|')))) for line in lines[2:]]


def first_number(cell):
    match = re.search(r'\d+(?:\.\d+)?', cell or '')
    return match.group(0) if match else '-'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--archs', nargs='+', default=['IMDN_x4', 'IDN_x3', 'sLWSR32_x4'], choices=list(ARCHS),
                   help='DRN x4 is left out by default: its plain-loop steps take minutes on 2 cores')
    p.add_argument('--rounds', type=int, default=2, help='training benchmark rounds (default 2)')
    p.add_argument('--repeats', type=int, default=3, help='inference benchmark repeats (default 3)')
    args = p.parse_args(argv)
    training = table_rows(run(['scripts/benchmark_training.py', '--archs'] + [ARCHS[a][0] for a in args.archs] +
                              ['--rounds', str(args.rounds), '--iters', '2', '--warmup', '2']))
    inference_out = run(['scripts/benchmark_inference.py', '--repeats', str(args.repeats), '--archs'] +
                        [ARCHS[a][1] for a in args.archs])
    inference = table_rows(inference_out)
    sys.path.insert(0, REPO)
    from lwsr_plugin.ops.device import machine_line
    print(machine_line([os.path.join(HERE, 'speed_summary.py')] + list(argv if argv is not None else sys.argv[1:])))
    print()
    print('| arch | training step: plugin (shipped options) vs plain loop | inference: fast fp32 / fast bf16, time vs '
          'plain module |')
    print('|---|---|---|')
    for arch in args.archs:
        train_name, infer_name = ARCHS[arch]
        fast = next((r for r in training if r.get('arch') == train_name and r.get('path') == 'plugin fast'), {})
        infer = next((r for r in inference if r.get('arch (LR -> output)', '').startswith(infer_name + ' ')), {})
        column = {h.split(' (')[0]: v for h, v in infer.items()}  # 'fast fp32 (max abs diff)' -> 'fast fp32'
        bf16 = column.get('fast bf16')
        ratios = f'{first_number(column.get("fast fp32"))} / {first_number(bf16) if bf16 else "-"}'
        print(f'| {arch} | {fast.get("speed-up", "-")} faster | {ratios} |')


if __name__ == '__main__':
    main()
