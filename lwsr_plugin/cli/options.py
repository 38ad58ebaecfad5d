"""``lwsr-options``: the option files shipped with lwsr_plugin (the repository's ``options/``), from any folder and
any installation (:mod:`lwsr_plugin.options.shipped` finds them).

    lwsr-options list                         # name, arch, scale, data and one line on each file
    lwsr-options list IMDN                    # only the names containing IMDN
    lwsr-options copy train_IMDN_x4           # ./train_IMDN_x4.yml, byte for byte, and its schema beside it
    lwsr-options copy train_IMDN_x4 my.yml    # into a folder or under another name (--overwrite replaces a file)
    lwsr-options path train_IMDN_x4           # the absolute path of the shipped file
    lwsr-options schema -o lwsr_options.schema.json --user-modules ./myarchs   # the JSON Schema, your archs too

``lwsr-train -opt train_IMDN_x4`` and ``lwsr-test -opt test_IMDN_x4`` run a shipped file by its name when the working
directory holds no file of that name.

Every shipped file starts with ``# yaml-language-server: $schema=./lwsr_options.schema.json``: an editor with the YAML
language server completes and checks the file against the schema beside it, which ``copy`` writes from the
registries of this installation (:mod:`lwsr_plugin.options.schema`).
"""
import argparse
import os
import re
import shutil
import sys
import textwrap

# Light at module level (no torch): --help, list and path answer at once; copy loads the plugin's file writer, and
# copy and schema the registries.
from lwsr_plugin.options import OptionError, load_yaml
from lwsr_plugin.options.shipped import list_shipped, not_shipped, shipped_dir, shipped_path
from lwsr_plugin.registration import UserModuleError

PROG = 'lwsr-options'
FILE_NAME = 'lwsr_options.schema.json'
MODELINE_PREFIX = '# yaml-language-server:'
# the first line of every shipped option file: the schema beside the file, which copy writes there
MODELINE = f'{MODELINE_PREFIX} $schema=./{FILE_NAME}'
WIDTH = 120  # columns of the table where the terminal does not say; the description is shortened to fit
MIN_DESCRIPTION = 30
HEADER = ('name', 'arch', 'scale', 'data', 'description')


class CommandError(ValueError):
    """Bad input to the command; the message names the argument and the fix."""


def _without_asides(text):
    """``text`` without its parenthesised parts (nested ones too); an aside left open drops the rest."""
    out, depth = [], 0
    for ch in text:
        if ch == '(':
            depth += 1
        elif ch == ')' and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    return ''.join(out)


def description(path):
    """The first sentence of the file's leading comment block, without its asides in parentheses (the papers'
    references, section numbers) and without the editor's schema line: every shipped file opens with a comment
    saying what it is."""
    lines = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if not line.startswith('#'):
                break
            if not line.startswith(MODELINE_PREFIX):
                lines.append(line.lstrip('#').strip())
    text = ' '.join(_without_asides(' '.join(lines)).split())
    text = re.sub(r'\s+([,.;:])', r'\1', text)
    return re.split(r'(?<=[.;])\s', text, maxsplit=1)[0].rstrip('.;:, ')


def _data_folder(path):
    """``DIV2K`` of ``datasets/DIV2K/DIV2K_train_HR_sub.lmdb``: the folder a dataset path names under datasets/."""
    parts = [p for p in str(path).replace('\\', '/').split('/') if p not in ('', '.')]
    if len(parts) > 1 and parts[0] == 'datasets':
        return parts[1]
    return parts[-2] if len(parts) > 1 else (parts[0] if parts else '?')


def summary(name):
    """``(name, arch, scale, data, description)`` of the shipped file ``name``: arch is ``network_g.type`` with its
    variant, data the training set (from its path) or, for a test file, the number of benchmark sets."""
    path = shipped_path(name)
    opt = load_yaml(path)
    net = opt.get('network_g') or {}
    arch = str(net.get('type', '?'))
    variant = net.get('variant')
    if variant and str(variant) != arch:
        arch = f'{arch} {variant}'
    sets = {k: v for k, v in (opt.get('datasets') or {}).items() if isinstance(v, dict)}
    train = sets.get('train')
    if train is not None:
        data = _data_folder(train.get('dataroot_gt') or train.get('name', '?'))
    else:
        data = f'{len(sets)} benchmark set{"s" * (len(sets) != 1)}'
    return name, arch, f'x{opt.get("scale", "?")}', data, description(path)


def table(rows, width):
    """``rows`` (tuples of HEADER's columns) as aligned text lines no wider than ``width``: the description is
    shortened (never below MIN_DESCRIPTION characters)."""
    rows = [HEADER] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    room = max(MIN_DESCRIPTION, width - sum(widths) - 2 * len(widths))
    lines = []
    for k, row in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths)]
        lines.append('  '.join(cells + [textwrap.shorten(row[-1], room, placeholder=' ...', break_on_hyphens=False)]))
        if k == 0:
            lines.append('  '.join(['-' * w for w in widths] + ['-' * min(room, 11)]))
    return lines


def _found(name):
    path = shipped_path(name)
    if path is None:
        raise CommandError(not_shipped(name))
    return path


def _folder_exists(dest, target, option=''):
    """CommandError naming ``dest`` (given as ``option``) when the folder that would receive ``target`` is missing."""
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise CommandError(f'{option}{dest}: the folder {folder} does not exist; create it or give an existing '
                           'folder.')


def copy(name, dest=None, overwrite=False):
    """Write the shipped file ``name`` byte for byte to ``dest`` (a folder, the working directory by default, or a
    file path), through the plugin's temp-and-rename writer; an existing file only with ``overwrite``. Returns the
    path written."""
    src = _found(name)
    dest = dest or '.'
    if os.path.isdir(dest) or dest.endswith(('/', os.sep)):
        target = os.path.normpath(os.path.join(dest, os.path.basename(src)))
    else:
        target = dest
    _folder_exists(dest, target)
    if os.path.isdir(target):
        raise CommandError(f'{target} is a folder; give a file path or the folder that should receive the file.')
    if os.path.exists(target) and not overwrite:
        raise CommandError(f'{target} exists; pass --overwrite to replace it.')
    from lwsr_plugin.fileio import atomic_target
    with atomic_target(target) as tmp:
        shutil.copyfile(src, tmp)
    return target


def schema_text(user_modules=()):
    """The option-file schema as JSON text, from the registries after the plugin and ``user_modules`` (entries as
    under ``user_modules:``) are imported."""
    from lwsr_plugin.options.schema import build, dumps
    from lwsr_plugin.registration import import_user_modules, register
    register()
    import_user_modules(list(user_modules), source='--user-modules')
    return dumps(build())


def write_schema(dest, user_modules=()):
    """Write the schema to ``dest`` (a file, or a folder that receives ``lwsr_options.schema.json``) through the
    plugin's temp-and-rename writer. Returns the path written."""
    target = os.path.join(dest, FILE_NAME) if os.path.isdir(dest) or dest.endswith(('/', os.sep)) else dest
    _folder_exists(dest, target, '-o ')
    text = schema_text(user_modules)
    from lwsr_plugin.fileio import write_text_atomic
    write_text_atomic(target, text)
    return target


def schema_beside(path, overwrite=False):
    """``(schema path, written)``: the schema that the first line of the option file ``path`` names, written beside
    it unless one is there already (kept: it may hold the user's own archs) or ``overwrite``."""
    target = os.path.join(os.path.dirname(path), FILE_NAME)
    if os.path.exists(target) and not overwrite:
        return target, False
    return write_schema(target), True


def parser():
    examples = __doc__.split('\n\n')[1]
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description='List, copy and locate the option files shipped with lwsr_plugin (the repository\'s options/), '
        'and write the JSON Schema that editors check them with.',
        epilog=f'examples:\n{examples}\n\nshipped option files: {shipped_dir() or "none found"}')
    sub = p.add_subparsers(dest='command', required=True, metavar='{list,copy,path,schema}')
    ls = sub.add_parser('list', help='table of the shipped option files')
    ls.add_argument('contains', nargs='?', default='', metavar='TEXT', help='only names containing TEXT')
    cp = sub.add_parser('copy', help='copy a shipped file byte for byte, to edit it, and its schema beside it')
    cp.add_argument('name', metavar='NAME', help='e.g. train_IMDN_x4 (with or without .yml)')
    cp.add_argument('dest', nargs='?', default=None, metavar='DEST',
                    help='folder or file path to write (default: the working directory)')
    cp.add_argument('--overwrite', action='store_true', help='replace an existing file (and schema)')
    path = sub.add_parser('path', help='print the absolute path of a shipped file')
    path.add_argument('name', metavar='NAME', help='e.g. test_IMDN_x4 (with or without .yml)')
    sc = sub.add_parser('schema', help='the JSON Schema of option files, from the registries of this installation')
    sc.add_argument('-o', '--output', metavar='FILE', help=f'write it to FILE (a folder: FILE/{FILE_NAME}) '
                    'instead of printing it')
    sc.add_argument('--user-modules', nargs='+', default=[], metavar='ENTRY',
                    help='your own modules, as under user_modules: (folders, .py files, dotted names); their archs, '
                    'losses, ... join the schema')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.command == 'list':
            names = [n for n in list_shipped() if args.contains.lower() in n.lower()]
            if not names:
                raise CommandError(not_shipped(args.contains or f'{PROG} list'))
            width = shutil.get_terminal_size((WIDTH, 24)).columns
            print('\n'.join(table([summary(n) for n in names], width)))
        elif args.command == 'copy':
            target = copy(args.name, args.dest, args.overwrite)
            print(f'{PROG}: wrote {target} (a copy of {shipped_path(args.name)})')
            schema, written = schema_beside(target, args.overwrite)
            print(f'{PROG}: {"wrote" if written else "kept the existing"} {schema} (the schema its first line names; '
                  f'`{PROG} schema -o {schema} --user-modules ...` adds your own archs)')
        elif args.command == 'schema':
            if args.output:
                print(f'{PROG}: wrote {write_schema(args.output, args.user_modules)}')
            else:
                sys.stdout.write(schema_text(args.user_modules))
        else:
            print(_found(args.name))
    except (CommandError, OptionError, UserModuleError) as err:
        print(f'{PROG}: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
