"""``lwsr-evaluate``: the same command as ``lwsr-test``, under its older name, so that scripts calling it keep working.

``lwsr-evaluate -opt options/test_X.yml`` is ``lwsr-test -opt options/test_X.yml`` (BasicSR's test pipeline; test sets
whose folders are absent are reported as skipped), and ``lwsr-evaluate --paper-tables`` is ``lwsr-test
--paper-tables`` (:mod:`lwsr_plugin.metrics.paper_tables`, whose names are importable from here too).
"""
import sys


def main(argv=None):
    """``lwsr-evaluate``: :func:`lwsr_plugin.test.main`, with this name in its help and messages."""
    from lwsr_plugin.test import main as test_main
    return test_main(argv, prog='lwsr-evaluate')


ENGINE_NAMES = ('IDN_TABLE2', 'IDN_TABLE3', 'IMDN_TABLE5', 'NOTES', 'STANDARD_SIZES', 'TOLERANCE', 'evaluate_options',
                'load_test_options', 'paper_tables_markdown')


def __getattr__(name):
    # imported on first use: `lwsr-evaluate --help` answers without torch, which importing the tables' module loads
    if name not in ENGINE_NAMES:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    from lwsr_plugin.metrics import paper_tables
    return getattr(paper_tables, name)


if __name__ == '__main__':
    sys.exit(main())
