"""lwsr-reproduce: a real (tiny) from-scratch run of the shipped IDN x3 recipe through BasicSR's loop on a 291-style
LMDB made from T91 images, its outputs, the refusal when the data is missing, and the compressed schedule."""
import csv
import os

import pytest
import torch

from _utils import BIN, PY, run


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


def _tiny_291_work(tmp_path, datasets_dir, source='T91', count=3, prepare=('--y-only', '--scales', '3')):
    """``<tmp_path>/work``, outside the checkout, holding ``datasets/Set5`` and a 291 LMDB of the first ``count``
    images of ``source`` made with ``lwsr_plugin.data.set291 --factors 1.0`` and ``prepare`` (by default a Y-only x3
    LMDB of 3 T91 images: 24 pairs)."""
    work = tmp_path / 'work'
    (work / 'datasets').mkdir(parents=True)
    src = tmp_path / source
    src.mkdir()
    for name in sorted(os.listdir(os.path.join(datasets_dir, source)))[:count]:
        os.symlink(os.path.join(datasets_dir, source, name), src / name)
    os.symlink(os.path.join(datasets_dir, 'Set5'), work / 'datasets' / 'Set5')
    run([PY, '-m', 'lwsr_plugin.data.set291', '--input', str(src), '--out', 'datasets/291', '--factors', '1.0',
         *prepare, '--workers', '1'], cwd=str(work))
    return work


@pytest.mark.slow
def test_recipe_runs_from_a_folder_outside_the_checkout_without_options(tmp_path, datasets_dir):
    """No --options: the recipe is the shipped option file, found from any working directory."""
    work = _tiny_291_work(tmp_path, datasets_dir)
    out = run([os.path.join(BIN, 'lwsr-reproduce'), '--recipe', 'IDN_x3', '--iters', '20', '--batch', '4',
               '--evals', '1', '--sets', 'Set5', '--out', str(tmp_path / 'results')], cwd=str(work)).stdout
    assert 'trained: 20 iterations' in out
    assert (tmp_path / 'results' / 'IDN_x3' / 'net_g.pth').is_file()


@pytest.mark.slow
def test_tiny_idn_x3_run_writes_curve_plot_weights_summary(tmp_path, datasets_dir):
    work = _tiny_291_work(tmp_path, datasets_dir)
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
    copied under their recipe's name (a GPU run returns at most 8 small files); a budget too small is a skip."""
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


BUDGETED_RUN = '''
import sys
from lwsr_plugin import entry
from lwsr_plugin.patches.budget import TrainingBudget
with TrainingBudget(minutes={minutes}, iters={iters}):
    entry.run('train', ['-opt', {opt!r}])
'''


@pytest.mark.parametrize('minutes, iters', [(None, 12), (0.05, None)], ids=['iterations', 'minutes'])
def test_budgeted_run_shows_the_budget_not_total_iter(tmp_path, datasets_dir, minutes, iters):
    """A real BasicSR training run of 70,000,000 iterations by its option file (BasicSR's ETA: days) under a tiny
    budget: the plugin's progress lines and BasicSR's periodic lines show the budget's total and an ETA within it,
    never total_iter's."""
    import datetime
    import re

    from _utils import link_datasets, write_options
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'train.total_iter': 70_000_000, 'logger.print_freq': 2,
                                                 'logger.progress_interval': 0.001})
    out = run([PY, '-c', BUDGETED_RUN.format(minutes=minutes, iters=iters, opt=opt)], cwd=str(work)).stdout
    lines = [line for line in out.splitlines() if re.search(r'\beta: ', line)]
    progress = [line for line in lines if '[progress]' in line]
    basicsr_lines = [line for line in lines if 'time (data)' in line]
    assert len(progress) >= 3 and len(basicsr_lines) >= 2, out[-3000:]
    assert not [line for line in lines if re.search(r'70,?000,?000|day', line)]
    total_s = minutes * 60 if minutes else None
    for line in lines:
        spent = re.search(r'budget (\d+)/12 iters' if iters else r'budget ([\d.]+)/3\.0 s', line)
        eta = re.search(r'eta: (\d+):(\d\d):(\d\d)', line)
        assert spent and eta, line
        eta_s = datetime.timedelta(hours=int(eta[1]), minutes=int(eta[2]), seconds=int(eta[3])).total_seconds()
        assert eta_s <= (total_s if total_s else 60), line  # 12 tiny iterations: seconds, not days
    assert re.search(r'\[progress\] iter:\s+\d+ \| [\d.]+ it/s \| budget ', progress[-1]), progress[-1]
    assert re.search(r'\[eta: \d+:\d\d:\d\d \(budget [^)]*\), time \(data\)', basicsr_lines[-1]), basicsr_lines[-1]


def test_opt_and_recipe_exclude_each_other_and_a_bad_option_file_is_one_line(tmp_path):
    """``--opt`` instead of ``--recipe``: never both; a missing file or one without ``scale`` is refused by name."""
    both = run([PY, '-m', 'lwsr_plugin.cli.reproduce', '--recipe', 'IDN_x3', '--opt', 'x.yml', '--iters', '2'],
               cwd=str(tmp_path), check=False)
    assert both.returncode == 2 and 'not allowed with argument' in both.stdout
    missing = run([PY, '-m', 'lwsr_plugin.cli.reproduce', '--opt', 'x.yml', '--iters', '2'], cwd=str(tmp_path),
                  check=False)
    assert missing.returncode == 2 and missing.stdout.strip().splitlines() == [
        'lwsr-reproduce: --opt x.yml: no such file; give a training option file (e.g. one made by '
        '`lwsr-options copy train_IMDN_x4`).']
    (tmp_path / 'no_scale.yml').write_text('name: mine\nnetwork_g: {type: IMDN}\n')
    bad = run([PY, '-m', 'lwsr_plugin.cli.reproduce', '--opt', 'no_scale.yml', '--iters', '2'], cwd=str(tmp_path),
              check=False)
    assert bad.returncode == 2 and '--opt no_scale.yml: no scale, datasets, train' in bad.stdout
    assert 'Traceback' not in bad.stdout


def test_compare_runs_labels_by_summary_writes_table_and_plot_and_names_a_bad_run(tmp_path):
    """lwsr-compare-runs on two run folders: labels from their summary.md, nearest earlier evaluation at the first
    run's moments (2 % tolerance), the final numbers, OUT.md and OUT.png; a folder without curve.csv in one line."""
    from lwsr_plugin.cli.reproduce import write_curve
    runs = {'MySR_x4': [(10, 60.0, 30.0), (20, 120.0, 31.0), (40, 240.0, 31.5)],
            'IMDN_x4': [(4, 60.5, 29.5), (9, 121.0, 30.2)]}
    for name, points in runs.items():
        (tmp_path / name).mkdir()
        write_curve(tmp_path / name / 'curve.csv', [
            {'iteration': i, 'train_seconds': t, 'wall_seconds': t + 1, 'Set5_psnr': p, 'Set5_ssim': 0.8}
            for i, t, p in points], ['Set5'])
        (tmp_path / name / 'summary.md').write_text(f'# lwsr-reproduce {name}\n')
    out = run([os.path.join(BIN, 'lwsr-compare-runs'), 'MySR_x4', 'IMDN_x4', '-o', 'cmp/mysr'],
              cwd=str(tmp_path)).stdout
    table = (tmp_path / 'cmp' / 'mysr.md').read_text()
    assert '| 1.0 | 10 / 30.00 | 4 / 29.50 | -0.50 |' in table and '| 2.0 | 20 / 31.00 | 9 / 30.20 | -0.80 |' in table
    assert '| 4.0 | 40 / 31.50 | - | - |' in table and 'nearest earlier evaluation' in table
    assert '| MySR_x4 | 40 | 4.0 | 31.50 / 0.8000 |' in table and table.strip() in out
    assert (tmp_path / 'cmp' / 'mysr.png').stat().st_size > 1000
    bad = run([os.path.join(BIN, 'lwsr-compare-runs'), 'MySR_x4', 'cmp'], cwd=str(tmp_path), check=False)
    assert bad.returncode == 2 and bad.stdout.strip().splitlines() == [
        'lwsr-compare-runs: cmp: no curve.csv there; give a run folder of lwsr-reproduce (<out>/<name>/), its '
        'curve.csv, or LABEL=either.']


@pytest.mark.parametrize('name', ['reproduce', 'compare_runs'])
def test_help_of_reproduce_and_compare_runs_imports_nothing_heavy(name):
    """``--help`` of lwsr-reproduce and lwsr-compare-runs answers without torch, BasicSR, OpenCV or NumPy."""
    import subprocess

    from conftest import REPO
    from test_report import HELP_CHECK
    proc = subprocess.run([PY, '-c', HELP_CHECK.format(name=name)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"lwsr-{name.replace('_', '-')}" in proc.stdout and 'HEAVY []' in proc.stdout, proc.stdout[-2000:]
