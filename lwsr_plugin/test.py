"""``lwsr-test`` / ``python -m lwsr_plugin.test``: BasicSR's own ``test_pipeline`` with the plugin registered.

Results (``results/<name>``) go under the current working directory.
"""
import os

import lwsr_plugin  # noqa: F401  (compat patches + registration)
from lwsr_plugin.cli.checks import check_cli_options


def main():
    import basicsr.test
    check_cli_options()
    basicsr.test.test_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
