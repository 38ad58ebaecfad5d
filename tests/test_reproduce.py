"""lwsr-reproduce: a real (tiny) from-scratch run of the shipped IDN x3 recipe through BasicSR's loop on a 291-style
LMDB made from T91 images, its outputs, the refusal when the data is missing, and the compressed schedule."""
import csv
import os

import pytest
import torch

from _utils import PY, run


def test_every_recipe_has_its_option_file():
    from lwsr_plugin.cli.reproduce import RECIPES
    options = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options')
    for recipe in RECIPES.values():
        assert os.path.isfile(os.path.join(options, recipe.file)), recipe.file


def test_cosine_schedule_warms_up_and_ends_at_zero():
    from lwsr_plugin.cli.reproduce import log_spaced
    from lwsr_plugin.patches.budget import Schedule
    schedule = Schedule([1e-3], warmup=0.1)
    assert schedule.factor(0) == 0 and schedule.factor(0.05) == pytest.approx(0.5)
    assert schedule.factor(0.1) == pytest.approx(1.0) and schedule.factor(1.0) == pytest.approx(0.0, abs=1e-12)
    values = [schedule.factor(p / 100) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule.apply([opt], 0.55)
    assert opt.param_groups[0]['lr'] == pytest.approx(0.5e-3)
    assert log_spaced(80, 4) == [10, 20, 40, 80]
    wsd = Schedule([1e-3], 'wsd', decay=0.2)  # the recipe's rate (no warm-up) for 80 %, then linear to 0
    assert wsd.factor(0) == 1 and wsd.factor(0.8) == pytest.approx(1) and wsd.factor(0.9) == pytest.approx(0.5)
    assert wsd.factor(1.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="schedule 'step'"):
        Schedule([1e-3], 'step')


class BudgetModel:
    """What a training budget uses of a BasicSR model: optimizers, ``update_learning_rate``, ``save``."""

    def __init__(self, lr=1e-3):
        self.optimizers = [torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)]
        self.optimizers[0].param_groups[0]['initial_lr'] = lr
        self.stepped, self.saved = [], []
        self.log_dict = {'l_pix': 0.05}

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        self.stepped.append(current_iter)
        self.optimizers[0].param_groups[0]['lr'] = 1.0  # a scheduler of BasicSR's; a compressed schedule overrides it

    def save(self, epoch, current_iter):
        self.saved.append((epoch, current_iter))


def _train(budget, model, total_iter):
    """BasicSR's loop as the budget sees it: the built model handed over, ``update_learning_rate`` first in every
    iteration up to ``total_iter``; returns the learning rate of every iteration."""
    lrs = []
    with budget:
        budget.attach(model)
        for current_iter in range(1, total_iter + 1):
            model.update_learning_rate(current_iter)
            lrs.append(model.optimizers[0].param_groups[0]['lr'])
    return lrs


def test_iteration_budget_evaluates_at_its_moments_sets_the_rate_and_ends_the_loop():
    from lwsr_plugin.patches.budget import TrainingBudget
    evaluated, shown = [], []
    model = BudgetModel()
    budget = TrainingBudget(iters=8, schedule='cosine', warmup=0.0, end_lr=1e-5, moments=[2, 4, 8], save_latest=True,
                            evaluate=lambda b: evaluated.append(b.done), show=lambda b: shown.append(b.finished))
    lrs = _train(budget, model, 100)
    assert evaluated == [2, 4, 8] and budget.done == 8 and budget.reason == 'iterations'
    assert model.stepped == list(range(1, 9)) and model.saved == [(-1, -1)]  # iteration 9 never ran
    assert lrs[0] == pytest.approx(1e-3) and lrs[4] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and shown == [False] * 8 + [True]


def test_time_budget_excludes_evaluations_and_a_loop_that_ends_first_is_kept():
    import time

    from lwsr_plugin.patches.budget import BudgetSpent, TrainingBudget
    model = BudgetModel()
    budget = TrainingBudget(minutes=0.3 / 60, moments=[0.1], evaluate=lambda b: time.sleep(0.5))
    with budget:
        budget.attach(model)
        for current_iter in range(1, 10 ** 6):
            model.update_learning_rate(current_iter)
            time.sleep(0.01)
    assert budget.reason == 'time' and 0.3 <= budget.train_s < 1.0 and budget.eval_s >= 0.5 * 2  # at 0.1 s and the end
    assert model.saved == [] and budget.train_s + budget.eval_s <= budget.wall_s + 0.05
    assert model.optimizers[0].param_groups[0]['lr'] == 1.0  # schedule 'none': BasicSR's own scheduler
    finished = []
    natural = TrainingBudget(minutes=1, show=lambda b: finished.append((b.done, b.finished)))
    _train(natural, BudgetModel(), 3)  # total_iter reached first: BasicSR ends the loop, the budget only closes its view
    assert finished[-1] == (3, True) and natural.reason is None
    assert issubclass(BudgetSpent, BaseException) and not issubclass(BudgetSpent, Exception)
    with pytest.raises(ValueError, match="schedule 'step'"):
        TrainingBudget(iters=1, schedule='step')


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


def _tiny_291_sources(tmp_path, datasets_dir):
    """T91/ (3 images), BSD200/ (1) and Set5/ as the data folder of scripts/gpu_proof.py."""
    data = tmp_path / 'data'
    for sub, n in (('T91', 3), ('BSD200', 1)):
        (data / sub).mkdir(parents=True)
        for name in sorted(os.listdir(os.path.join(datasets_dir, sub)))[:n]:
            os.symlink(os.path.join(datasets_dir, sub, name), data / sub / name)
    os.symlink(os.path.join(datasets_dir, 'Set5'), data / 'Set5')
    return data


@pytest.mark.slow
def test_gpu_proof_script_runs_its_idn_stage_here_and_skips_what_does_not_fit(tmp_path, datasets_dir):
    """The prepared device run, on this CPU: 291 preparation, lwsr-reproduce IDN x3 within the budget, the results
    copied under their recipe's name (the device tool brings back at most 8 files); a budget too small is a skip."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts', 'gpu_proof.py')
    data = _tiny_291_sources(tmp_path, datasets_dir)
    out = tmp_path / 'out'
    proc = run([PY, script, '--data', str(data), '--out', str(out), '--work', str(tmp_path / 'work'),
                '--budget-s', '400', '--stages', 'idn', '--idn-minutes', '0.03', '--evals', '2'], cwd=str(tmp_path))
    assert sorted(os.listdir(out)) == ['IDN_x3_curve.csv', 'IDN_x3_curve.png', 'IDN_x3_summary.md', 'proof.log']
    with open(out / 'IDN_x3_curve.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(20 < float(r['Set5_psnr']) < 40 for r in rows)
    assert 'schedule: wsd' in (out / 'IDN_x3_summary.md').read_text()
    log = (out / 'proof.log').read_text()
    assert 'lwsr_plugin.data.set291' in log and 'lwsr-reproduce exit 0' in log and 'done (exit 0)' in proc.stdout

    small = run([PY, script, '--data', str(data), '--out', str(tmp_path / 'out2'), '--work', str(tmp_path / 'w2'),
                 '--budget-s', '100', '--stages', 'idn'], cwd=str(tmp_path), check=False)
    assert small.returncode == 1 and 'idn: skipped' in small.stdout


def test_gpu_proof_script_names_a_missing_data_folder(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts', 'gpu_proof.py')
    (tmp_path / 'data' / 'T91').mkdir(parents=True)
    proc = run([PY, script, '--data', str(tmp_path / 'data'), '--out', str(tmp_path / 'out')], cwd=str(tmp_path),
               check=False)
    assert proc.returncode == 2 and 'BSD200/ is missing' in proc.stdout and 'Traceback' not in proc.stdout


@pytest.mark.slow
def test_plain_loop_writes_the_same_curve_columns(tmp_path, datasets_dir):
    """scripts/plain_loop.py (the papers' recipe without BasicSR, the side-by-side of docs/reproduction.md): a tiny
    run on a 291-style LMDB, evaluated with BasicSR's metrics at the log-spaced moments, in lwsr-reproduce's CSV."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = _tiny_291_sources(tmp_path, datasets_dir)
    work = tmp_path / 'work'
    (work / 'datasets').mkdir(parents=True)
    os.symlink(data / 'Set5', work / 'datasets' / 'Set5')
    plain = [PY, os.path.join(repo, 'scripts', 'plain_loop.py'), '--recipe', 'IDN_x3', '--iters', '3', '--options',
             os.path.join(repo, 'options'), '--out', str(tmp_path / 'plain')]
    run([PY, '-m', 'lwsr_plugin.data.set291', '--input', str(data / 'T91'), '--out', 'datasets/291', '--y-only',
         '--factors', '1.0', '--scales', '3', '--workers', '1'], cwd=str(work))
    small = run(plain, cwd=str(work), check=False, timeout=120)  # 3 images x 8 flips/rotations: not one batch of 64
    assert small.returncode == 2 and 'records, fewer than one batch of 64' in small.stdout
    run([PY, '-m', 'lwsr_plugin.data.set291', '--input', str(data / 'T91'), '--out', 'datasets/291', '--y-only',
         '--scales', '3', '--workers', '1', '--overwrite'], cwd=str(work))
    proc = run([PY, os.path.join(repo, 'scripts', 'plain_loop.py'), '--recipe', 'IDN_x3', '--iters', '3', '--evals',
                '2', '--sets', 'Set5', '--options', os.path.join(repo, 'options'), '--out', str(tmp_path / 'plain')],
               cwd=str(work))
    with open(tmp_path / 'plain' / 'IDN_x3' / 'curve.csv') as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ['iteration', 'train_seconds', 'wall_seconds', 'Set5_psnr', 'Set5_ssim']
    assert [int(r['iteration']) for r in rows] == [2, 3] and all(20 < float(r['Set5_psnr']) < 40 for r in rows)
    assert 'np.float64' not in proc.stdout and 'plain loop IDN_x3' in proc.stdout


def test_compare_curves_tables_equal_training_times_and_plots(tmp_path):
    """scripts/compare_curves.py: rows matched by evaluation moment, differences to the first curve, one plot."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from lwsr_plugin.cli.reproduce import write_curve
    a = [{'iteration': 10, 'train_seconds': 60.0, 'wall_seconds': 61, 'Set5_psnr': 30.0, 'Set5_ssim': 0.8},
         {'iteration': 20, 'train_seconds': 120.0, 'wall_seconds': 122, 'Set5_psnr': 31.0, 'Set5_ssim': 0.85}]
    b = [{'iteration': 4, 'train_seconds': 60.1, 'wall_seconds': 62, 'Set5_psnr': 29.5, 'Set5_ssim': 0.79}]
    write_curve(tmp_path / 'a.csv', a, ['Set5'])
    write_curve(tmp_path / 'b.csv', b, ['Set5'])
    script = os.path.join(repo, 'scripts', 'compare_curves.py')
    out = run([PY, script, '--recipe', 'IDN_x3', '--curve', f'plugin={tmp_path / "a.csv"}', '--curve',
               f'plain={tmp_path / "b.csv"}', '--plot', str(tmp_path / 'cmp.png')], cwd=str(tmp_path)).stdout
    assert '| 1.0 | 10 / 30.00 | 4 / 29.50 | -0.50 |' in out and '| 2.0 | 20 / 31.00 | - | - |' in out
    assert (tmp_path / 'cmp.png').stat().st_size > 1000
    bad = run([PY, script, '--recipe', 'IDN_x3', '--curve', str(tmp_path / 'a.csv')], cwd=str(tmp_path), check=False)
    assert bad.returncode == 2 and 'expected LABEL=CSV' in bad.stdout
