"""Thin wrapper over ``lwsr_plugin.data.check_lmdb`` for users who expect BasicSR-style scripts; see --help."""
from lwsr_plugin.data.check_lmdb import main

if __name__ == '__main__':
    raise SystemExit(main())
