"""docs/benchmark_your_arch.md, run as written: its Python block becomes ``myarchs/mysr_arch.py``, its YAML block
replaces the top-level keys of the copied option file, and its shell commands run in order, on tiny data made in
``tmp_path`` from the shared datasets.

The budgets are the one substitution: the page trains for ``--minutes 10``; here each run is bounded by iterations
(``--iters 3 --batch 2 --evals 2``) so that the test takes the same time on any machine, and ``lwsr-report`` gets a
small output and one timed forward (``--output-size 96x96 --repeats 1``) instead of 720p; its PSNR columns come from
the weights the two runs wrote.
"""
import csv
import os
import re
import shlex

import pytest
import yaml

from _utils import BIN, run
from conftest import REPO
from test_reproduce import _tiny_291_work

PAGE = os.path.join(REPO, 'docs', 'benchmark_your_arch.md')
ARCH_FILE = 'myarchs/mysr_arch.py'
SUBSTITUTIONS = [('--minutes 10', '--iters 3 --batch 2 --evals 2')]
REPORT_EXTRA = ['--output-size', '96x96', '--repeats', '1', '--threads', '1', '--no-gpu']


def code_blocks(text, language):
    """The bodies of the page's fenced ``language`` blocks, in order."""
    return re.findall(rf'^```{language}\n(.*?)^```', text, flags=re.S | re.M)


def commands(block):
    """The shell commands of a ``bash`` block: one per line (``\\`` continues a line), comments left out."""
    joined = block.replace('\\\n', ' ')
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith('#')]


def _tiny_work(tmp_path, datasets_dir):
    """``<tmp_path>/work`` with ``datasets/Set5`` and an RGB x4 291-style LMDB of two BSD200 images (IMDN x4's
    fallback when DIV2K is absent; its HR patches are 192 pixels, which BSD200's 481x321 images give)."""
    return _tiny_291_work(tmp_path, datasets_dir, 'BSD200', 2, ('--scales', '4', '--min-size', '192'))


def _command(line):
    """``line`` of the page as argv: the budget substituted, ``lwsr-*`` from this environment."""
    for old, new in SUBSTITUTIONS:
        line = line.replace(old, new)
    argv = shlex.split(line)
    assert argv[0].startswith('lwsr-'), line
    argv[0] = os.path.join(BIN, argv[0])
    if argv[0].endswith('lwsr-report'):
        argv += REPORT_EXTRA
    return argv


@pytest.mark.slow
def test_walkthrough_page_runs_as_written(tmp_path, datasets_dir):
    with open(PAGE, encoding='utf-8') as f:
        page = f.read()
    (python_block, ), (yaml_block, ) = code_blocks(page, 'python'), code_blocks(page, 'yaml')
    shell = [c for block in code_blocks(page, 'bash') for c in commands(block)]
    assert ARCH_FILE in page and '@ARCH_REGISTRY.register()' in python_block
    assert 20 <= len(python_block.splitlines()) <= 60
    assert all(old in page for old, _ in SUBSTITUTIONS)
    work = _tiny_work(tmp_path, datasets_dir)
    (work / 'myarchs').mkdir()
    (work / ARCH_FILE).write_text(python_block)
    edits = yaml.safe_load(yaml_block)

    outputs = {}
    for line in shell:
        proc = run(_command(line), cwd=str(work), timeout=900)
        outputs[line] = proc.stdout
        if line.startswith('lwsr-options copy'):  # the page's edit of the copied file
            opt_file = work / shlex.split(line)[-1]
            opt = yaml.safe_load(opt_file.read_text())
            opt.update(edits)
            opt_file.write_text(yaml.safe_dump(opt, sort_keys=False))

    mine = work / 'results' / 'reproduce' / edits['name']
    imdn = work / 'results' / 'reproduce' / 'IMDN_x4'
    for run_dir in (mine, imdn):
        for name in ('curve.csv', 'curve.png', 'net_g.pth', 'summary.md', 'options.yml'):
            assert (run_dir / name).is_file(), run_dir / name
        with open(run_dir / 'curve.csv', newline='') as f:
            rows = list(csv.DictReader(f))
        # three iterations from scratch: a measured PSNR, not yet a trained one
        assert [int(r['iteration']) for r in rows] == [2, 3], rows
        assert all(5 < float(r['Set5_psnr']) < 40 for r in rows), rows
    summary = (mine / 'summary.md').read_text()
    assert summary.startswith(f"# lwsr-reproduce {edits['name']}") and 'no paper number' in summary
    assert '| Set5 |' in summary and '28.42' in summary and '| paper |' not in summary  # bicubic x4, no paper
    assert '32.21' in (imdn / 'summary.md').read_text()  # the recipe keeps its paper column

    compared = work / 'results' / 'compare'
    table = (compared / 'mysr_vs_imdn.md').read_text()
    assert f"{edits['name']}: iters / PSNR" in table and 'IMDN_x4: iters / PSNR' in table
    assert f"| {edits['name']} | 3 |" in table and '| IMDN_x4 | 3 |' in table
    assert (compared / 'mysr_vs_imdn.png').stat().st_size > 1000

    with open(work / 'results' / 'report_mysr' / 'report.csv', newline='') as f:
        report_rows = {r['model']: r for r in csv.DictReader(f)}
    assert set(report_rows) == {edits['name'], 'IMDN', 'IDN (Y)'}
    assert all(r['scale'] == '4' for r in report_rows.values())
    assert 0 < int(report_rows[edits['name']]['params']) < int(report_rows['IMDN']['params'])
    # the weights of both runs (--ckpt): the Set5 PSNR of their last evaluation, the same validation on the same
    # net_g.pth; IDN, given none, an empty cell
    for name, run_dir in ((edits['name'], mine), ('IMDN', imdn)):
        with open(run_dir / 'curve.csv', newline='') as f:
            final = list(csv.DictReader(f))[-1]
        assert abs(float(report_rows[name]['psnr_Set5']) - float(final['Set5_psnr'])) < 1e-3, (report_rows[name], final)
    assert report_rows['IDN (Y)']['psnr_Set5'] == ''
    md = (work / 'results' / 'report_mysr' / 'report.md').read_text()
    assert f"{edits['name']} x4: train_MySR_x4.yml, Y, crop border 4, LR files" in md and 'Failed' not in md
