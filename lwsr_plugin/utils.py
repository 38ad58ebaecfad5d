"""Small helpers shared by the subpackages."""
import importlib
import os


def import_modules_with_suffix(package_name, package_file, suffix):
    """Import ``<package>.<stem>`` for every ``<stem><suffix>`` file beside ``package_file``, as BasicSR's own
    subpackages do: dropping a ``*_arch.py`` / ``*_model.py`` / ``*_loss.py`` file in the folder registers it."""
    folder = os.path.dirname(os.path.abspath(package_file))
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(suffix) and not f.startswith('.'))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]
