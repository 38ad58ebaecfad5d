"""``python scripts/reproduce.py --recipe IDN_x3 --minutes 30``: the same as ``lwsr-reproduce`` (see its --help)."""
import sys

from lwsr_plugin.cli.reproduce import main

if __name__ == '__main__':
    sys.exit(main())
