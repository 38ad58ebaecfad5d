"""``lwsr-test`` / ``python -m lwsr_plugin.test``: BasicSR's own ``test_pipeline`` with the plugin registered.

Results (``results/<name>``) go under the current working directory. Test sets whose folders are absent (the
shipped option files list Set5, Set14, BSD100, Urban100 and Manga109) are reported as skipped.
"""
import os
import sys

import lwsr_plugin  # noqa: F401  (compat patches + registration)
from lwsr_plugin.cli.checks import check_cli_options
from lwsr_plugin.cli.evaluate import present_datasets_only


def main():
    import basicsr.test
    with present_datasets_only(sys.argv):  # BasicSR's parse_options reads sys.argv
        check_cli_options()
        basicsr.test.test_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
