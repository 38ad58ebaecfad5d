"""The published tables of IDN and IMDN measured through the shipped test option files (``lwsr-test
--paper-tables``): IDN's and IMDN's option files (and MATLAB bicubic through the IDN ones) run on every present set
and scale, and docs/paper_tables.md gets each cell of IDN's Tables 2-3 and IMDN's Table 5 as paper / measured /
delta, with absent and partial sets marked.

:func:`load_test_options` and :func:`evaluate_options` run a test option file in-process, as ``lwsr-test`` computes
it; :func:`psnr_test_options` and :func:`psnr_on_present_sets` measure the PSNR of given weights on named sets with
an option file's sets and PSNR settings (``lwsr-report``).
The command line of ``--paper-tables`` is parsed by :mod:`lwsr_plugin.entry` (so that ``lwsr-test --help`` lists it
without importing torch) and handed to :func:`measure`.
"""
import os
import sys

import yaml

from lwsr_plugin.options import drop_absent_datasets


# The published numbers that `--paper-tables` compares against, as printed (PSNR 2, SSIM 4, IFC 3 decimals).
# IDN: Hui, Wang, Gao, CVPR 2018, Table 2 (PSNR/SSIM) and Table 3 (IFC), columns Bicubic and IDN (Ours).
# IMDN: Hui, Gao, Yang, Wang, ACM MM 2019, Table 5, row IMDN (Ours).
STANDARD_SIZES = {'Set5': 5, 'Set14': 14, 'BSD100': 100, 'Urban100': 100, 'Manga109': 109}
IDN_TABLE2 = {  # (set, scale): ((bicubic PSNR, SSIM), (IDN PSNR, SSIM))
    ('Set5', 2): ((33.66, 0.9299), (37.83, 0.9600)), ('Set5', 3): ((30.39, 0.8682), (34.11, 0.9253)),
    ('Set5', 4): ((28.42, 0.8104), (31.82, 0.8903)), ('Set14', 2): ((30.24, 0.8688), (33.30, 0.9148)),
    ('Set14', 3): ((27.55, 0.7742), (29.99, 0.8354)), ('Set14', 4): ((26.00, 0.7027), (28.25, 0.7730)),
    ('BSD100', 2): ((29.56, 0.8431), (32.08, 0.8985)), ('BSD100', 3): ((27.21, 0.7385), (28.95, 0.8013)),
    ('BSD100', 4): ((25.96, 0.6675), (27.41, 0.7297)), ('Urban100', 2): ((26.88, 0.8403), (31.27, 0.9196)),
    ('Urban100', 3): ((24.46, 0.7349), (27.42, 0.8359)), ('Urban100', 4): ((23.14, 0.6577), (25.41, 0.7632)),
}
IDN_TABLE3 = {  # (set, scale): (bicubic IFC, IDN IFC)
    ('Set5', 2): (6.083, 9.252), ('Set5', 3): (3.580, 5.620), ('Set5', 4): (2.329, 3.826),
    ('Set14', 2): (6.105, 8.839), ('Set14', 3): (3.473, 5.062), ('Set14', 4): (2.237, 3.354),
    ('BSD100', 2): (5.619, 7.931), ('BSD100', 3): (3.138, 4.398), ('BSD100', 4): (1.978, 2.837),
    ('Urban100', 2): (6.245, 9.594), ('Urban100', 3): (3.620, 5.676), ('Urban100', 4): (2.361, 3.789),
}
IMDN_TABLE5 = {  # (set, scale): (PSNR, SSIM)
    ('Set5', 2): (38.00, 0.9605), ('Set14', 2): (33.63, 0.9177), ('BSD100', 2): (32.19, 0.8996),
    ('Urban100', 2): (32.17, 0.9283), ('Manga109', 2): (38.88, 0.9774),
    ('Set5', 3): (34.36, 0.9270), ('Set14', 3): (30.32, 0.8417), ('BSD100', 3): (29.09, 0.8046),
    ('Urban100', 3): (28.17, 0.8519), ('Manga109', 3): (33.61, 0.9445),
    ('Set5', 4): (32.21, 0.8948), ('Set14', 4): (28.58, 0.7811), ('BSD100', 4): (27.56, 0.7353),
    ('Urban100', 4): (26.04, 0.7838), ('Manga109', 4): (30.45, 0.9075),
}
TOLERANCE = {'psnr': 0.01, 'ssim': 0.001, 'ifc': 0.01}  # dB, absolute, relative: a cell within it is "ok"
# Known reasons for cells outside the tolerance, printed under the tables when the cell was measured.
NOTES = {
    ('IDN', 'Set5', 4): 'IDN Set5 x4: the official x4 weights give 31.809 dB with the official `test_IDN.m` protocol '
                        'as well (per image 33.68 / 34.10 / 27.67 / 32.90 / 30.70; the same with the LR in single '
                        'precision as MATLAB computes it), i.e. 31.81 to the paper\'s two decimals; the printed 31.82 '
                        'is one hundredth above what the released model gives. Not a protocol difference: every '
                        'other cell of Tables 2-3 on the complete sets is within the tolerance.',
}


def load_test_options(source, root):
    """The test option file ``source`` (its path, or the option dict already read, which is copied, not changed) as
    BasicSR's ``parse_options`` would hand it to ``build_model`` (is_train off, no distribution, dataset phase/scale
    set, relative data and weight paths read from ``root``)."""
    import copy

    import torch
    if isinstance(source, dict):
        opt = copy.deepcopy(source)
    else:
        with open(source, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    opt.update(is_train=False, dist=False, rank=0, world_size=1, auto_resume=False)
    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    for phase, ds in (opt.get('datasets') or {}).items():
        ds['phase'] = phase.split('_')[0]
        ds['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if ds.get(key):
                ds[key] = os.path.join(root, os.path.expanduser(ds[key]))
    opt['path'] = dict(opt.get('path') or {})
    pretrain = opt['path'].get('pretrain_network_g')
    if pretrain:
        opt['path']['pretrain_network_g'] = os.path.join(root, os.path.expanduser(pretrain))
    results = os.path.join(root, 'results', opt['name'])
    opt['path'].update(results_root=results, log=results, visualization=os.path.join(results, 'visualization'))
    opt['val'] = dict(opt.get('val') or {}, save_img=False, pbar=True)
    return opt


def psnr_test_options(opt, sets, weights, root, source):
    """``opt`` (a test or train option dict, read from ``source``) as :func:`load_test_options` gives it, cut down to
    the PSNR of the checkpoint ``weights`` on ``sets``: its test and validation sets (``test*``/``val*`` phases; the
    train phase dropped) whose name is in ``sets``, in that order, its ``calculate_psnr`` metric alone (its
    ``crop_border`` and ``test_y_channel`` as written), ``model_type`` SRModel where it names none (a file written
    for ``lwsr-report`` alone), no progress bar. Returns ``(options, names of ``sets`` that ``opt`` does not
    list)``; ValueError (one line) for an option file without a PSNR metric."""
    metrics = (opt.get('val') or {}).get('metrics') or {}
    psnr = next((m for m in metrics.values() if isinstance(m, dict) and m.get('type') == 'calculate_psnr'), None)
    if psnr is None:
        raise ValueError(f'{source}: no val.metrics entry of type calculate_psnr; add one, e.g. psnr: {{type: '
                         f'calculate_psnr, crop_border: {opt.get("scale", 4)}, test_y_channel: true}}.')
    phases = {ds.get('name'): phase for phase, ds in (opt.get('datasets') or {}).items()
              if phase.startswith(('test', 'val')) and isinstance(ds, dict)}
    opt = dict(opt, model_type=opt.get('model_type') or 'SRModel',
               datasets={phases[name]: opt['datasets'][phases[name]] for name in sets if name in phases},
               val=dict(opt['val'], metrics={'psnr': psnr}),
               path=dict(opt.get('path') or {}, pretrain_network_g=weights))
    opt = load_test_options(opt, root)
    opt['val']['pbar'] = False
    return opt, [name for name in sets if name not in phases]


def evaluate_options(opt, bicubic=False, log=print):
    """Run ``opt`` (from :func:`load_test_options`) through BasicSR's ``build_model`` and ``validation``, i.e. what
    ``lwsr-test`` computes, on every test set whose folders exist. ``bicubic`` swaps the network for MATLAB's bicubic
    upscaling (the papers' Bicubic column; no weights needed). Returns ``{set: {'images': n, metric: mean}}``."""
    import torch

    from basicsr.data import build_dataloader, build_dataset
    from basicsr.models import build_model

    from lwsr_plugin.ops.matlab_bicubic import MatlabBicubic
    opt = dict(opt, path=dict(opt['path']), datasets=dict(opt['datasets']))
    drop_absent_datasets(opt, root='/', log=log)  # paths are absolute already
    if bicubic:
        opt['path']['pretrain_network_g'] = None
    model = build_model(opt)
    if bicubic:
        model.net_g = MatlabBicubic(opt['scale']).to(model.device)
    found = {}
    for ds_opt in opt['datasets'].values():
        loader = build_dataloader(build_dataset(ds_opt), ds_opt, num_gpu=opt['num_gpu'], dist=False, sampler=None,
                                  seed=opt.get('manual_seed'))
        with torch.inference_mode():
            model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=False)
        found[ds_opt['name']] = dict(model.metric_results, images=len(loader.dataset))
    return found


def psnr_protocol(opt, source):
    """How the options ``opt`` (from :func:`psnr_test_options`, read from ``source``) compute PSNR, in a few words."""
    metric = opt['val']['metrics']['psnr']
    lr = 'LR files' if all(ds.get('dataroot_lq') for ds in opt['datasets'].values()) else 'LR made from the HR'
    return (f"{os.path.basename(source)}, {'Y' if metric.get('test_y_channel') else 'RGB'}, crop border "
            f"{metric.get('crop_border', 0)}, {lr}")


def psnr_on_present_sets(opt, gpu=False):
    """``({set: PSNR}, [why each absent set is absent])`` of the options ``opt`` (from :func:`psnr_test_options`) on
    its sets whose folders exist (on CUDA device 0 with ``gpu``), through :func:`evaluate_options`, with BasicSR's
    log held to warnings; errors of the checkpoint (damaged, not fitting) propagate."""
    import logging

    from basicsr.utils import get_root_logger
    opt = dict(opt, num_gpu=1 if gpu else 0, datasets=dict(opt['datasets']))
    absent = []
    drop_absent_datasets(opt, root='/', log=lambda line: absent.append(line.replace('skipped ', '', 1)))
    if not opt['datasets']:
        return {}, absent
    logger = get_root_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # the network summary and validation lines would bury the caller's progress
    try:
        found = evaluate_options(opt)
    finally:
        logger.setLevel(level)
    return {name: entry['psnr'] for name, entry in found.items()}, absent


def _cell(paper, measured, metric, images, name):
    """(measured text, delta text, within tolerance or None) of one table cell."""
    if measured is None:
        return 'absent', '', None
    digits = {'psnr': 4, 'ssim': 4, 'ifc': 3}[metric]
    value = f'{measured:.{digits}f}'
    if images != STANDARD_SIZES.get(name, images):
        return f'{value} ({images}/{STANDARD_SIZES[name]} images)', 'not comparable', None
    delta = measured - paper
    if metric == 'ifc':
        rel = round(delta / paper * 100, 2) + 0.  # + 0. turns -0.0 into 0.0
        return value, f'{rel:+.2f} %' if rel else '0.00 %', abs(delta / paper) <= TOLERANCE[metric]
    shown = round(delta, 4) + 0.
    return value, f'{shown:+.4f}' if shown else '0.0000', abs(delta) <= TOLERANCE[metric] + 1e-9


def _row(cells):
    return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def _verdict(flags):
    flags = [f for f in flags if f is not None]
    return '' if not flags else 'yes' if all(flags) else '**no**'


def _idn_cells(table, sets, scales, get):
    """(set, scale, method, paper value, measured entry, images) of each row of IDN's ``table`` (Table 2 or 3) among
    ``sets`` x ``scales``: Bicubic, then IDN; ``get(model, scale, set)`` gives the measured entry and image count."""
    for name in sets:
        for scale in scales:
            if (name, scale) in table:
                for i, model in enumerate(('Bicubic', 'IDN')):
                    yield (name, scale, model, table[(name, scale)][i]) + get(model, scale, name)


def paper_tables_markdown(results, sets, scales, command, seconds):
    """The markdown of docs/paper_tables.md from ``results[(model, scale)] = {set: {...}}`` (model: 'IDN',
    'Bicubic', 'IMDN'); a missing entry prints as absent."""
    import torch

    from lwsr_plugin.ops.device import machine_line

    def get(model, scale, name):
        entry = (results.get((model, scale)) or {}).get(name)
        return (entry or {}), (entry or {}).get('images')

    lines = [
        '# Published tables, measured', '', '<!-- BEGIN GENERATED: paper_tables -->', '',
        f'Generated by `{command}` in {seconds / 60:.1f} min. '
        f'{machine_line(gpu=0 if torch.cuda.is_available() else None)} Do not edit by hand: rerun the command.', '',
        'Each measured value is what `lwsr-test -opt <option file>` prints with the official weights '
        '(IDN: the Caffe models converted by `scripts/convert_idn_caffemodel.py`; IMDN: the released checkpoints) '
        'in `experiments/pretrained_models/`, on the sets under `datasets/`. Delta = measured - paper; the paper '
        'prints PSNR to 0.01 dB, SSIM to 1e-4, IFC to 1e-3. "ok" = within 0.01 dB PSNR, 0.001 SSIM, 1 % IFC. '
        'A set that is missing is marked absent; one with fewer images than the standard set is measured on what '
        'is there and marked not comparable. Columns of other methods (VDSR, MemNet, CARN, ...) are not measured: '
        'their weights are not part of this project.', '',
        '## IDN (CVPR 2018), Table 2: PSNR / SSIM on Y', '',
        'Option files `options/test_IDN_x{2,3,4}.yml` (IDN\'s protocol, `YProtocolDataset` with `lq_from: hr`: LR = '
        'MATLAB bicubic of the HR\'s Y in floating point, grey images are their own Y, output rounded, '
        '`scale` pixels shaved). Bicubic: the same LR upscaled by MATLAB bicubic, rounded.', '',
        _row(['set', 'scale', 'method', 'paper PSNR', 'measured', 'delta', 'paper SSIM', 'measured', 'delta',
              'ok']),
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for name, scale, model, paper, entry, images in _idn_cells(IDN_TABLE2, sets, scales, get):
        p = _cell(paper[0], entry.get('psnr'), 'psnr', images, name)
        s = _cell(paper[1], entry.get('ssim'), 'ssim', images, name)
        lines.append(_row([name, f'x{scale}', model, f'{paper[0]:.2f}', p[0], p[1], f'{paper[1]:.4f}', s[0], s[1],
                           _verdict([p[2], s[2]])]))
    lines += [
        '', '## IDN (CVPR 2018), Table 3: IFC on Y', '',
        'Same runs (the option files list `calculate_ifc`, `lwsr_plugin/metrics/ifc_metric.py`). Delta in percent.',
        '', _row(['set', 'scale', 'method', 'paper IFC', 'measured', 'delta', 'ok']), '|---|---|---|---|---|---|---|']
    for name, scale, model, paper, entry, images in _idn_cells(IDN_TABLE3, sets, scales, get):
        c = _cell(paper, entry.get('ifc'), 'ifc', images, name)
        lines.append(_row([name, f'x{scale}', model, f'{paper:.3f}', c[0], c[1], _verdict([c[2]])]))
    lines += [
        '', '## IMDN (ACM MM 2019), Table 5: PSNR / SSIM on Y, row IMDN', '',
        'Option files `options/test_IMDN_x{2,3,4}.yml` (BasicSR\'s `PairedImageDataset`: the 8-bit RGB LR files of '
        '`LR_bicubic/X<s>`, RGB network, Y of output and HR, `scale` pixels shaved; IMDN\'s own protocol). The '
        'Bicubic row of Table 5 repeats IDN Table 2\'s values (above).', '',
        _row(['set', 'scale', 'paper PSNR', 'measured', 'delta', 'paper SSIM', 'measured', 'delta', 'ok']),
        '|---|---|---|---|---|---|---|---|---|']
    for scale in scales:
        for name in sets:
            if (name, scale) not in IMDN_TABLE5:
                continue
            paper = IMDN_TABLE5[(name, scale)]
            entry, images = get('IMDN', scale, name)
            p = _cell(paper[0], entry.get('psnr'), 'psnr', images, name)
            s = _cell(paper[1], entry.get('ssim'), 'ssim', images, name)
            lines.append(_row([name, f'x{scale}', f'{paper[0]:.2f}', p[0], p[1], f'{paper[1]:.4f}', s[0], s[1],
                               _verdict([p[2], s[2]])]))
    notes = [text for (model, name, scale), text in NOTES.items()
             if (get(model, scale, name)[0].get('psnr') is not None)]
    partial = sorted({name for entries in results.values() for name, e in entries.items()
                      if e.get('images') != STANDARD_SIZES.get(name, e.get('images'))})
    if partial:
        notes.append(f'{", ".join(partial)}: fewer images than the standard set here (../shared holds Urban100 '
                     'img_001-img_005 only); `lwsr-prepare-benchmark` builds the full sets from the official test '
                     'images, after which this command compares them too.')
    if notes:
        lines += ['', '## Notes', ''] + [f'- {n}' for n in notes]
    lines += ['', '<!-- END GENERATED: paper_tables -->']  # scripts/update_docs.py finds the table by these
    return '\n'.join(lines) + '\n'


def _usage_error(message):
    """A usage error: one line on stderr, exit status 2 (as argparse gives)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def measure(args, command, prog='lwsr-test'):
    """``lwsr-test --paper-tables``: ``args`` from :func:`lwsr_plugin.entry.paper_tables_parser`, ``command`` the
    command line the file names, ``prog`` the command in messages. Returns the exit status."""
    import time
    sets = [s for s in args.sets.split(',') if s]
    unknown = [s for s in sets if s not in STANDARD_SIZES]
    if unknown:
        _usage_error(f'{prog}: --sets {args.sets}: unknown {unknown}; choose from {", ".join(STANDARD_SIZES)}.')
    try:
        scales = [int(s) for s in args.scales.split(',') if s]
    except ValueError:
        _usage_error(f'{prog}: --scales {args.scales}: give integers from 2, 3, 4, e.g. --scales 2,4.')
    if not scales or any(s not in (2, 3, 4) for s in scales):
        _usage_error(f'{prog}: --scales {args.scales}: the tables have x2, x3 and x4 only.')
    models = [m for m in args.models.split(',') if m]
    if any(m not in ('IDN', 'Bicubic', 'IMDN') for m in models):
        _usage_error(f'{prog}: --models {args.models}: choose from IDN, Bicubic, IMDN.')
    root = os.path.abspath(args.root)
    from lwsr_plugin.registration import register
    register()
    results, start = {}, time.time()
    for model in models:
        for scale in scales:
            arch = 'IMDN' if model == 'IMDN' else 'IDN'
            path = os.path.join(args.options, f'test_{arch}_x{scale}.yml')
            if not os.path.isfile(path):
                _usage_error(f'{prog}: {path} does not exist; give the folder of the shipped option files with '
                             '--options.')
            opt = load_test_options(path, root)
            opt['datasets'] = {k: v for k, v in opt['datasets'].items() if v['name'] in sets}
            weights = opt['path'].get('pretrain_network_g')
            if model != 'Bicubic' and weights and not os.path.isfile(weights):
                print(f'{prog}: {weights} does not exist; {model} x{scale} is marked absent (IDN: convert the '
                      'official caffemodel with scripts/convert_idn_caffemodel.py).', file=sys.stderr)
                continue
            print(f'{prog}: {model} x{scale} ({os.path.basename(path)})', flush=True)
            results[(model, scale)] = evaluate_options(opt, bicubic=model == 'Bicubic')
    text = paper_tables_markdown(results, sets, scales, command, time.time() - start)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    from lwsr_plugin.fileio import write_text_atomic
    write_text_atomic(out, text)
    print(f'{prog}: wrote {args.out}')
    return 0
