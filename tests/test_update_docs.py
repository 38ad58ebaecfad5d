"""``scripts/update_docs.py``: a measurement's Markdown replaces only the text between its block's markers, on every
page that holds the block; a page whose block already holds that text is not rewritten; a named block no page holds
is refused in one line before anything runs."""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location('update_docs', os.path.join(REPO, 'scripts', 'update_docs.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


update_docs = _load()
HEAD = '# A page\n\nIntro, kept as written.\n\n'
TAIL = ('\nText after the block, kept as written.\n\n<!-- BEGIN GENERATED: other -->\nkept\n'
        '<!-- END GENERATED: other -->\n')


def _block(name, body):
    return f'<!-- BEGIN GENERATED: {name} -->\n{body}\n<!-- END GENERATED: {name} -->\n'


def test_a_real_startup_measurement_replaces_only_its_block(tmp_path, monkeypatch, capsys):
    page, other = tmp_path / 'page.md', tmp_path / 'other.md'
    page.write_text(HEAD + _block('benchmark_startup', 'old numbers') + TAIL, encoding='utf-8')
    other.write_text(HEAD + TAIL, encoding='utf-8')
    before = os.stat(other)
    # the cheapest real run: --help of every command once, without the import rows (each imports torch)
    quick = [update_docs.PY, 'scripts/benchmark_startup.py', '--repeats', '1', '--no-imports']
    monkeypatch.setitem(update_docs.MEASUREMENTS, 'benchmark_startup',
                        update_docs.MEASUREMENTS['benchmark_startup']._replace(quick=quick))
    assert update_docs.main(['--only', 'benchmark_startup', '--quick', '--pages', str(page), str(other)]) == 0
    text = page.read_text(encoding='utf-8')
    assert text.startswith(HEAD + '<!-- BEGIN GENERATED: benchmark_startup -->\n\nMachine: ')
    assert text.endswith('\n\n<!-- END GENERATED: benchmark_startup -->\n' + TAIL)
    body = text[len(HEAD):-len(TAIL)].splitlines()[2:-2]
    from lwsr_plugin.ops.device import cpu_name
    assert body[0].startswith(f'Machine: {cpu_name()}, ') and 'torch thread' in body[0]
    assert body[0].endswith('Command: `python scripts/benchmark_startup.py --repeats 1 --no-imports`.')
    assert '| what | wall median s | wall min s | CPU median s |' in body
    assert any(line.startswith('| `lwsr-train --help` | ') for line in body)
    assert 'old numbers' not in text
    after = os.stat(other)  # the page without the block is not touched
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert 'page.md updated' in capsys.readouterr().err


def test_a_block_that_already_holds_the_text_is_not_rewritten(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text(HEAD + _block('benchmark_startup', 'x') + _block('benchmark_startup', 'y') + TAIL,
                    encoding='utf-8')
    content = 'Machine: some CPU (AVX2).\n\n| a | b |\n|---|---|\n| 1 | 2 |   \n'
    assert update_docs.update_page(str(page), {'benchmark_startup': content})
    text = page.read_text(encoding='utf-8')
    assert text.count('| 1 | 2 |\n') == 2 and 'x\n' not in text and text.endswith(TAIL)  # both copies, no trailing
    stat = os.stat(page)
    assert not update_docs.update_page(str(page), {'benchmark_startup': content})
    assert (os.stat(page).st_ino, os.stat(page).st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


STARTUP = _block('benchmark_startup', 'old numbers')


@pytest.mark.parametrize('pages, message', [
    ({'a.md': HEAD + STARTUP + TAIL, 'b.md': HEAD},
     'no page of the 2 searched holds the block model_report: add "<!-- BEGIN GENERATED: '),
    ({'a.md': HEAD + STARTUP + '<!-- BEGIN GENERATED: model_report -->\n| 1 |\n' + TAIL},
     'a.md: <!-- BEGIN GENERATED: model_report --> without its <!-- END GENERATED: model_report --> line'),
])
def test_a_missing_block_is_refused_in_one_line_before_anything_runs(pages, message, tmp_path, monkeypatch, capsys):
    for name, text in pages.items():
        (tmp_path / name).write_text(text, encoding='utf-8')

    def must_not_run(*args, **kwargs):
        raise AssertionError('a measurement ran')

    monkeypatch.setattr(update_docs, 'measure', must_not_run)
    status = update_docs.main(['--only', 'benchmark_startup', 'model_report', '--pages'] +
                              [str(tmp_path / name) for name in pages])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert all((tmp_path / name).read_text(encoding='utf-8') == text for name, text in pages.items())


def test_every_measurement_names_a_script_or_module_that_exists():
    import importlib.util as util
    for name, m in update_docs.MEASUREMENTS.items():
        for argv in (m.argv, m.quick):
            target = argv[1]
            if target == '-m':
                assert util.find_spec(argv[2]) is not None, name
            else:
                assert os.path.isfile(os.path.join(REPO, target)), name


def test_a_file_output_gives_its_marked_part_with_the_temporary_folder_left_out(tmp_path):
    """``lwsr-test --paper-tables`` marks its block in the file it writes: that part, and its command line names
    the output by its file name, not the updater's temporary folder."""
    from lwsr_plugin.metrics.paper_tables import paper_tables_markdown
    out = tmp_path / 'out'
    out.mkdir()
    measurement = update_docs.MEASUREMENTS['paper_tables']
    argv = update_docs.command(measurement, False, str(out))
    command = 'lwsr-test ' + ' '.join(argv[argv.index('--paper-tables'):])
    (out / measurement.result).write_text(paper_tables_markdown({}, ['Set5'], [4], command, 60.), encoding='utf-8')
    content = update_docs.markdown_of('paper_tables', '', str(out), measurement)
    assert content.startswith('Generated by `lwsr-test --paper-tables --out paper_tables.md` in 1.0 min. Machine: ')
    assert 'GENERATED' not in content and '# Published tables' not in content and str(tmp_path) not in content
    page = tmp_path / 'paper_tables.md'
    page.write_text('# Published tables, measured\n\n' + _block('paper_tables', 'old'), encoding='utf-8')
    assert update_docs.update_page(str(page), {'paper_tables': content})
    assert page.read_text(encoding='utf-8') == ('# Published tables, measured\n\n<!-- BEGIN GENERATED: paper_tables '
                                                f'-->\n\n{content}\n\n<!-- END GENERATED: paper_tables -->\n')
