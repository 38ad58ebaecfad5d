"""The option files shipped with the plugin (the repository's ``options/*.yml``), found the same way in every kind of
installation:

* an installed package (wheel, sdist, ``pip install .``) carries them in ``lwsr_plugin/recipes/``, copied there by
  ``setup.py`` at build time (the repository holds one copy, ``options/``);
* an editable install, or a checkout on ``sys.path``, has no ``recipes/`` folder: the checkout's ``options/`` beside
  the package is used.

Names are file names with or without ``.yml`` (``train_IMDN_x4``, ``train_IMDN_x4.yml``, ``options/train_IMDN_x4.yml``).
No torch, no YAML: the lookup only lists files.
"""
import difflib
import os

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = 'recipes'  # the folder inside the installed package; setup.py writes it
EXT = '.yml'


def _has_options(folder):
    return os.path.isdir(folder) and any(f.endswith(EXT) for f in os.listdir(folder))


def shipped_dir():
    """The folder of the shipped option files (absolute): the installed package's ``recipes/``, else the checkout's
    ``options/``; None when neither is there."""
    for folder in (os.path.join(PACKAGE, RECIPES), os.path.join(os.path.dirname(PACKAGE), 'options')):
        if _has_options(folder):
            return folder
    return None


def list_shipped():
    """The names (without ``.yml``) of the shipped option files, sorted."""
    folder = shipped_dir()
    if folder is None:
        return []
    return sorted(f[:-len(EXT)] for f in os.listdir(folder) if f.endswith(EXT))


def shipped_name(name):
    """``name`` as a shipped file's name without ``.yml``, or None for a path elsewhere than ``options/``."""
    head, tail = os.path.split(os.path.normpath(str(name)))
    if head not in ('', 'options') or not tail:
        return None
    return tail[:-len(EXT)] if tail.endswith(EXT) else tail


def shipped_path(name):
    """Absolute path of the shipped option file ``name`` (with or without ``.yml``), or None when none is shipped
    under that name."""
    stem, folder = shipped_name(name), shipped_dir()
    if stem is None or folder is None:
        return None
    path = os.path.join(folder, stem + EXT)
    return path if os.path.isfile(path) else None


def not_shipped(name, what='not a shipped option file'):
    """One line on a ``name`` that is not shipped (``what`` says so): the closest shipped names and where the list
    is."""
    shipped = list_shipped()
    if not shipped:
        return f'{name}: {what}; no shipped option files were found (neither lwsr_plugin/{RECIPES}/ nor the ' \
            'checkout\'s options/): reinstall lwsr_plugin.'
    close = difflib.get_close_matches(shipped_name(name) or str(name), shipped, n=3, cutoff=0.5)
    hint = f'did you mean {", ".join(close)}? ' if close else ''
    return f'{name}: {what}; {hint}`lwsr-options list` shows the shipped ones.'
