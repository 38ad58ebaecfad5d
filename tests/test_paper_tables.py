"""``lwsr-test --paper-tables`` (docs/paper_tables.md): paper / measured / delta for IDN Tables 2-3 and IMDN Table 5,
with absent and partial sets marked; ``lwsr-evaluate --paper-tables`` is the same command."""
import os
import re
import sys

import pytest
import torch

from _utils import BIN, link_datasets, run
from lwsr_plugin.cli import evaluate as evaluate_cli
from lwsr_plugin.metrics.paper_tables import IDN_TABLE2, IDN_TABLE3, IMDN_TABLE5, paper_tables_markdown
from lwsr_plugin.test import main as lwsr_test


def _rows(text):
    """Table rows of the markdown as lists of cells."""
    return [[c.strip() for c in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith('| ') and not line.startswith('| set')]


def test_markdown_cells_deltas_absent_and_partial():
    results = {
        ('IDN', 4): {'Set5': {'images': 5, 'psnr': 31.8094, 'ssim': 0.8902, 'ifc': 3.8208},
                     'Urban100': {'images': 5, 'psnr': 25.356, 'ssim': 0.793, 'ifc': 4.121}},
        ('Bicubic', 4): {'Set5': {'images': 5, 'psnr': 28.4207, 'ssim': 0.8104, 'ifc': 2.329}},
        ('IMDN', 4): {'Set5': {'images': 5, 'psnr': 32.2096, 'ssim': 0.8948}},
    }
    text = paper_tables_markdown(results, ['Set5', 'Urban100', 'Manga109'], [4], 'lwsr-test --paper-tables', 60.)
    rows = _rows(text)
    idn = next(r for r in rows if r[:3] == ['Set5', 'x4', 'IDN'] and len(r) == 10)
    assert idn[3:6] == ['31.82', '31.8094', '-0.0106'] and idn[-1] == '**no**'
    bicubic = next(r for r in rows if r[:3] == ['Set5', 'x4', 'Bicubic'] and len(r) == 10)
    assert bicubic[5] == '+0.0007' and bicubic[-1] == 'yes'
    ifc = next(r for r in rows if r[:3] == ['Set5', 'x4', 'IDN'] and len(r) == 7)
    assert ifc[3:] == ['3.826', '3.821', '-0.14 %', 'yes']
    urban = next(r for r in rows if r[:3] == ['Urban100', 'x4', 'IDN'] and len(r) == 10)
    assert urban[4] == '25.3560 (5/100 images)' and urban[5] == 'not comparable' and urban[-1] == ''
    assert next(r for r in rows if r[:3] == ['Urban100', 'x4', 'Bicubic'] and len(r) == 10)[4] == 'absent'
    manga = next(r for r in rows if r[:2] == ['Manga109', 'x4'])
    assert manga[2:4] == ['30.45', 'absent']  # IMDN's Table 5 only: not in IDN's tables
    assert not any(r[0] == 'Manga109' and r[2] in ('IDN', 'Bicubic') for r in rows)
    assert 'one hundredth above' in text and 'img_001-img_005' in text


def test_paper_values_cover_the_tables():
    sets = ('Set5', 'Set14', 'BSD100', 'Urban100')
    assert set(IDN_TABLE2) == set(IDN_TABLE3) == {(s, k) for s in sets for k in (2, 3, 4)}
    assert set(IMDN_TABLE5) == {(s, k) for s in sets + ('Manga109', ) for k in (2, 3, 4)}


@pytest.mark.parametrize('args, message', [
    (['--sets', 'Set6'], 'unknown'), (['--scales', '8'], 'x2, x3 and x4'), (['--scales', 'x2'], 'integers'),
    (['--models', 'EDSR'], 'IDN, Bicubic, IMDN'), (['--bogus'], 'unrecognized arguments: --bogus')])
@pytest.mark.parametrize('command, main', [('lwsr-test', lwsr_test), ('lwsr-evaluate', evaluate_cli.main)])
def test_bad_arguments_fail_in_one_line(command, main, args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, 'argv', list(sys.argv))  # the command line is handed to BasicSR through sys.argv
    with pytest.raises(SystemExit) as exit_info:
        main(['--paper-tables', '--out', str(tmp_path / 'x.md')] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and message in err[-1] and err[-1].startswith(f'{command}: '), err
    assert len(err) == 1 or err[0].startswith(f'usage: {command} ')  # argparse's own errors: usage + one line
    assert not (tmp_path / 'x.md').exists()


def test_evaluate_keeps_the_names_of_the_tables_module():
    """Scripts that import the tables or the in-process evaluation from the older command's module still work."""
    from lwsr_plugin.metrics import paper_tables
    assert evaluate_cli.IMDN_TABLE5 is IMDN_TABLE5 and evaluate_cli.evaluate_options is paper_tables.evaluate_options
    with pytest.raises(AttributeError):
        evaluate_cli.no_such_name


@pytest.mark.slow
def test_command_writes_the_tables(tmp_path, datasets_dir, shared):
    """The real command on Set5 x4 (and the absent Manga109): IDN through the shipped YAML with converted weights,
    bicubic, IMDN with the released checkpoint; the file is complete and names the command."""
    from lwsr_plugin.convert.caffe_idn import convert_idn_caffemodel
    work = link_datasets(tmp_path, datasets_dir)
    weights = tmp_path / 'experiments' / 'pretrained_models'
    os.makedirs(weights)
    state, _ = convert_idn_caffemodel(shared('anchors', 'idn', 'IDN_x4.caffemodel'), 4)
    torch.save({'params': state}, weights / 'IDN_x4.pth')
    os.symlink(shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'), weights / 'IMDN_x4.pth')
    options = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options')
    out = run([os.path.join(BIN, 'lwsr-test'), '--paper-tables', '--sets', 'Set5,Manga109', '--scales', '4',
               '--out', 'tables.md', '--options', options], cwd=work, timeout=900).stdout
    assert 'skipped Manga109' in out and 'wrote tables.md' in out
    text = (tmp_path / 'tables.md').read_text()
    assert re.search(r'Generated by `lwsr-test --paper-tables --sets Set5,Manga109 --scales 4 --out tables.md',
                     text)
    rows = _rows(text)
    psnr = {r[2]: float(r[4]) for r in rows if r[:2] == ['Set5', 'x4'] and len(r) == 10}
    assert abs(psnr['IDN'] - 31.8094) <= 1e-3 and abs(psnr['Bicubic'] - 28.4207) <= 1e-3
    imdn = next(r for r in rows if r[:2] == ['Set5', 'x4'] and len(r) == 9)
    assert abs(float(imdn[3]) - 32.2096) <= 1e-3 and imdn[-1] == 'yes'
    assert next(r for r in rows if r[:2] == ['Manga109', 'x4'])[3] == 'absent'
    assert not list(tmp_path.glob('tables.md.tmp*'))
