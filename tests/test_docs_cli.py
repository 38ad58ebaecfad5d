"""The documentation agrees with the code it describes.

* Every ``lwsr-*`` command line in a fenced code block of README.md and docs/**/*.md (and every ``python -m
  lwsr_plugin...`` / ``torchrun -m lwsr_plugin...`` line) names a command that setup.py's ``console_scripts`` declare,
  and only flags (and subcommands) that command's argparse parser has. Parsers are built without running a command:
  ``build_parser()`` / ``parser()`` of the command's module, its ``parse_args()`` stopped at the parse, or for
  ``lwsr-train`` / ``lwsr-test`` / ``lwsr-evaluate`` :func:`lwsr_plugin.entry.help_parser`.
* Every option-file key the docs name in a `code` span under a known top-level section (``train.amp``,
  ``datasets.train.gt_size``, ``val: {tile: 0}`` ...) is in a shipped options/*.yml or named, as that dotted path, in
  the plugin's source (its option checks, training options, models' docstrings, messages), or on the commented
  allow-list below.
* Every relative link of those pages reaches an existing file, and its ``#anchor`` a heading of the target page (the
  slug Python-Markdown's toc gives it, as MkDocs Material renders docs/, or GitHub's, as GitHub renders README.md), an
  explicit ``{#id}`` or an HTML ``id``/``name``.

The self-checks at the end feed synthetic pages with a renamed flag, an unknown command, an unknown key and broken
links, and assert that each is reported: the checkers cannot silently pass everything.
"""
import argparse
import ast
import functools
import glob
import importlib
import importlib.util
import os
import re
import shlex
import unicodedata
from urllib.parse import unquote

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'lwsr_plugin')


def doc_pages():
    pages = [os.path.join(REPO, 'README.md')] + sorted(glob.glob(os.path.join(REPO, 'docs', '**', '*.md'),
                                                                   recursive=True))
    return [p for p in pages if os.path.isfile(p)]


def _rel(path):
    return os.path.relpath(path, REPO)


def _read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


# ------------------------------------------------------------------------------------------------ markdown structure
FENCE = re.compile(r'^(\s*)(`{3,}|~{3,})\s*([^`\s]*)')


def fenced_blocks(text):
    """``(first line number, info string, [lines])`` of every fenced code block (``` or ~~~, any indentation)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        char, size, info, body = m.group(2)[0], len(m.group(2)), m.group(3).lower(), []
        i += 1
        start = i + 1
        while i < len(lines) and not re.match(rf'^\s*{re.escape(char)}{{{size},}}\s*$', lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append((start, info, body))
        i += 1
    return blocks


def prose_lines(text):
    """``(line number, line)`` of the lines outside fenced code blocks."""
    inside, out = None, []
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if inside is None and m:
            inside = (m.group(2)[0], len(m.group(2)))
        elif inside is not None and re.match(rf'^\s*{re.escape(inside[0])}{{{inside[1]},}}\s*$', line):
            inside = None
        elif inside is None:
            out.append((n, line))
    return out


# ----------------------------------------------------------------------------------------------------- the commands
def console_scripts(setup_py=os.path.join(REPO, 'setup.py')):
    """``{command: module}`` of setup.py's ``console_scripts``, read from its syntax tree (setup() is not run)."""
    with open(setup_py, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    entries = ast.literal_eval(value)
                    return {name.strip(): target.split(':')[0].strip()
                            for name, target in (e.split('=', 1) for e in entries)}
    raise AssertionError('setup.py declares no console_scripts')


class _Captured(BaseException):
    """Raised by the patched parse: the parser a ``parse_args()`` function built, before it parses anything."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _capture(func):
    """The ArgumentParser that ``func([])`` builds, taken at its first parse (nothing after the parse runs)."""
    original = argparse.ArgumentParser.parse_known_args

    def stop(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = stop
    try:
        result = func([])
    except _Captured as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return result if isinstance(result, argparse.ArgumentParser) else None


_PARSERS = {}


def parser_of(command, module):
    """The argparse parser of a console command, built without running the command."""
    if command not in _PARSERS:
        if module in ('lwsr_plugin.train', 'lwsr_plugin.test', 'lwsr_plugin.cli.evaluate'):
            from lwsr_plugin.entry import help_parser  # BasicSR parses inside its pipeline: the plugin's mirror
            _PARSERS[command] = help_parser('train' if module.endswith('train') else 'test', command)
        else:
            mod = importlib.import_module(module)
            found = None
            for name in ('build_parser', 'parser', 'make_parser', 'get_parser', 'parse_args'):
                func = getattr(mod, name, None)
                if callable(func):
                    found = _capture(lambda argv, f=func, n=name: f(argv) if n == 'parse_args' else f())
                    if found is not None:
                        break
            assert found is not None, (f'{command}: {module} has no build_parser() / parser() / parse_args() that '
                                       'gives its argparse parser; add one so the docs can be checked against it')
            _PARSERS[command] = found
    return _PARSERS[command]


def _options(parser):
    return {opt: action for action in parser._actions for opt in action.option_strings}


def _subcommands(parser):
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _takes(action):
    """How many values an option takes: an int, '?' (0 or 1), '*' (any), or 'rest'."""
    nargs = action.nargs
    if nargs is None:
        return 0 if isinstance(action, (argparse._StoreConstAction, argparse._CountAction, argparse._HelpAction,
                                        argparse._VersionAction)) else 1
    if nargs in ('*', '+'):
        return '*'
    if nargs == argparse.REMAINDER:
        return 'rest'
    return nargs


NEGATIVE = re.compile(r'^-\d+(\.\d*)?$')


def check_arguments(prog, parser, args):
    """Problems (one line each) of the argument words ``args`` against ``parser``: unknown flags, unknown
    subcommands; positional words (file names, placeholders) are not judged."""
    problems, i, path = [], 0, [parser]
    while i < len(args):
        word = args[i].strip('[]{}(),|')
        i += 1
        if not word or word in ('...', '…'):
            continue
        if word == '--':
            break
        if word.startswith('-') and len(word) > 1 and not NEGATIVE.match(word):
            flag, _, inline = word.partition('=')
            action = next((_options(p)[flag] for p in reversed(path) if flag in _options(p)), None)
            if action is None:
                known = sorted({o for p in path for o in _options(p)})
                near = [o for o in known if o.lstrip('-').replace('_', '-') == flag.lstrip('-').replace('_', '-')
                        or o.startswith(flag) or flag.startswith(o)][:3]
                problems.append(f'{prog}: no flag {flag}' + (f' (did you mean {", ".join(near)}?)' if near else '')
                                + f'; it has {", ".join(known)}')
                continue
            takes = 0 if inline else _takes(action)
            if takes == 'rest':
                break
            if takes == '?':
                takes = 1 if i < len(args) and not args[i].startswith('-') else 0
            if takes == '*':
                while i < len(args) and not (args[i].startswith('-') and not NEGATIVE.match(args[i])):
                    i += 1
            else:
                i += takes
            continue
        subs = _subcommands(path[-1])
        if subs is not None:
            if word not in subs:
                problems.append(f'{prog}: no subcommand {word}; it has {", ".join(subs)}')
                break
            prog, path = f'{prog} {word}', path + [subs[word]]
    return problems


# ------------------------------------------------------------------------------------------ command lines in the docs
SHELL_LANGS = {'', 'bash', 'sh', 'shell', 'console', 'zsh', 'text', 'txt', 'none', 'powershell', 'bat', 'cmd'}
LAUNCHERS = {'time', 'nohup', 'env', 'sudo', 'exec', 'srun', 'mpirun', 'timeout', 'numactl', 'taskset', 'xargs',
             'command', 'uv', 'pipx'}
SEPARATORS = {'&&', '||', '|', ';', '&', '(', ')', ';;', '|&'}
COMMAND_NAME = re.compile(r'^lwsr-[a-z0-9][a-z0-9-]*$')


def shell_lines(body):
    """The logical lines of a code block: backslash continuations joined, ``$ `` prompts dropped."""
    out, pending, first = [], '', None
    for offset, line in enumerate(body):
        text = re.sub(r'^\s*(\([^)]*\)\s*)?\$\s+', '', line)
        if first is None:
            first = offset
        if text.rstrip().endswith('\\'):
            pending += text.rstrip()[:-1] + ' '
            continue
        out.append((first, pending + text))
        pending, first = '', None
    if pending:
        out.append((first, pending))
    return out


def _words(line):
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote (prose in a text block): words up to a comment
        return re.sub(r'(^|\s)#.*', '', line).split()


def simple_commands(words):
    command = []
    for w in words:
        if w in SEPARATORS or (set(w) <= set('<>&|;') and w):
            if command:
                yield command
            command = []
        else:
            command.append(w)
    if command:
        yield command


def invocations(words, scripts):
    """``(command label, module, argument words)`` of each plugin command a shell line runs: ``lwsr-*`` at a
    command's head (after ``VAR=value`` and launchers such as ``srun``), or ``-m lwsr_plugin.<module>`` of a
    Python or torchrun launch. A ``lwsr-*`` word that no console script declares gives module None."""
    by_module = {}
    for name, module in scripts.items():
        by_module.setdefault(module, name)
    for cmd in simple_commands(words):
        head = 0
        while head < len(cmd) and (re.match(r'^[A-Za-z_]\w*=', cmd[head]) or cmd[head] in LAUNCHERS
                                   or (head and (cmd[head].startswith('-') or cmd[head].isdigit()))):
            head += 1
        if head < len(cmd) and COMMAND_NAME.match(cmd[head]):
            yield cmd[head], scripts.get(cmd[head]), cmd[head + 1:]
            continue
        if head < len(cmd) and re.search(r'(^|/)(python[\d.]*|torchrun)$', cmd[head]) and '-m' in cmd:
            at = cmd.index('-m')
            if at + 1 < len(cmd) and cmd[at + 1].split('.')[0] == 'lwsr_plugin':
                module = cmd[at + 1]
                yield by_module.get(module, f'python -m {module}'), module, cmd[at + 2:]


def check_command_lines(path, text, scripts):
    """Problems (``page:line: ...``) of the command lines in the fenced code blocks of one page."""
    problems = []
    for start, info, body in fenced_blocks(text):
        if info not in SHELL_LANGS:
            continue
        for offset, line in shell_lines(body):
            where = f'{_rel(path)}:{start + offset}'
            for label, module, args in invocations(_words(line), scripts):
                if module is None:
                    problems.append(f'{where}: {label} is not a command (setup.py declares {", ".join(scripts)})')
                    continue
                if label.startswith('python -m') and importlib.util.find_spec(module) is None:
                    problems.append(f'{where}: {label}: no such module')
                    continue
                try:
                    parser = parser_of(label, module)
                except AssertionError as err:
                    problems.append(f'{where}: {err}')
                    continue
                problems += [f'{where}: {p}' for p in check_arguments(label, parser, args)]
    return problems


# -------------------------------------------------------------------------------------------- option keys in the docs
SECTIONS = ('train', 'val', 'datasets', 'logger', 'network_g', 'path', 'dist_params', 'two_stage')
# Keys the docs may name that neither a shipped option file nor the plugin's source names (BasicSR's own, read only
# inside BasicSR), each with where BasicSR reads it, e.g. 'logger.wandb.entity': 'basicsr/utils/logger.py
# init_wandb_logger'. None is needed today.
ALLOWED_KEYS = {}
# ``train.sh``, ``train.py``: file names, not keys
FILE_SUFFIXES = {'py', 'sh', 'yml', 'yaml', 'md', 'txt', 'csv', 'png', 'jpg', 'pth', 'pt', 'json', 'log', 'state',
                 'lmdb', 'onnx', 'safetensors', 'cfg', 'toml', 'ini', 'mdb', 'sub'}
# Where a ``section.key`` of the plugin's own is named by its leaf alone: the train/val keys every plugin model shares
# (the YAML listing in training_options.py's docstring, ``train_opt.get('key')``), the option checks, the models.
NAMING_FILES = ('models/training_options.py', 'options/checks.py', 'models/*.py')
KEY_SPAN = re.compile(r'^(%s)((?:\.[\w<>*-]+)*)\s*(?::\s*(.*))?$' % '|'.join(SECTIONS))


def key_paths(node, prefix=()):
    """Every key path (a tuple) of a nested dict."""
    for key, value in (node.items() if isinstance(node, dict) else ()):
        yield prefix + (str(key), )
        yield from key_paths(value, prefix + (str(key), ))


@functools.lru_cache(maxsize=None)
def yaml_key_paths(folder=os.path.join(REPO, 'options')):
    """Every key path of every shipped option file."""
    files = glob.glob(os.path.join(folder, '*.yml'))
    return frozenset(p for file in files for p in key_paths(yaml.safe_load(_read(file))))


@functools.lru_cache(maxsize=None)
def named_leaves(root=PACKAGE):
    """The key names NAMING_FILES name: as a YAML key at a line's start (``    deterministic: false``) or as a
    quoted string (``'amp'``)."""
    names = set()
    for pattern in NAMING_FILES:
        for file in glob.glob(os.path.join(root, pattern)):
            text = _read(file)
            names.update(re.findall(r'^\s*(\w+):(?:\s|$)', text, re.M))
            names.update(re.findall(r'''['"`](\w+)['"`]''', text))
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def package_text(root=PACKAGE):
    return '\n'.join(_read(f) for f in sorted(glob.glob(os.path.join(root, '**', '*.py'), recursive=True)))


def spans(text):
    """``(line number, code span)`` of every inline code span outside fenced blocks."""
    for n, line in prose_lines(text):
        for m in re.finditer(r'(`+)(.+?)\1', line):
            yield n, m.group(2).strip()


def keys_of_span(span):
    """The option key paths a code span names: ``train.amp``, ``train.amp: bf16``, ``val: {tile: 0, amp: bf16}``
    (every key of the flow mapping); none for other spans."""
    m = KEY_SPAN.match(span)
    if not m:
        return []
    base = [m.group(1)] + [p for p in m.group(2).split('.') if p]
    value = (m.group(3) or '').strip()
    if value.startswith('{'):
        try:
            mapping = yaml.safe_load(value)
        except yaml.YAMLError:
            mapping = None
        if isinstance(mapping, dict):
            return [base + list(p) for p in key_paths(mapping)]
    return [base] if len(base) > 1 and base[-1] not in FILE_SUFFIXES else []


def _placeholder(part):
    return part.startswith('<') and part.endswith('>') or part == '*'


def key_known(key, yaml_paths, source):
    dotted = '.'.join(key)
    if dotted in ALLOWED_KEYS or (len(key) == 2 and key[1] in named_leaves()):
        return True
    for path in yaml_paths:
        if len(path) == len(key) and all(_placeholder(k) or k == p for k, p in zip(key, path)):
            return True
    pattern = r'\.'.join(r'(?:<\w+>|\w+)' if _placeholder(k) else re.escape(k) for k in key)
    return re.search(rf'(?<![\w.]){pattern}(?![\w])', source) is not None


def check_option_keys(path, text, yaml_paths, source):
    problems = []
    for n, span in spans(text):
        for key in keys_of_span(span):
            if not key_known(key, yaml_paths, source):
                problems.append(f'{_rel(path)}:{n}: `{span}`: no option key {".".join(key)} in options/*.yml or in '
                                'the plugin\'s source')
    return problems


# ---------------------------------------------------------------------------------------------------------- links
def _heading_text(raw):
    text = re.sub(r'\s*\{[^}]*\}\s*$', '', raw)  # attr_list
    text = re.sub(r'\s+#+\s*$', '', text).strip()
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)  # links and images: their text
    code = []  # code spans: their text, kept out of the HTML and emphasis rules
    text = re.sub(r'(`+)(.+?)\1', lambda m: code.append(m.group(2)) or f'\0{len(code) - 1}\0', text)
    text = re.sub(r'<[^>]+>', '', text)  # inline HTML tags
    text = re.sub(r'(?<!\w)(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1(?!\w)', r'\2', text)  # emphasis
    text = re.sub('\0(\\d+)\0', lambda m: code[int(m.group(1))], text)
    return text.replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>')


def python_markdown_slug(text):
    """Python-Markdown's ``toc.slugify`` (MkDocs, Material's default)."""
    value = unicodedata.normalize('NFKD', text).encode('ascii', 'ignore').decode('ascii')
    value = re.sub(r'[^\w\s-]', '', value).strip().lower()
    return re.sub(r'[-\s]+', '-', value)


def github_slug(text):
    value = re.sub(r'[^\w\- ]', '', text.strip().lower())
    return value.replace(' ', '-')


def anchors(text):
    """Every anchor a link may name on a page of Markdown ``text``: the slugs of its headings (both styles,
    duplicates numbered as each renderer numbers them), ``{#id}`` attributes and HTML ``id`` / ``name`` attributes."""
    found, seen_pm, seen_gh = set(), {}, {}
    for _, line in prose_lines(text):
        m = re.match(r'^ {0,3}(#{1,6})\s+(.*)$', line)
        if m:
            explicit = re.search(r'\{[^}]*#([\w-]+)[^}]*\}\s*$', m.group(2))
            if explicit:
                found.add(explicit.group(1))
            title = _heading_text(m.group(2))
            for slug_of, seen, sep in ((python_markdown_slug, seen_pm, '_'), (github_slug, seen_gh, '-')):
                slug = slug_of(title)
                count = seen.get(slug, 0)
                seen[slug] = count + 1
                found.add(slug if not count else f'{slug}{sep}{count}')
        found.update(re.findall(r'''\b(?:id|name)=["']([^"']+)["']''', line))
    try:  # the ids MkDocs gives, from Python-Markdown itself where it is installed
        import markdown
    except ImportError:
        return found
    md = markdown.Markdown(extensions=['toc', 'attr_list'])
    md.convert('\n\n'.join(line for _, line in prose_lines(text) if re.match(r'^ {0,3}#{1,6}\s', line)))
    tokens = list(md.toc_tokens)
    while tokens:
        token = tokens.pop()
        found.add(token['id'])
        tokens += token['children']
    return found


LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+["\'][^)]*["\'])?\s*\)')
REFERENCE = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)')


def check_links(path, text):
    problems = []
    for n, line in prose_lines(text):
        line_wo_code = re.sub(r'(`+)(.+?)\1', '', line)
        targets = [m.group(1) for m in LINK.finditer(line_wo_code)]
        ref = REFERENCE.match(line_wo_code)
        if ref:
            targets.append(ref.group(1))
        for target in targets:
            if re.match(r'^[a-zA-Z][\w+.-]*:', target) or target.startswith('//'):
                continue  # http:, https:, mailto: ...
            file, _, anchor = target.partition('#')
            where = f'{_rel(path)}:{n}: ({target})'
            if file.startswith('/'):
                problems.append(f'{where}: absolute path; link relative to the page')
                continue
            dest = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file))) if file else path
            if file and not os.path.exists(dest):
                problems.append(f'{where}: {_rel(dest)} does not exist')
                continue
            if anchor and dest.endswith('.md') and unquote(anchor) not in anchors(_read(dest) if file else text):
                problems.append(f'{where}: {_rel(dest)} has no heading or id "{anchor}"')
    return problems


# ------------------------------------------------------------------------------------------------------ the checks
def _report(problems):
    return f'{len(problems)} mismatches between the docs and the code:\n' + '\n'.join(problems)


def test_every_documented_command_line_names_a_declared_command_and_its_flags():
    scripts = console_scripts()
    problems = [p for page in doc_pages() for p in check_command_lines(page, _read(page), scripts)]
    assert not problems, _report(problems)


def test_every_console_script_has_a_parser_the_check_can_read():
    for command, module in console_scripts().items():
        assert _options(parser_of(command, module)), command


def test_every_documented_option_key_exists():
    yaml_paths, source = yaml_key_paths(), package_text()
    problems = [p for page in doc_pages() for p in check_option_keys(page, _read(page), yaml_paths, source)]
    assert not problems, _report(problems)


def test_every_relative_link_and_anchor_resolves():
    problems = [p for page in doc_pages() for p in check_links(page, _read(page))]
    assert not problems, _report(problems)


# ---------------------------------------------------------------------------------------- self-checks of the checks
GOOD_LINE = 'lwsr-upscale LR/ -o SR/ --arch IMDN --scale 4 --ckpt IMDN_x4.pth --tile 256 --tile-overlap 8 --bf16'


@pytest.mark.parametrize('line, expected', [
    (GOOD_LINE, None),
    (GOOD_LINE.replace('--tile-overlap', '--tile-overlapp'), 'lwsr-upscale: no flag --tile-overlapp'),
    (GOOD_LINE.replace('--tile-overlap', '--overlap'), 'lwsr-upscale: no flag --overlap'),
    ('$ OMP_NUM_THREADS=1 lwsr-upscale in.png -o out/ --scale 4 \\\n    --tiles 256   # a comment', 'no flag --tiles'),
    ('lwsr-upscal in.png -o out/', 'lwsr-upscal is not a command'),
    ('lwsr-train -opt options/train_IMDN_x4.yml --auto_resume --launcher pytorch', None),
    ('lwsr-test -opt options/test_IMDN_x4.yml --auto_resume', 'lwsr-test: no flag --auto_resume'),
    ('lwsr-test --paper-tables --sets Set5 --scales 4 --out x.md', None),
    ('srun --kill-on-bad-exit=1 lwsr-train -opt x.yml --launcher slurm --resume', 'lwsr-train: no flag --resume'),
    ('torchrun --nproc_per_node=2 -m lwsr_plugin.train -opt x.yml --launcher pytorch --bogus',
     'lwsr-train: no flag --bogus'),
    ('python -m lwsr_plugin.cli.upscale in.png -o out/ --tile-overlapp 8', 'lwsr-upscale: no flag --tile-overlapp'),
    ('lwsr-upscale: --tile 4 is smaller than --tile-overlap 8 (a message, not a command)', None),
])
def test_command_check_reports_a_renamed_flag_or_command(line, expected):
    page = os.path.join(REPO, 'docs', 'self_check.md')
    problems = check_command_lines(page, f'Text.\n\n```bash\n{line}\n```\n', console_scripts())
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0] and problems[0].startswith('docs/self_check.md:4: ')


def test_argument_check_handles_subcommands_and_values():
    p = argparse.ArgumentParser(prog='tool')
    p.add_argument('--root')
    sub = p.add_subparsers(dest='command', required=True)
    copy = sub.add_parser('copy')
    copy.add_argument('name')
    copy.add_argument('--force', action='store_true')
    copy.add_argument('--sets', nargs='+')
    sub.add_parser('list')
    assert check_arguments('tool', p, ['--root', 'copy', 'copy', 'x.yml', '--force']) == []  # a value named copy
    assert check_arguments('tool', p, ['copy', 'x.yml', '--sets', 'Set5', 'Set14', '--force']) == []
    assert check_arguments('tool', p, ['lst']) == ['tool: no subcommand lst; it has copy, list']
    assert check_arguments('tool', p, ['list', '--force'])[0].startswith('tool list: no flag --force')
    assert check_arguments('tool', p, ['copy', 'x.yml', '--force=1', '--root=a']) == []


@pytest.mark.parametrize('span, known', [
    ('train.amp', True), ('train.amp: bf16', True), ('datasets.train.gt_size', True),
    ('datasets.<phase>.gt_size', True),
    ('val: {tile: 0}', True), ('train.ampp', False), ('val: {tile: 0, tiles: 8}', False),
    ('network_g.variantt', False), ('torch.compile', None), ('train.sh', None), ('logger.wandb.entity', False)])
def test_option_key_check_reports_an_unknown_key(span, known, monkeypatch):
    if span == 'logger.wandb.entity':  # unknown, and accepted once on the allow-list
        monkeypatch.setitem(ALLOWED_KEYS, 'logger.wandb.entity', 'basicsr/utils/logger.py init_wandb_logger')
        assert check_option_keys(os.path.join(REPO, 'README.md'), f'Set `{span}`.\n', yaml_key_paths(),
                                 package_text()) == []
        monkeypatch.undo()
    problems = check_option_keys(os.path.join(REPO, 'README.md'), f'Set `{span}` here.\n', yaml_key_paths(),
                                 package_text())
    if known is None:
        assert not keys_of_span(span) and not problems
    else:
        assert (problems == []) == known, problems


def test_link_check_reports_missing_files_and_anchors(tmp_path):
    (tmp_path / 'other.md').write_text('# Title\n\n## Speed of the fast forms (`scripts/x.py --all`)\n\n## Title\n'
                                       '\n## Own {#own-id}\n', encoding='utf-8')
    page = tmp_path / 'page.md'
    text = ('[a](other.md) [b](other.md#speed-of-the-fast-forms-scriptsxpy-all) '
            '[c](other.md#speed-of-the-fast-forms-scriptsxpy---all) [d](other.md#title_1) [e](other.md#own-id) '
            '[f](https://example.com/x.md) [g](#local)\n\n## Local\n\n'
            '`[not a link](missing.md)`\n\n```\n[in code](missing.md)\n```\n')
    assert check_links(str(page), text) == []
    bad = check_links(str(page), '[a](missing.md) [b](other.md#nope) [c](#absent)\n\n[ref]: gone/x.png\n')
    assert [p.split(': ', 1)[1] for p in bad] == [
        '(missing.md): ' + _rel(str(tmp_path / 'missing.md')) + ' does not exist',
        '(other.md#nope): ' + _rel(str(tmp_path / 'other.md')) + ' has no heading or id "nope"',
        '(#absent): ' + _rel(str(page)) + ' has no heading or id "absent"',
        '(gone/x.png): ' + _rel(str(tmp_path / 'gone' / 'x.png')) + ' does not exist']
