"""``lwsr-test`` / ``python -m lwsr_plugin.test``: BasicSR's own ``test_pipeline`` with the plugin registered, and
``--paper-tables``, which measures the published tables of IDN and IMDN (:mod:`lwsr_plugin.metrics.paper_tables`).

Results (``results/<name>``) go under the current working directory (or ``path.root`` / ``LWSR_ROOT``), with a
progress bar per test set. Test sets whose folders are absent (the shipped option files list Set5, Set14, BSD100,
Urban100 and Manga109) are reported as skipped. ``lwsr-evaluate`` is this command under its older name. See
:mod:`lwsr_plugin.entry`.
"""
import sys

import lwsr_plugin  # noqa: F401  (cheap; spawned DataLoader workers re-import this module)


def main(argv=None, prog='lwsr-test'):
    from lwsr_plugin.entry import run
    return run('test', argv, prog=prog)


if __name__ == '__main__':
    sys.exit(main())
