"""Regenerate the measured tables of the documentation: each measuring command runs on this machine, and its Markdown
replaces what stands between ``<!-- BEGIN GENERATED: <name> -->`` and ``<!-- END GENERATED: <name> -->`` in every
page that holds that block (README.md and docs/**/*.md). Nothing else on a page changes.

    python scripts/update_docs.py                                  # every block below (the full measurements: long)
    python scripts/update_docs.py --quick                          # fewer archs, rounds and repeats
    python scripts/update_docs.py --only benchmark_startup model_report

Blocks and their commands (``--quick`` in brackets):

* ``benchmark_inference_cpu``: ``python scripts/benchmark_inference.py --all-archs --repeats 5`` (IMDN x4 and IDN x4,
  2 repeats);
* ``benchmark_training_cpu``: ``python scripts/benchmark_training.py`` (IMDN x4, 1 round of 1 iteration);
* ``benchmark_training_cpu_idn_x3_1worker``: ``python scripts/benchmark_training.py --archs IDN_x3 --workers 1
  --rounds 1 --iters 12 --warmup 2`` (2 iterations);
* ``benchmark_startup``: ``python scripts/benchmark_startup.py --repeats 5`` (1 repeat);
* ``model_report``: ``lwsr-report --out DIR``, its ``report.md`` (IMDN x4 only);
* ``paper_tables``: ``lwsr-test --paper-tables --out FILE`` (Set5 x4 only; ``--data-root``: the folder holding
  ``datasets/`` and ``experiments/pretrained_models/``);
* ``speed_summary`` (the README's speed table): ``python scripts/speed_summary.py`` (IMDN x4, 1 round, 1 repeat);
* ``benchmark_upscale_memory``: ``python scripts/benchmark_upscale_memory.py`` (the 12 MP output in fp32 with
  ``--tile-stats tile`` only);
* ``benchmark_contention``: ``python scripts/benchmark_contention.py --iters 40 --warmup 5 --rounds 2 --configs
  default governor fix`` (8 iterations, 1 round, ``default`` and ``fix``).

A block gets what the command's output marks with the same two lines, where it marks it (``lwsr-test
--paper-tables``); otherwise its stdout from its machine line ("Machine: <CPU model (ISA)>, <cores>, <torch
threads>, <torch version>. Command: `...`") to its end, or for a command that writes a file, that file without its
title (the page has its own). Every named block must be on some page: a name no page holds is refused, in one line,
before anything runs. A page is rewritten atomically (``lwsr_plugin.fileio.write_text_atomic``), right after the
measurement it shows, and only when the text of one of its blocks changed.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = '{python}'  # this interpreter
OUT = '{out}'  # a temporary folder for the commands that write files


class Measurement(NamedTuple):
    argv: list  # the command, run in the repository root; PY and OUT are filled in
    quick: list  # the same under --quick
    result: str = ''  # the file under OUT that holds the Markdown; '' = stdout from its 'Machine: ' line


INFERENCE, TRAINING = [PY, 'scripts/benchmark_inference.py'], [PY, 'scripts/benchmark_training.py']
CONTENTION = [PY, 'scripts/benchmark_contention.py']
REPORT, TEST = [PY, '-m', 'lwsr_plugin.cli.report', '--out', OUT], [PY, '-m', 'lwsr_plugin.test', '--paper-tables',
                                                                     '--out', OUT + '/paper_tables.md']
MEASUREMENTS = {
    'benchmark_inference_cpu': Measurement(INFERENCE + ['--all-archs', '--repeats', '5'],
                                           INFERENCE + ['--archs', 'IMDN_x4', 'IDN_x4', '--repeats', '2']),
    'benchmark_training_cpu': Measurement(TRAINING, TRAINING + ['--archs', 'IMDN_x4', '--rounds', '1', '--iters', '1',
                                                                '--warmup', '1']),
    'benchmark_training_cpu_idn_x3_1worker': Measurement(
        TRAINING + ['--archs', 'IDN_x3', '--workers', '1', '--rounds', '1', '--iters', '12', '--warmup', '2'],
        TRAINING + ['--archs', 'IDN_x3', '--workers', '1', '--rounds', '1', '--iters', '2', '--warmup', '1']),
    'benchmark_startup': Measurement([PY, 'scripts/benchmark_startup.py', '--repeats', '5'],
                                     [PY, 'scripts/benchmark_startup.py', '--repeats', '1']),
    'model_report': Measurement(REPORT, REPORT + ['--models', 'IMDN', '--scales', '4'], 'report.md'),
    'paper_tables': Measurement(TEST, TEST + ['--sets', 'Set5', '--scales', '4'], 'paper_tables.md'),
    'speed_summary': Measurement([PY, 'scripts/speed_summary.py'], [PY, 'scripts/speed_summary.py', '--archs', 'IMDN_x4',
                                                                    '--rounds', '1', '--repeats', '1']),
    'benchmark_upscale_memory': Measurement(
        [PY, 'scripts/benchmark_upscale_memory.py'],
        [PY, 'scripts/benchmark_upscale_memory.py', '--sizes', '1000x750', '--precisions', 'fp32', '--stats', 'tile']),
    'benchmark_contention': Measurement(
        CONTENTION + ['--iters', '40', '--warmup', '5', '--rounds', '2', '--configs', 'default', 'governor', 'fix'],
        CONTENTION + ['--iters', '8', '--warmup', '2', '--rounds', '1', '--configs', 'default', 'fix']),
}
MACHINE = 'Machine: '


class DocsError(Exception):
    """A page or a measurement that cannot give its block; the message is one line."""


def _pattern(name):
    name = re.escape(name)
    return re.compile(rf'(^<!--[ \t]*BEGIN GENERATED:[ \t]*{name}[ \t]*-->[ \t]*\r?\n)(.*?)'
                      rf'(^<!--[ \t]*END GENERATED:[ \t]*{name}[ \t]*-->)', re.M | re.S)


def block_names(text):
    """The names of the blocks that ``text`` opens, in order, each once."""
    names = re.findall(r'^<!--[ \t]*BEGIN GENERATED:[ \t]*(\S+)[ \t]*-->', text, re.M)
    return list(dict.fromkeys(names))


def has_block(text, name):
    """Whether ``text`` holds the block ``name``; a BEGIN without its END is a :class:`DocsError`."""
    begins = len(re.findall(rf'^<!--[ \t]*BEGIN GENERATED:[ \t]*{re.escape(name)}[ \t]*-->', text, re.M))
    found = len(_pattern(name).findall(text))
    if begins != found:
        raise DocsError(f'<!-- BEGIN GENERATED: {name} --> without its <!-- END GENERATED: {name} --> line')
    return found > 0


def replace_block(text, name, content):
    """``text`` with the content of every block ``name`` replaced by ``content`` (a blank line on either side, as
    Markdown needs around a table after an HTML comment); the markers and everything outside them stay."""
    body = '\n'.join(line.rstrip() for line in content.strip('\n').splitlines())
    return _pattern(name).sub(lambda m: f'{m.group(1)}\n{body}\n\n{m.group(3)}', text)


def update_page(path, blocks):
    """Write ``blocks`` ({name: content}) into the page ``path``, read afresh; returns whether it was rewritten
    (not when every block already holds that content)."""
    from lwsr_plugin.fileio import write_text_atomic
    with open(path, encoding='utf-8', newline='') as f:
        text = f.read()
    new = text
    for name, content in blocks.items():
        new = replace_block(new, name, content)
    if new == text:
        return False
    write_text_atomic(path, new)
    return True


def default_pages(root=REPO):
    return [p for p in [os.path.join(root, 'README.md')] + sorted(glob.glob(os.path.join(root, 'docs', '**', '*.md'),
                                                                           recursive=True)) if os.path.isfile(p)]


def pages_with(names, pages):
    """{name: [pages holding its block]}; a name no page holds is a :class:`DocsError` naming all such names."""
    texts = {}
    for page in pages:
        with open(page, encoding='utf-8') as f:
            texts[page] = f.read()
    where = {name: [] for name in names}
    for page, text in texts.items():
        for name in names:
            try:
                if has_block(text, name):
                    where[name].append(page)
            except DocsError as err:
                raise DocsError(f'{os.path.relpath(page)}: {err}') from None
    missing = [name for name in names if not where[name]]
    if missing:
        raise DocsError(f'no page of the {len(pages)} searched holds the block{"s" if len(missing) > 1 else ""} '
                        f'{", ".join(missing)}: add "<!-- BEGIN GENERATED: NAME -->" and '
                        '"<!-- END GENERATED: NAME -->" lines where the table belongs, or leave the name out with '
                        '--only.')
    return where


def command(measurement, quick, out, extra=()):
    argv = list(measurement.quick if quick else measurement.argv) + list(extra)
    return [sys.executable if a == PY else a.replace(OUT, out) for a in argv]


def markdown_of(name, stdout, out_dir, measurement):
    """The block content of one finished measurement: what its output marks as the block ``name``, if it does;
    else the whole file but its title, or stdout from its last machine line."""
    text = stdout
    if measurement.result:
        path = os.path.join(out_dir, measurement.result)
        if not os.path.isfile(path):
            raise DocsError(f'{name}: the command wrote no {measurement.result}')
        with open(path, encoding='utf-8') as f:
            text = f.read().replace(out_dir + os.sep, '')  # the command line it names: --out <file name>
    if has_block(text, name):
        return _pattern(name).search(text).group(2).strip('\n')
    if measurement.result:
        lines = text.strip('\n').splitlines()
        if lines and lines[0].startswith('# '):  # the page has its own title
            lines = lines[1:]
        return '\n'.join(lines).strip('\n')
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(MACHINE)]
    if not starts:
        raise DocsError(f'{name}: the command printed no "{MACHINE}..." line to start the block with')
    return '\n'.join(lines[starts[-1]:]).strip('\n')


def measure(name, measurement, quick, extra=()):
    """Run one measurement in the repository root; returns its block content."""
    out_dir = tempfile.mkdtemp(prefix=f'update_docs_{name}_')
    try:
        argv = command(measurement, quick, out_dir, extra)
        print(f'update_docs: {name}: {" ".join(argv)}', file=sys.stderr, flush=True)
        proc = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            tail = ' | '.join(proc.stdout.strip().splitlines()[-3:])
            raise DocsError(f'{name}: the command failed (exit status {proc.returncode}){": " + tail if tail else ""}')
        return markdown_of(name, proc.stdout, out_dir, measurement)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def build_parser():
    p = argparse.ArgumentParser(prog='update_docs.py', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fewer archs, rounds and repeats (minutes, not hours)')
    p.add_argument('--only', nargs='+', metavar='NAME', choices=list(MEASUREMENTS),
                   help='these blocks only: ' + ', '.join(MEASUREMENTS))
    p.add_argument('--pages', nargs='+', metavar='MD', help='the pages to update (default: README.md, docs/**/*.md)')
    p.add_argument('--data-root', help='paper_tables: the folder holding datasets/ and experiments/pretrained_models/ '
                   '(default: the repository root)')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    names = list(dict.fromkeys(args.only or MEASUREMENTS))
    pages = [os.path.abspath(p) for p in args.pages] if args.pages else default_pages()
    try:
        where = pages_with(names, pages)
    except DocsError as err:
        print(f'update_docs: {err}', file=sys.stderr)
        return 2
    if not args.only:
        others = sorted({n for page in pages for n in block_names(open(page, encoding='utf-8').read())}
                        - set(MEASUREMENTS))
        if others:
            print(f'update_docs: left as they are (no command here): {", ".join(others)}', file=sys.stderr)
    failed = 0
    for name in names:
        extra = ['--root', os.path.abspath(args.data_root)] if name == 'paper_tables' and args.data_root else []
        try:
            content = measure(name, MEASUREMENTS[name], args.quick, extra)
        except DocsError as err:
            print(f'update_docs: {err}', file=sys.stderr)
            failed += 1
            continue
        for page in where[name]:
            changed = update_page(page, {name: content})
            print(f'update_docs: {name}: {os.path.relpath(page)} {"updated" if changed else "unchanged"}',
                  file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
