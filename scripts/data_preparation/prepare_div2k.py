"""Thin wrapper over ``lwsr_plugin.data.div2k`` for users who expect BasicSR-style scripts; see --help."""
from lwsr_plugin.data.div2k import main

if __name__ == '__main__':
    raise SystemExit(main())
