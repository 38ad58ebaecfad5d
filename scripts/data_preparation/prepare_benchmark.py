"""Thin wrapper over ``lwsr_plugin.data.benchmark`` for users who expect BasicSR-style scripts; see --help."""
from lwsr_plugin.data.benchmark import main

if __name__ == '__main__':
    raise SystemExit(main())
