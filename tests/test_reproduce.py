"""lwsr-reproduce: a real (tiny) from-scratch run of the shipped IDN x3 recipe through BasicSR's loop on a 291-style
LMDB made from T91 images, its outputs, the refusal when the data is missing, and the compressed schedule."""
import csv
import os

import pytest
import torch

from _utils import PY, run


def test_recipe_names_match_the_recipes():
    from lwsr_plugin.cli.reproduce import RECIPE_NAMES
    from lwsr_plugin.reproduce import RECIPES
    assert tuple(RECIPES) == RECIPE_NAMES
    options = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options')
    for recipe in RECIPES.values():
        assert os.path.isfile(os.path.join(options, recipe.file)), recipe.file


def test_cosine_schedule_warms_up_and_ends_at_zero():
    from lwsr_plugin.reproduce import Schedule, log_spaced
    schedule = Schedule([1e-3], warmup=0.1)
    assert schedule.factor(0) == 0 and schedule.factor(0.05) == pytest.approx(0.5)
    assert schedule.factor(0.1) == pytest.approx(1.0) and schedule.factor(1.0) == pytest.approx(0.0, abs=1e-12)
    values = [schedule.factor(p / 100) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule.apply([opt], 0.55)
    assert opt.param_groups[0]['lr'] == pytest.approx(0.5e-3)
    assert log_spaced(80, 4) == [10, 20, 40, 80]


def test_missing_training_data_is_refused_with_the_command(tmp_path):
    proc = run([PY, '-m', 'lwsr_plugin.cli.reproduce', '--recipe', 'IDN_x3', '--iters', '2', '--options',
                os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options')],
               cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and 'Traceback' not in proc.stdout
    assert 'datasets/291/291_Y_HR.lmdb is missing' in proc.stdout
    assert 'lwsr-prepare-291 --input datasets/T91 datasets/BSD200 --out datasets/291 --y-only --min-size 78' \
        in proc.stdout


@pytest.mark.slow
def test_tiny_idn_x3_run_writes_curve_plot_weights_summary(tmp_path, datasets_dir):
    work = tmp_path / 'work'
    (work / 'datasets').mkdir(parents=True)
    src = tmp_path / 'T91'
    src.mkdir()
    for name in sorted(os.listdir(os.path.join(datasets_dir, 'T91')))[:3]:
        os.symlink(os.path.join(datasets_dir, 'T91', name), src / name)
    os.symlink(os.path.join(datasets_dir, 'Set5'), work / 'datasets' / 'Set5')
    run([PY, '-m', 'lwsr_plugin.data.set291', '--input', str(src), '--out', 'datasets/291', '--y-only',
         '--factors', '1.0', '--scales', '3', '--workers', '1'], cwd=str(work))
    options = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options')
    out = run([PY, '-m', 'lwsr_plugin.cli.reproduce', '--recipe', 'IDN_x3', '--iters', '3', '--evals', '2',
               '--batch', '4', '--sets', 'Set5', 'Set14', '--options', options, '--out', str(tmp_path / 'results')],
              cwd=str(work)).stdout
    result = tmp_path / 'results' / 'IDN_x3'
    for name in ('curve.csv', 'curve.png', 'net_g.pth', 'summary.md', 'options.yml'):
        assert (result / name).is_file(), name
    with open(result / 'curve.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['iteration']) for r in rows] == [2, 3]  # log-spaced: 1.5 -> after iteration 2, then the end
    assert all(28 < float(r['Set5_psnr']) < 40 for r in rows)  # Set14 is absent here: only Set5 evaluated
    summary = (result / 'summary.md').read_text()
    assert '| Set5 |' in summary and '34.11' in summary and '30.39' in summary and '| Set14 |' not in summary
    assert 'trained: 3 iterations' in summary and 'batch 4' in summary
    params = torch.load(result / 'net_g.pth', weights_only=True)['params']
    from lwsr_plugin.archs.idn_arch import IDN
    IDN(num_in_ch=1, num_out_ch=1, upscale=3).load_state_dict(params)
    assert 'Set5' in out and 'lwsr-reproduce IDN_x3' in out
