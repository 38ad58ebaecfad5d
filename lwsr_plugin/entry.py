"""What ``lwsr-train`` / ``lwsr-test`` do around BasicSR's own ``train_pipeline`` / ``test_pipeline``, and what
BasicSR's own ``basicsr/train.py`` / ``basicsr/test.py`` do when run as scripts (:mod:`lwsr_plugin.patches.pipeline`
hands them over here), so
that every entry point behaves the same:

1. ``--help`` answers at once (BasicSR's arguments, plus where outputs go and how to add your own modules);
2. the option file's ``user_modules`` are imported (your archs, models, losses, datasets; see ``registration``);
3. the option file is checked (:mod:`lwsr_plugin.options.checks`): a mistake fails in one line before anything is written;
4. the output root is chosen (``options.output_root``) and stated, on stdout and as the first line of the log file;
5. BasicSR's pipeline runs, with every fix of :mod:`lwsr_plugin.patches` (CPU/gloo torchrun, resume on CPU, atomic checkpoints, ...);
6. whatever still fails is one line on stderr (exit status 2 for a refused option file or command line, 1 for a run
   that stopped), with the traceback only under ``--debug`` (or ``LWSR_DEBUG=1``). An image that cannot be decoded
   mid-run is named, and stops the run or, with ``datasets.<phase>.on_corrupt: skip``, is left out.

Light at module level (no torch): the heavy imports happen after ``--help`` and the option file were read.
"""
import argparse
import contextlib
import os
import sys

from lwsr_plugin.options import OptionError, load_yaml, opt_path, output_root, present_datasets_only, resolve_shipped
from lwsr_plugin.options.shipped import shipped_dir

PIPELINES = {'train': 'basicsr.train:train_pipeline', 'test': 'basicsr.test:test_pipeline'}


def help_parser(kind, prog=None):
    """The arguments BasicSR's ``parse_options`` takes (it builds its parser inside the function, so it cannot be
    asked without importing torch), with the plugin's additions explained; for 'test', also ``--paper-tables``."""
    what = 'Train' if kind == 'train' else 'Test'
    alias = ' lwsr-evaluate is the same command as lwsr-test, under its older name.' if kind == 'test' else ''
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f'{what} a model from a BasicSR option file with BasicSR\'s own {kind}_pipeline and lwsr_plugin\'s '
        f'archs, models, losses, datasets and metrics registered.{alias}',
        epilog=f'''outputs:
  experiments/, tb_logger/ and results/ go under the working directory; set `path.root: DIR` in the option file or
  LWSR_ROOT=DIR to put them elsewhere. The chosen folder is the first line of the log.

your own archs, models, losses, datasets, metrics:
  user_modules: [./myarchs, mypkg.my_arch]   # option file: a folder of *_arch.py/*_model.py/... files, a .py file,
                                             # or a dotted module name (relative to the working directory)
  LWSR_USER_MODULES=./myarchs                # the same for every process, as an environment variable

several processes (GPUs with nccl, CPU cores with gloo):
  torchrun --nproc_per_node=N -m lwsr_plugin.{kind} -opt X.yml --launcher pytorch''')
    parser.add_argument('-opt', required=True, metavar='OPTION_FILE', help='path to the option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher: pytorch under torchrun (default: none, one process)')
    if kind == 'train':
        parser.add_argument('--auto_resume', action='store_true',
                            help='continue from the newest experiments/<name>/training_states/*.state')
    parser.add_argument('--debug', action='store_true',
                        help="prefix the run's name with debug_ (no tb_logger), and show tracebacks of failures")
    parser.add_argument('--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY=VALUE',
                        help='override option-file values, e.g. train:ema_decay=0.999')
    if kind == 'test':
        _paper_table_arguments(parser.add_argument_group('the papers\' tables (instead of -opt)', PAPER_TABLES))
    return parser


PAPER_TABLES = ('Measure every IDN Table 2/3 and IMDN Table 5 cell through the shipped test option files and write '
                'paper / measured / delta as markdown (docs/paper_tables.md).')


def _paper_table_arguments(group):
    """The arguments of ``lwsr-test --paper-tables`` (:mod:`lwsr_plugin.metrics.paper_tables`), on ``group``."""
    group.add_argument('--paper-tables', action='store_true', help='measure the tables (with the arguments below)')
    group.add_argument('--out', default='docs/paper_tables.md', help='markdown file to write (default: %(default)s)')
    group.add_argument('--root', default='.', help='folder holding datasets/ and experiments/pretrained_models/ '
                       '(default: the working directory)')
    group.add_argument('--options', default=shipped_dir() or 'options',
                       help='folder of the test option files (default: the shipped ones, %(default)s)')
    group.add_argument('--sets', default='Set5,Set14,BSD100,Urban100,Manga109',
                       help='comma-separated (default: %(default)s)')
    group.add_argument('--scales', default='2,3,4', help='comma-separated (default: %(default)s)')
    group.add_argument('--models', default='IDN,Bicubic,IMDN', help='comma-separated (default: %(default)s)')
    return group


def paper_tables_parser(prog='lwsr-test'):
    """The parser of ``lwsr-test --paper-tables`` (no ``-opt``)."""
    return _paper_table_arguments(argparse.ArgumentParser(prog=prog, description=PAPER_TABLES))


def _is_rank0():
    return os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) == '0'  # srun tasks get RANK later


def run(kind, argv=None, default_root=None, default_source='the working directory', prog=None):
    """Run BasicSR's ``kind`` pipeline ('train' or 'test') as described in the module docstring.

    ``argv`` replaces ``sys.argv[1:]`` (BasicSR parses ``sys.argv``). ``-opt NAME`` of a file that is not here but
    shipped runs the shipped file (``options.resolve_shipped``). A test run leaves out the test sets whose folders
    are absent (``options.present_datasets_only``); ``--paper-tables`` runs :mod:`lwsr_plugin.metrics.paper_tables`
    instead. Returns the exit status.
    """
    if argv is not None:
        sys.argv[1:] = list(argv)
    args = sys.argv[1:]
    if not args or '-h' in args or '--help' in args:
        help_parser(kind, prog).parse_args(args)  # prints help / a usage error and exits
    if kind == 'test' and '--paper-tables' in args:
        prog = prog or 'lwsr-test'
        tables = paper_tables_parser(prog).parse_args(args)
        from lwsr_plugin.metrics.paper_tables import measure
        return measure(tables, f'{prog} ' + ' '.join(args), prog)
    given = opt_path(args)
    try:
        shipped = resolve_shipped(sys.argv)  # before anything reads the file: BasicSR re-reads -opt from sys.argv
    except OptionError as err:
        _refuse(f'lwsr_plugin: {err}')
    if shipped is not None and _is_rank0():
        print(f'lwsr_plugin: using the shipped option file {shipped} (-opt {given}: no such file in {os.getcwd()}).',
              flush=True)
    if kind == 'test':
        datasets = present_datasets_only(sys.argv)  # points -opt at a copy without the absent sets
    else:
        datasets = contextlib.nullcontext()
    with datasets:
        return _run(kind, sys.argv[1:], default_root, default_source)


def _refuse(message):
    _last_line(message)
    sys.exit(2)


def _last_line(message):
    """Print a refused or stopped run's one line as the last output of this process (see ``_quiet_exit``)."""
    sys.stdout.flush()  # what was written so far goes out before the line, not after it at exit
    print(message, file=sys.stderr, flush=True)
    _quiet_exit()


def _quiet_exit():
    """After a process's one-line failure, what runs at exit writes to /dev/null: the process group's teardown
    (gloo/nccl warnings, ``patches.distributed``'s exit handler), BasicSR's logger, progress bars, warnings and C++
    destructors at interpreter shutdown. The line then ends each rank's output, where ``torchrun ... 2>&1 | grep
    lwsr_plugin`` or the tail of a rank's log finds it, above torchrun's own ``ChildFailedError``."""

    def silence():
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):  # file descriptors, not sys.stdout/stderr: C++ and spawned writers use them too
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
        os.close(devnull)

    import atexit
    # registered now, so it runs before the exit handlers registered earlier (atexit calls the last one first);
    # re-registered (not added twice) when a process runs several pipelines, as tests do
    if _SILENCE:
        atexit.unregister(_SILENCE[0])
    _SILENCE[:] = [silence]
    atexit.register(silence)


_SILENCE = []  # the exit handler of _quiet_exit, once per process


def _run(kind, args, default_root, default_source):
    from lwsr_plugin.options.checks import check_cli_options
    opt_file = opt_path(args)
    if not opt_file:
        help_parser(kind).parse_args(args)  # -opt missing: argparse's usage line, status 2
    try:
        opt = load_yaml(opt_file)
    except OptionError as err:
        _refuse(f'lwsr_plugin: {err}')
    from lwsr_plugin.registration import OPTION_USER_MODULES, UserModuleError, import_user_modules, register
    register()
    try:
        import_user_modules(opt.get(OPTION_USER_MODULES) or [], source=f'{opt_file}: {OPTION_USER_MODULES}')
    except UserModuleError as err:
        _refuse(f'lwsr_plugin: {err}')
    root, source = output_root(opt, default_root or os.getcwd(), default_source)

    from lwsr_plugin.patches.pipeline import atomic_result_images, guard_dataset_reads, run_settings
    sys.stdout.flush()  # a refusal's line (printed by the check) comes after everything written so far
    try:
        check_cli_options(args, opt, kind)
    except SystemExit:
        _quiet_exit()
        raise
    note = f'lwsr_plugin: outputs (experiments/, tb_logger/, results/) under {root} (from {source}).'
    if _is_rank0():
        print(note, flush=True)
    module, func = PIPELINES[kind].split(':')
    import importlib
    pipeline = getattr(importlib.import_module(module), func)
    guard_dataset_reads()
    atomic_result_images()
    try:
        with run_settings(root_note=note, kind=kind):
            pipeline(root)
    except SystemExit as err:  # a rank's own one line (e.g. the process group could not form), printed at exit
        if err.code not in (None, 0):
            sys.stdout.flush()
            _quiet_exit()
        raise
    except Exception as err:  # noqa: BLE001  (every failure becomes one line; --debug shows the stack)
        if '--debug' in args or os.environ.get('LWSR_DEBUG', '') not in ('', '0'):
            raise
        _last_line(f'lwsr_plugin: {"training" if kind == "train" else "testing"} stopped: {one_line(err)} '
                   '(the same command with --debug shows the traceback)')
        return 1
    return 0


def one_line(err):
    """``Type: first line of the message`` of ``err``; for an error re-raised from a DataLoader worker (whose message
    is the worker's whole traceback), the worker's own exception line."""
    import re
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if 'Original Traceback' in text and lines:
        name, _, msg = lines[-1].partition(': ')
        return f'{name.rsplit(".", 1)[-1]}: {msg}'[:600]
    # torch's weights-only refusal wraps its one-line cause in a paragraph of advice that does not apply here
    text = re.sub(r'Weights only load failed\..*?WeightsUnpickler error:', 'weights-only load refused:', text,
                  flags=re.S)
    text = re.sub(r'Check the documentation of torch\.load.*?\.html\.?', '', text, flags=re.S)
    return f'{type(err).__name__}: {" ".join(text.split())}'[:600]


def run_basicsr_script(kind, basicsr_root):
    """BasicSR's own ``train.py``/``test.py`` run as a script: the same as ``lwsr-train``/``lwsr-test``, except that a
    BasicSR source checkout keeps its own root (the classic ``python basicsr/train.py`` from the checkout)."""
    from lwsr_plugin.options import is_site_packages
    if is_site_packages(basicsr_root):
        default, source = os.getcwd(), 'the working directory; BasicSR would have used site-packages'
    else:
        default, source = basicsr_root, f'the BasicSR checkout that holds this {kind}.py'
    return run(kind, None, default, source)
