"""``lwsr-report``: parameters, MACs, latency and memory of every plugin arch/variant/scale, beside the papers' numbers;
with weights (``--ckpt``), their PSNR on the benchmark sets;
``lwsr-report --plot results.csv``: a PSNR-vs-parameters figure (IMDN Fig. 6 style) from a results file.

- **Parameters**: trainable and non-trainable parameters of the network (buffers excluded).
- **MACs**: multiply-accumulates of every ``Conv2d`` (output pixels x k_h x k_w x C_in/groups per output channel) and
  ``ConvTranspose2d`` (input pixels x k_h x k_w x C_out/groups per input channel), counted with forward hooks on a
  24x24 LR input and scaled to a 1280x720 output (the convention of IMDN Table 7 and s-LWSR's Multi-Adds; conv MACs
  are linear in the output pixel count). Not counted: bias adds, activations, element-wise additions and
  multiplications (residuals, CCA scaling), pooling/statistics (CCA's mean and std), pixel shuffle, mean shift and
  IDN's bicubic skip.
- **CPU latency**: every model gets the LR input of a ``--output-size`` output (default 1280x720; LR sides
  rounded up; IMDN_AS takes the image already resized to the output size), batch 1, fp32, channels_last, random
  values, and runs as ``lwsr-upscale`` runs it: through its fast inference form (:mod:`lwsr_plugin.fast`; ``--plain``:
  the plain module, NCHW), with ``--threads`` torch threads. The first forward is the memory measurement below (and
  the warm-up, and for a forward of 10 s or more also the first timed one); then ``--warmup`` more untimed forwards,
  then the median, minimum and interquartile range of the wall-clock time of the timed forwards, and the median
  processor time the process used per forward (all threads; robust to other processes' load, which stretches
  wall-clock times on a shared machine). The timed forwards
  (:func:`~lwsr_plugin.metrics.model_cost.planned_repeats`): as many of ``--repeats``
  (default 3) as fit in ``--time-cap`` seconds per model (default 10; each estimated at the first forward's time),
  but one where fewer than 3 fit: at 720p one forward of DRN+ x2 is 4 TMACs, and the 24 rows are ~9.4 TMACs per
  pass, so the slow rows get one and the whole report stays within minutes on 2 cores. The IQR needs 3 or more
  forwards: a row with fewer shows ``-`` (and empty ``*_p25``/``*_p75`` cells in the CSV, whose
  ``cpu_runs``/``gpu_runs_720p`` say how many were timed).
- **CPU peak memory**: the most bytes held at once by tensors allocated during that first forward through torch's
  CPU allocator (activations, temporaries, reused buffers, the output), above what was held before it (weights and
  input excluded), from the allocation events of ``torch.profiler`` (``profile_memory=True``). Deterministic for a
  given input size; not included: buffers that oneDNN/MKL allocate themselves, and the interpreter and libraries.
- **GPU** (when CUDA is present): the same path, timing (synchronised) and peak definition
  (``torch.cuda.max_memory_allocated`` minus what was allocated before the forward) for the same output size.
- **PSNR** (rows given weights; ``-`` elsewhere): one column per set of ``--psnr-sets`` (default Set5), computed as
  ``lwsr-test`` computes it (BasicSR's validation, in-process, the PSNR metric alone) with the row's test option
  file: a shipped model's ``options/test_<model>_x<scale>.yml``, the ``--opt`` file's own test/validation sets, and
  for ``--arch`` the RGB sets of ``test_IMDN_x<scale>``. That file says whether PSNR is taken on Y or RGB and the
  border cropped (the shipped ones: Y, ``scale`` pixels, the MATLAB-bicubic LR files of the set's LR folder; IDN:
  the MATLAB-bicubic LR of the HR's Y, its paper's protocol). Relative dataset paths are read from the current
  folder, as ``lwsr-test`` reads them; an absent set shows ``-`` and the footer says how to make it. Weights load
  through the plugin's checked loader (official state dicts, integrity seals): a checkpoint that does not load, or
  does not fit, fails that row's PSNR in one line of the footer's Failed list, not the report. ``--ckpt
  MODEL=PATH`` gives weights to a shipped model (``--scales`` must leave it one scale), ``--ckpt PATH`` to the
  ``--opt``/``--arch`` row; an ``--opt`` file's ``path.pretrain_network_g`` counts as given.

Your own network (``--opt my_test.yml``: its ``network_g`` at its ``scale``, its ``user_modules`` imported; or
``--arch NAME --user-modules ./myarchs``: built with ``upscale`` at each of ``--scales``) gets a row measured the same
way, labelled by the option file's ``name`` or the arch; beside it only the shipped models ``--models`` names.

Rows are written as they are measured: ``report.csv`` and ``report.md`` are rewritten (temporary file, then rename)
after each model, so an interrupted run leaves valid files holding the rows measured so far.
"""
import argparse
import csv
import os
import sys
import time

from lwsr_plugin.metrics.model_cost import HR_PIXELS_720P, MAC_PROBE, MIN_SPREAD, TIME_CAP_S

PSNR_SETS = 'Set5'  # default --psnr-sets

AS_SCALE = 4  # IMDN_AS is timed on the LR resized x4 (its "scale" is whatever its input was resized to)

# key: (label, network_g options without upscale, scales, paper params per scale, paper MACs (G) at 720p per scale)
# Paper params: IMDN §4 / Table 3, IDN (IMDN Table 7 compares 553K), s-LWSR Table II. Paper MACs: IMDN Table 7
# (per-HR-pixel K x 1280 x 720), s-LWSR Table II Multi-Adds (x4 only). DRN gives neither.
MODELS = {
    'IMDN': ('IMDN', {'type': 'IMDN'}, (2, 3, 4), {2: 694e3, 3: 703e3, 4: 715e3},
             {s: k * 1e3 * HR_PIXELS_720P / 1e9 for s, k in ((2, 173), (3, 78), (4, 45))}),
    'IMDN_AS': ('IMDN_AS (any scale, x4 input size)', {'type': 'IMDN_AS'}, (AS_SCALE, ), {}, {}),
    'IMDN_RTC': ('IMDN_RTC', {'type': 'IMDN_RTC'}, (2, ), {}, {}),
    'IDN': ('IDN (Y)', {'type': 'IDN'}, (2, 3, 4), {2: 553e3, 3: 553e3, 4: 553e3},
            {s: k * 1e3 * HR_PIXELS_720P / 1e9 for s, k in ((2, 175), (3, 75), (4, 51))}),
    'DRN': ('DRN', {'type': 'DRN', 'variant': 'DRN'}, (2, 3, 4), {}, {}),
    'DRN+': ('DRN+', {'type': 'DRN', 'variant': 'DRN+'}, (2, 3, 4), {}, {}),
    'sLWSR16': ('s-LWSR16', {'type': 'SLWSR', 'variant': 'slwsr16'}, (2, 3, 4), {4: 144e3}, {4: 8.3}),
    'sLWSR32': ('s-LWSR32', {'type': 'SLWSR', 'variant': 'slwsr32'}, (2, 3, 4), {4: 571e3}, {4: 32.9}),
    'sLWSR64': ('s-LWSR64', {'type': 'SLWSR', 'variant': 'slwsr64'}, (2, 3, 4), {4: 2277e3}, {4: 131.1}),
    'sLWSR32C': ('s-LWSR32C', {'type': 'SLWSR', 'variant': 'slwsr32c'}, (4, ), {4: 124e3}, {}),
}
SHIPPED = tuple(MODELS)  # the --opt/--arch row joins MODELS for one call

FIELDS = ['model', 'key', 'scale', 'params', 'paper_params', 'macs_720p_G', 'paper_macs_720p_G', 'cpu_ms',
          'cpu_ms_min', 'cpu_ms_p25', 'cpu_ms_p75', 'cpu_runs', 'cpu_time_ms', 'cpu_peak_MB', 'gpu_ms_720p',
          'gpu_ms_720p_min', 'gpu_ms_720p_p25', 'gpu_ms_720p_p75', 'gpu_runs_720p', 'gpu_peak_MB_720p']
# then one psnr_<set> column per set of --psnr-sets (after the others: tools that read the CSV find them unmoved)


# keys of MODELS whose network options are used as written (no ``upscale`` added): IMDN_AS and the --opt rows
AS_WRITTEN = {'IMDN_AS'}


def build(key, scale):
    """The network of ``MODELS[key]`` at ``scale`` through BasicSR's ARCH_REGISTRY (as a YAML would build it)."""
    import lwsr_plugin  # noqa: F401  (registration)
    from basicsr.archs import build_network
    opt = dict(MODELS[key][1])
    if key not in AS_WRITTEN:
        opt['upscale'] = scale
    return build_network(opt).eval()


def add_user_model(parser, args):
    """Add the ``--opt`` or ``--arch`` network to ``MODELS`` (no paper numbers); returns ``(key, user_modules)``, or
    ``(None, [])`` without either. A bad option file ends with one line naming the option."""
    if args.opt and args.arch:
        parser.error(f'--opt {args.opt} and --arch {args.arch}: give one of them (the option file names its arch).')
    if args.arch:
        MODELS[args.arch] = (args.arch, {'type': args.arch}, (2, 3, 4), {}, {})
        return args.arch, args.user_modules
    if not args.opt:
        return None, []
    from lwsr_plugin.options import OptionError, load_yaml
    try:
        opt = load_yaml(args.opt)
    except OptionError as err:
        parser.error(f'--opt {err}')
    net = opt.get('network_g')
    if not isinstance(net, dict) or not net.get('type') or not opt.get('scale'):
        parser.error(f'--opt {args.opt}: no network_g.type or scale; give a test or train option file (e.g. from '
                     '`lwsr-options copy test_IMDN_x4`).')
    key = str(opt.get('name') or net['type'])
    MODELS[key] = (key, dict(net), (int(opt['scale']), ), {}, {})
    AS_WRITTEN.add(key)
    args.user_opt = opt
    return key, list(opt.get('user_modules') or []) + args.user_modules


def import_network(key, user_modules, source):
    """Import ``user_modules`` and check that ``MODELS[key]``'s network is registered and takes its options; an
    error is returned as one line (None when it builds)."""
    from lwsr_plugin.registration import UserModuleError, import_user_modules, register, resolve_network
    register()
    try:
        import_user_modules(user_modules, source=source)
        resolve_network(MODELS[key][1])
    except (UserModuleError, KeyError, TypeError) as err:
        return str(err.args[0] if err.args else err)
    return None


def lr_shape(key, scale, output_size):
    """(H, W) of the input that gives an output of ``output_size`` (W, H) (sides rounded up; IMDN_AS: the output
    size itself, its input is already resized)."""
    w, h = output_size
    return (h, w) if key == 'IMDN_AS' else (-(-h // scale), -(-w // scale))


def measure(key, scale, output_size, warmup, repeats, gpu=False, plain=False, time_cap=TIME_CAP_S):
    """One row of the report for ``MODELS[key]`` at ``scale`` (see the module docstring for the definitions): its
    labels and paper numbers, and :func:`~lwsr_plugin.metrics.model_cost.measure_network` on the LR input of an
    ``output_size`` output."""
    from lwsr_plugin.metrics.model_cost import measure_network
    in_ch = MODELS[key][1].get('num_in_ch', 1 if MODELS[key][1]['type'] == 'IDN' else 3)
    probe = MAC_PROBE * scale if key == 'IMDN_AS' else MAC_PROBE  # IMDN_AS takes the image at its output size
    row = {'model': MODELS[key][0], 'key': key, 'scale': scale, 'paper_params': MODELS[key][3].get(scale),
           'paper_macs_720p_G': MODELS[key][4].get(scale)}
    row.update(measure_network(build(key, scale), in_ch, probe, lr_shape(key, scale, output_size), warmup, repeats,
                               gpu, plain, time_cap))
    return row


def given_weights(parser, args, jobs):
    """``{(key, scale): checkpoint path}`` of the rows given weights: each ``--ckpt`` (``MODEL=PATH``: the shipped
    model MODEL, at the one scale ``--scales`` leaves it; a bare ``PATH``: the ``--opt``/``--arch`` row), then the
    ``--opt`` file's ``path.pretrain_network_g`` (read from the current folder) where no ``--ckpt`` gave that row
    weights. A bad ``--ckpt`` ends with one line naming it."""
    user, given = args.user[0], {}
    for value in args.ckpt:
        model, sep, path = value.partition('=')
        if sep and model in SHIPPED and not os.path.isfile(value):
            key = model
        elif sep and os.sep not in model and not os.path.exists(value):
            parser.error(f'--ckpt {value}: no such file, and {model} is not a shipped model; give MODEL=PATH with '
                         f'MODEL one of {",".join(SHIPPED)}, or the path of a checkpoint.')
        else:
            key, path = user, value
            if user is None:
                parser.error(f'--ckpt {value}: a bare path gives weights to the --opt/--arch row, and neither is '
                             f'given; add --opt/--arch, or give a shipped model its weights with --ckpt MODEL=PATH '
                             f'(e.g. --ckpt IMDN={value}).')
        if not os.path.isfile(path):
            parser.error(f'--ckpt {value}: no such file {path}; give the path of a network checkpoint (.pth or '
                         '.safetensors), e.g. results/reproduce/IMDN_x4/net_g.pth.')
        scales = [s for k, s in jobs if k == key]
        if not scales:
            parser.error(f'--ckpt {value}: {key} is not measured; add it to --models (now {args.models!r}).')
        if len(scales) > 1:
            parser.error(f'--ckpt {value}: a checkpoint holds one scale, but --scales {args.scales} measures {key} at '
                         f'{", ".join(f"x{s}" for s in scales)}; give --scales N (e.g. --scales {scales[-1]}).')
        if (key, scales[0]) in given:
            parser.error(f'--ckpt {value}: {key} x{scales[0]} has weights already ({given[(key, scales[0])]}); give '
                         'one --ckpt per model.')
        given[(key, scales[0])] = os.path.abspath(path)
    pretrain = ((args.user_opt or {}).get('path') or {}).get('pretrain_network_g')
    for key, scale in jobs:
        if pretrain and key == user:
            given.setdefault((key, scale), os.path.abspath(os.path.expanduser(str(pretrain))))
    return given


def psnr_plan(key, scale, weights, args):
    """``(test options, sets they do not list, option file)`` for the PSNR of ``weights`` in the row ``key`` at
    ``scale`` (see the module docstring): the ``--opt`` file, ``test_<key>_x<scale>`` of a shipped model, or
    ``test_IMDN_x<scale>`` around the ``--arch`` network."""
    from lwsr_plugin.metrics.paper_tables import psnr_test_options
    from lwsr_plugin.options import load_yaml
    from lwsr_plugin.options.shipped import not_shipped, shipped_path
    if key not in SHIPPED and args.opt:
        source, opt = args.opt, dict(args.user_opt, name=key)
    else:
        source = f"test_{key.replace('+', 'plus') if key in SHIPPED else 'IMDN'}_x{scale}"
        path = shipped_path(source)
        if path is None:
            raise ValueError(not_shipped(source))
        opt = load_yaml(path)
        if key not in SHIPPED:  # --arch: IMDN's RGB sets and metric around the user's network
            opt.update(name=key, network_g={'type': key, 'upscale': scale})
    return psnr_test_options(opt, args.psnr_sets, weights, os.getcwd(), source) + (source, )


def add_psnr(row, plan, gpu, notes):
    """Put the PSNR cells of ``plan`` (a :func:`psnr_plan`, or the one line of why there is none) into ``row``;
    ``notes`` collects the footer's ``failed``, ``absent`` and ``unlisted`` entries. Returns the progress text."""
    from lwsr_plugin.metrics.paper_tables import psnr_on_present_sets
    label = f"{row['model']} x{row['scale']} PSNR"
    if isinstance(plan, str):
        notes['failed'].append(f'{label}: {plan}')
        return 'PSNR failed'
    opt, unlisted, source = plan
    for name in unlisted:
        notes['unlisted'].append(f"{name} for {row['model']} ({source} lists no test/validation set of that name)")
    try:
        found, absent = psnr_on_present_sets(opt, gpu)
    except Exception as err:  # a damaged or unfitting checkpoint costs this row's PSNR, not the report
        notes['failed'].append(f"{label} of {opt['path']['pretrain_network_g']}: {_one_line(err)}")
        return 'PSNR failed'
    for line in absent:
        if line not in notes['absent']:
            notes['absent'].append(line)
    row.update({f'psnr_{name}': value for name, value in found.items()})
    return 'PSNR ' + (', '.join(f'{name} {value:.2f} dB' for name, value in found.items()) or 'no set present')


def _one_line(err):
    """``Type: first line of the message`` of ``err``: the footer gives each failure one line."""
    lines = str(err).strip().splitlines()
    return f'{type(err).__name__}: {lines[0] if lines else ""}'


def _fmt(value, kind='g'):
    if value is None or value == '':
        return '-'
    if kind == 'params':
        return f'{value / 1e3:,.1f}K' if value < 1e6 else f'{value / 1e6:.2f}M'
    return f'{value:,.2f}' if kind in ('mb', 'db') else f'{value:,.1f}'


def _iqr(row, prefix):
    """The IQR cell: ``p25-p75``, or ``-`` where fewer than ``MIN_SPREAD`` forwards were timed (no spread)."""
    if row.get(f'{prefix}_p25') in (None, ''):
        return '-'
    return f"{_fmt(row[f'{prefix}_p25'])}-{_fmt(row[f'{prefix}_p75'])}"


def header(settings):
    """The report's heading lines: machine, torch, threads, and what every column measures."""
    s = settings
    out_w, out_h = s['output_size']
    lines = [
        f"Machine: {s['cpu']}, {s['cores']} CPU cores visible, torch "
        f"{s['torch']}; torch CPU threads: {s['threads']} (fixed with torch.set_num_threads); GPU: {s['gpu']}.",
        f"Input: the LR image of a {out_w}x{out_h} output for every model (LR sides rounded up; batch 1, fp32, "
        f"{'NCHW; the plain module' if s['plain'] else 'channels_last; the fast inference form lwsr-upscale runs'}; "
        f"3 channels, IDN 1 (Y); IMDN_AS takes the image resized to the output size, {out_w}x{out_h}); "
        + ('glibc keeps freed memory for reuse, as in lwsr-upscale (LWSR_KEEP_MEMORY=0 turns it off).'
           if s.get('keep_memory') else 'freed memory goes back to the OS (large maps page-fault on each forward; '
           'lwsr-upscale keeps it where glibc allows).'),
        f"CPU ms: median wall-clock time of {s['repeats']} timed forwards after the memory-measuring forward and "
        f"{s['warmup']} more warm-up forwards, or of as many as fit in {s['time_cap']:g} s per model at the "
        f"memory-measuring forward's time, one where fewer than {MIN_SPREAD} fit (torch.inference_mode; a "
        "memory-measuring forward of 10 s or more is the first timed one); IQR: 25th-75th percentile of those "
        f"forwards, '-' for fewer than {MIN_SPREAD}. "
        'CPU time ms: median processor time the process used per forward (all its threads): other processes\' load '
        'barely changes it; at 1 thread on an idle machine it equals CPU ms.',
        'CPU peak MB: the most memory held at once by tensors allocated during the first forward through torch\'s '
        'CPU allocator (activations, temporaries, output), above what was held before it (weights and input '
        'excluded); from torch.profiler allocation events (profile_memory=True); not included: oneDNN/MKL internal '
        'buffers.',
        'MACs: Conv2d + ConvTranspose2d only, for a 1280x720 output.']
    if s['gpu'] != 'none':
        lines.append('GPU: the same timing (synchronised) and peak definition (torch.cuda.max_memory_allocated minus '
                     f'the memory allocated before the forward) for the same {out_w}x{out_h} output.')
    protocols = s.get('psnr_protocols') or {}
    lines.append(
        f"PSNR {', '.join(s.get('psnr_sets') or [PSNR_SETS])} (dB): rows given weights (--ckpt, or the --opt file's "
        "path.pretrain_network_g), '-' elsewhere and for an absent set; computed as lwsr-test computes it (BasicSR's "
        "validation, the PSNR metric alone) with the row's test option file (shipped models: "
        "options/test_<model>_x<scale>.yml, on the MATLAB-bicubic LR files of the set's LR folder, IDN on the "
        "MATLAB-bicubic LR of the HR's Y; --opt: its own test/validation sets; --arch: test_IMDN_x<scale>'s RGB "
        'sets), on the channel (Y or RGB) and with the crop border that file sets'
        + (': ' + '; '.join(f'{label}: {text}' for label, text in protocols.items()) + '.' if protocols else
           '; no row has weights here.'))
    return lines


def markdown(rows, settings, footer=''):
    """The report as Markdown: ``header(settings)``, one table row per measured model (a PSNR column per set of
    ``settings['psnr_sets']``), then ``footer``."""
    sets = settings.get('psnr_sets') or []
    lines = header(settings) + [
        '', '| model | scale | params | paper params | MACs 720p (G) | paper MACs (G) | CPU ms | CPU ms IQR '
        '| CPU time ms | CPU peak MB | GPU ms 720p | GPU ms IQR | GPU peak MB 720p |'
        + ''.join(f' PSNR {name} (dB) |' for name in sets), '|' + '---|' * (13 + len(sets))]
    for r in rows:
        lines.append('| ' + ' | '.join([
            r['model'], f"x{r['scale']}", _fmt(r['params'], 'params'), _fmt(r['paper_params'], 'params'),
            _fmt(r['macs_720p_G']), _fmt(r['paper_macs_720p_G']), _fmt(r['cpu_ms']), _iqr(r, 'cpu_ms'),
            _fmt(r.get('cpu_time_ms')), _fmt(r['cpu_peak_MB'], 'mb'), _fmt(r.get('gpu_ms_720p')),
            _iqr(r, 'gpu_ms_720p'), _fmt(r.get('gpu_peak_MB_720p'), 'mb')]
            + [_fmt(r.get(f'psnr_{name}'), 'db') for name in sets]) + ' |')
    return '\n'.join(lines) + '\n' + (f'\n{footer}\n' if footer else '')


def csv_text(rows, psnr_sets=()):
    """The rows as CSV text with the ``FIELDS`` header and a ``psnr_<set>`` column per set of ``psnr_sets`` (empty
    cells for values that do not apply)."""
    import io
    fields = FIELDS + [f'psnr_{name}' for name in psnr_sets]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator='\n')
    writer.writeheader()
    writer.writerows({k: _csv_value(r.get(k)) for k in fields} for r in rows)
    return buf.getvalue()


def _csv_value(value):
    if isinstance(value, float):  # 4 decimals are below any timing's or memory figure's precision
        value = round(value, 4)
        return int(value) if value.is_integer() else value
    return value


def can_plot():
    """Whether matplotlib, which draws every plot of the plugin's commands, imports here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_results(results_csv, out_png, title='PSNR vs. parameters'):
    """Scatter of PSNR against parameters (log axis), one labelled point per row of ``results_csv``
    (columns ``name, params, psnr``; ``params`` as a count, e.g. 715176)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(results_csv, newline='', encoding='utf-8') as f:
        rows = [r for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f'{results_csv}: no rows (expected columns name, params, psnr).')
    missing = {'name', 'params', 'psnr'} - set(rows[0])
    if missing:
        raise ValueError(f'{results_csv}: no column {", ".join(sorted(missing))}; give a CSV with the header '
                         'name,params,psnr.')
    try:
        points = [(r['name'], float(r['params']) / 1e3, float(r['psnr'])) for r in rows]
    except (TypeError, ValueError):
        raise ValueError(f'{results_csv}: params and psnr must be numbers on every row (e.g. IMDN,715176,32.21).'
                         ) from None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, x, y in points:
        ax.scatter(x, y, s=36)
        ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xscale('log')
    ax.set_xlabel('parameters (K)')
    ax.set_ylabel('PSNR (dB)')
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        from lwsr_plugin.fileio import atomic_target
        with atomic_target(out_png, suffix='.png') as tmp:
            fig.savefig(tmp, format='png')
    finally:
        plt.close(fig)
    return out_png


def build_parser():
    """The argument parser of ``lwsr-report`` (imports nothing heavy)."""
    p = argparse.ArgumentParser(prog='lwsr-report', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='results/model_report', help='folder for report.md and report.csv')
    p.add_argument('--models', default=None, help=f'comma-separated subset of {",".join(MODELS)} (default: all, or '
                   'none beside --opt/--arch)')
    p.add_argument('--opt', metavar='OPTION_YML', help="also measure this option file's network_g at its scale (its "
                   'user_modules imported), labelled by its name')
    p.add_argument('--arch', help='also measure this registered arch, built with upscale=<each of --scales>')
    p.add_argument('--user-modules', nargs='+', default=[], metavar='ENTRY',
                   help='folders, .py files or modules to import first, as user_modules: of an option file')
    p.add_argument('--scales', default='2,3,4', help='comma-separated subset of 2,3,4 (IMDN_AS is measured at x4)')
    p.add_argument('--output-size', default='1280x720',
                   help='WxH of the output the latency is measured for (default 1280x720; the LR input is its size / '
                        'scale)')
    p.add_argument('--warmup', type=int, default=0,
                   help='untimed forwards after the first, memory-measuring one (default 0)')
    p.add_argument('--repeats', type=int, default=MIN_SPREAD,
                   help=f'timed forwards per model: median, and IQR from {MIN_SPREAD} or more (default '
                        f'{MIN_SPREAD}); a model gets one where they do not fit in --time-cap')
    p.add_argument('--time-cap', type=float, default=TIME_CAP_S,
                   help=f'seconds of timed forwards per model, estimated at its first forward\'s time (default '
                        f'{TIME_CAP_S:g}: at 720p the DRN+ rows alone are ~7 TMACs per pass, and the whole report '
                        'must stay within minutes)')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (default: one per visible core; on a shared machine, timings then swing '
                        'with other processes\' load, which the CPU time column does not)')
    p.add_argument('--plain', action='store_true',
                   help='time the plain module (NCHW) instead of the fast inference form lwsr-upscale runs')
    p.add_argument('--no-gpu', action='store_true', help='skip the GPU columns even when CUDA is available')
    p.add_argument('--ckpt', action='append', default=[], metavar='[MODEL=]PATH',
                   help='weights whose PSNR the report measures (repeatable): MODEL=PATH for a shipped model (e.g. '
                        'IMDN=results/reproduce/IMDN_x4/net_g.pth; --scales must leave it one scale), a bare PATH for '
                        "the --opt/--arch row (default for --opt: its path.pretrain_network_g)")
    p.add_argument('--psnr-sets', default=PSNR_SETS, metavar='SETS',
                   help=f'comma-separated test sets of the PSNR columns (default {PSNR_SETS}), read from datasets/ in '
                        'the current folder as lwsr-test reads them')
    p.add_argument('--plot', metavar='RESULTS_CSV', help='only draw PSNR vs params from a CSV (name,params,psnr)')
    p.add_argument('--plot-out', default=None, help='PNG path for --plot (default: <out>/psnr_vs_params.png)')
    return p


def _jobs(parser, args):
    """[(key, scale)] selected by ``--models`` / ``--scales`` and ``--opt`` / ``--arch`` (the user's key, its
    modules: ``args.user``; the rows' weights: ``args.weights``, see :func:`given_weights`); a bad value ends with one
    line naming the option."""
    shipped = ','.join(MODELS)
    user, args.user, args.user_opt = None, (None, []), None
    if args.opt or args.arch:
        args.user = add_user_model(parser, args)
        user = args.user[0]
    if args.models is None:
        args.models = '' if user else shipped
    keys = [k.strip() for k in args.models.split(',') if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown or not (keys or user):
        parser.error(f'--models {args.models!r}: unknown {", ".join(unknown) or "(empty list)"}; give a '
                     f'comma-separated subset of {shipped}.')
    try:
        scales = {int(s) for s in args.scales.split(',') if s.strip()}
    except ValueError:
        scales = set()
    if not scales or not scales <= {2, 3, 4}:
        parser.error(f'--scales {args.scales!r}: give a comma-separated subset of 2,3,4.')
    try:
        size = tuple(int(v) for v in args.output_size.lower().split('x'))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 4:
        parser.error(f'--output-size {args.output_size!r}: give WxH, both at least 4 (e.g. 1280x720).')
    args.output_size = size
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    for name, least in (('warmup', 0), ('repeats', 1), ('threads', 1)):
        if getattr(args, name) < least:
            parser.error(f'--{name.replace("_", "-")} {getattr(args, name)}: must be at least {least}.')
    if not args.time_cap > 0:
        parser.error(f'--time-cap {args.time_cap:g}: must be more than 0 seconds, e.g. --time-cap {TIME_CAP_S:g}.')
    sets = [name.strip() for name in args.psnr_sets.split(',') if name.strip()]
    if not sets:
        parser.error(f'--psnr-sets {args.psnr_sets!r}: give comma-separated set names, e.g. --psnr-sets Set5,Set14.')
    args.psnr_sets = list(dict.fromkeys(sets))
    jobs = [(k, s) for k in keys for s in MODELS[k][2] if s in scales]
    if user:  # the --opt row has its own scale; --arch's are those of --scales
        jobs += [(user, s) for s in MODELS[user][2] if s in scales or user in AS_WRITTEN]
    if not jobs:
        parser.error(f'--models {args.models} has no variant at --scales {args.scales} (IMDN_AS and sLWSR32C: x4 '
                     'only, IMDN_RTC: x2 only); add a scale or a model.')
    args.weights = given_weights(parser, args, jobs)
    return jobs


def main(argv=None):
    """``lwsr-report``; the ``--opt``/``--arch`` row joins ``MODELS`` for this call only (a caller's next call, or a
    test in the same process, sees the shipped models alone)."""
    shipped, as_written = dict(MODELS), set(AS_WRITTEN)
    try:
        return _report(argv)
    finally:
        MODELS.clear()
        MODELS.update(shipped)
        AS_WRITTEN.intersection_update(as_written)


def _report(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot:
        if not os.path.isfile(args.plot):
            parser.error(f'--plot {args.plot}: no such file; give a CSV with the columns name,params,psnr.')
        if not can_plot():
            print('lwsr-report: --plot needs matplotlib, which is not installed; install it with: '
                  'pip install "lwsr_plugin[report]"', file=sys.stderr)
            return 2
        png = args.plot_out or os.path.join(args.out, 'psnr_vs_params.png')
        os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
        try:
            plot_results(args.plot, png)
        except ValueError as err:
            print(f'lwsr-report: --plot {err}', file=sys.stderr)
            return 2
        print(f'wrote {png}')
        return 0
    jobs = _jobs(parser, args)
    os.makedirs(args.out, exist_ok=True)

    import torch
    from tqdm import tqdm

    from lwsr_plugin.ops.device import cpu_name
    from lwsr_plugin.fast.kernels import keep_freed_memory
    from lwsr_plugin.metrics.paper_tables import psnr_protocol
    torch.set_num_threads(args.threads)
    if args.user[0]:
        error = import_network(args.user[0], args.user[1], f'{args.opt}: user_modules' if args.opt else
                               '--user-modules')
        if error:
            print(f'lwsr-report: {"--opt " + args.opt if args.opt else "--arch " + args.arch}: {error}',
                  file=sys.stderr)
            return 2
    gpu = torch.cuda.is_available() and not args.no_gpu
    # as lwsr-upscale on CPU: large activations reuse the process's memory; without it every map over 32 MB
    # page-faults anew on each forward, which more than doubled DRN+'s 64 -> 288 1x1 convs at 720p
    kept = keep_freed_memory()
    plans = {}
    for (key, scale), weights in args.weights.items():
        try:
            plans[(key, scale)] = psnr_plan(key, scale, weights, args)
        except Exception as err:  # e.g. an option file without a PSNR metric: that row's PSNR fails, not the report
            plans[(key, scale)] = _one_line(err)
    settings = {'output_size': args.output_size, 'plain': args.plain, 'warmup': args.warmup,
                'repeats': args.repeats, 'time_cap': args.time_cap, 'threads': args.threads, 'keep_memory': kept,
                'cpu': cpu_name(), 'cores': os.cpu_count(), 'torch': torch.__version__,
                'gpu': torch.cuda.get_device_name(0) if gpu else 'none', 'psnr_sets': args.psnr_sets,
                'psnr_protocols': {f'{MODELS[key][0]} x{scale}': psnr_protocol(plan[0], plan[2])
                                   for (key, scale), plan in plans.items() if not isinstance(plan, str)}}
    csv_path, md_path = os.path.join(args.out, 'report.csv'), os.path.join(args.out, 'report.md')
    rows, start = [], time.time()
    notes = {'failed': [], 'absent': [], 'unlisted': []}
    failures = notes['failed']

    def save(footer):
        # Markdown first: whoever sees a row in the CSV (a test polling it, a user) finds it in the Markdown too
        from lwsr_plugin.fileio import write_text_atomic
        write_text_atomic(md_path, markdown(rows, settings, footer))
        write_text_atomic(csv_path, csv_text(rows, args.psnr_sets))

    save(f'Partial: 0 of {len(jobs)} models measured so far.')
    bar = tqdm(jobs, desc='lwsr-report', unit='model', file=sys.stderr)
    try:
        for key, scale in bar:
            bar.set_postfix_str(f'{key} x{scale}')
            try:
                row = measure(key, scale, args.output_size, args.warmup, args.repeats, gpu, args.plain, args.time_cap)
            except Exception as err:  # one model failing (e.g. out of memory) must not cost the others' rows
                failures.append(f'{key} x{scale}: {type(err).__name__}: {err}')
                tqdm.write(f'lwsr-report: {failures[-1]}; skipped.', file=sys.stderr)
                continue
            psnr = add_psnr(row, plans[(key, scale)], gpu, notes) if (key, scale) in plans else ''
            rows.append(row)
            tqdm.write(f"{row['model']} x{scale}: {_fmt(row['params'], 'params')} params, CPU {row['cpu_ms']:.1f} ms "
                       f"({row['cpu_runs']} timed, IQR {_iqr(row, 'cpu_ms')}; CPU time {row['cpu_time_ms']:.1f} ms), "
                       f"peak {row['cpu_peak_MB']:.2f} MB" + (f'; {psnr}' if psnr else ''), file=sys.stderr)
            save(f'Partial: {len(rows)} of {len(jobs)} models measured so far.')
    except KeyboardInterrupt:
        bar.close()
        print(f'lwsr-report: interrupted; {md_path} and {csv_path} hold the {len(rows)} rows measured so far.',
              file=sys.stderr)
        return 130
    bar.close()
    footer = f'Generated by `lwsr-report` in {time.time() - start:.0f} s.'
    if notes['absent']:
        footer += (" PSNR sets absent ('-'): " + '; '.join(notes['absent']) + '; make them with '
                   '`lwsr-prepare-benchmark` (docs/data_preparation.md), or run from the folder that holds datasets/.')
    if notes['unlisted']:
        footer += " PSNR not measured ('-'): " + '; '.join(notes['unlisted']) + '.'
    if failures:
        footer += ' Failed: ' + '; '.join(f.rstrip('.') for f in failures) + '.'
    save(footer)
    print(markdown(rows, settings, footer))
    print(f'wrote {md_path} and {csv_path}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
