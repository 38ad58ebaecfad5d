#!/usr/bin/env python
"""Install lwsr_plugin: the package, its console commands and the start-up hook (see _lwsr_plugin_startup.py)."""
import glob
import os
import shutil
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = 'lwsr_plugin_startup.pth'
RECIPES = os.path.join('lwsr_plugin', 'recipes')  # where lwsr_plugin.options.shipped looks in an installed package


class build_py_with_pth(build_py):
    """Also place the start-up ``.pth`` at the root of the wheel, i.e. directly in site-packages, and the shipped
    option files ``options/*.yml`` in the package as ``lwsr_plugin/recipes/``.

    ``site`` runs ``import`` lines of ``*.pth`` files found there at every interpreter start, which is the only way an
    unmodified ``basicsr/train.py`` (or a spawned DataLoader worker) gets the plugin without an import line. The
    option files stay in one place in the repository (``options/``, what the docs and the checkout use) and are copied
    into the package only here, at build time; an editable install, whose package is the checkout's folder, finds
    the checkout's ``options/`` beside it.
    """

    def _extra_files(self):
        """``(source, target in build_lib)`` of the files besides the packages' own."""
        return [(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH))] + \
            [(path, os.path.join(self.build_lib, RECIPES, os.path.basename(path)))
             for path in sorted(glob.glob(os.path.join(HERE, 'options', '*.yml')))]

    def run(self):
        super().run()
        shutil.rmtree(os.path.join(self.build_lib, RECIPES), ignore_errors=True)  # no file left from an older build
        for source, target in self._extra_files():
            self.mkpath(os.path.dirname(target))
            self.copy_file(source, target, preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [target for _, target in self._extra_files()]


CMDCLASS = {'build_py': build_py_with_pth}
try:  # pip install -e . builds an "editable wheel"; it must carry the .pth too
    from setuptools.command.editable_wheel import editable_wheel

    class _StrategyWithPth:

        def __init__(self, strategy):
            self.strategy = strategy

        def __call__(self, wheel, files, mapping):
            with open(os.path.join(HERE, PTH), encoding='utf-8') as f:
                wheel.writestr(PTH, f.read())
            return self.strategy(wheel, files, mapping)

        def __enter__(self):
            self.strategy.__enter__()
            return self

        def __exit__(self, *exc):
            return self.strategy.__exit__(*exc)

    class editable_wheel_with_pth(editable_wheel):

        def _select_strategy(self, *args, **kwargs):
            return _StrategyWithPth(super()._select_strategy(*args, **kwargs))

    CMDCLASS['editable_wheel'] = editable_wheel_with_pth
except ImportError:  # old setuptools: `setup.py develop` path, no editable wheels
    pass


def read_version():
    scope = {}
    with open(os.path.join(HERE, 'lwsr_plugin', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


SPANDREL = ['spandrel>=0.4.2']
DOCS = ['mkdocs>=1.6', 'mkdocs-material>=9.5', 'mkdocstrings>=0.26', 'mkdocstrings-python>=1.10']

setup(
    name='lwsr_plugin',
    version=read_version(),
    description='IDN, IMDN, DRN and s-LWSR lightweight super-resolution networks as a BasicSR 1.4.2 plugin',
    long_description=open(os.path.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['lwsr_plugin', 'lwsr_plugin.*']),
    py_modules=['_lwsr_plugin_startup'],
    include_package_data=True,
    install_requires=[
        'basicsr==1.4.2',
        'torch',
        'torchvision',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'numpy',
        'tb-nightly',
        'tqdm',
        'scikit-image',
        'safetensors',
        # the README's commands need these with the plain install (56 MB of wheels; torch alone installs 1.2 GB):
        # lwsr-reproduce and lwsr-report --plot draw with matplotlib; lwsr-export writes through onnx (torch's
        # TorchScript exporter, dynamo=False, needs no onnxscript) and checks with onnxruntime
        'matplotlib',
        'onnx',
        'onnxruntime',
    ],
    extras_require={
        # kept so that `pip install "lwsr_plugin[onnx]"` (named by lwsr-export's message and older instructions)
        # still installs what the command needs into an environment made without them (e.g. pip install --no-deps)
        'onnx': ['onnx', 'onnxruntime'],
        'report': ['matplotlib'],
        # lwsr_plugin.spandrel_arches: the plugin's archs in spandrel (chaiNNer and other front ends built on it)
        'spandrel': SPANDREL,
        # the documentation site (mkdocs.yml): `mkdocs serve`, `mkdocs build --strict` (CI)
        'docs': DOCS,
        # the test suite exercises the optional parts too, and CI builds the documentation
        'test': ['pytest', 'jsonschema>=4', *SPANDREL, *DOCS],
    },
    entry_points={
        'console_scripts': [
            'lwsr-train = lwsr_plugin.train:main',
            'lwsr-test = lwsr_plugin.test:main',
            'lwsr-demo = lwsr_plugin.cli.demo:main',
            'lwsr-prepare-div2k = lwsr_plugin.data.div2k:main',
            'lwsr-prepare-291 = lwsr_plugin.data.set291:main',
            'lwsr-prepare-benchmark = lwsr_plugin.data.benchmark:main',
            'lwsr-check-lmdb = lwsr_plugin.data.check_lmdb:main',
            'lwsr-convert-idn = lwsr_plugin.convert.caffe_idn:main',
            'lwsr-evaluate = lwsr_plugin.cli.evaluate:main',
            'lwsr-compare-runs = lwsr_plugin.cli.compare_runs:main',
            'lwsr-report = lwsr_plugin.cli.report:main',
            'lwsr-compare = lwsr_plugin.cli.compare:main',
            'lwsr-upscale = lwsr_plugin.cli.upscale:main',
            'lwsr-export = lwsr_plugin.cli.export:main',
            'lwsr-reproduce = lwsr_plugin.cli.reproduce:main',
            'lwsr-check-checkpoint = lwsr_plugin.cli.check_checkpoint:main',
            'lwsr-options = lwsr_plugin.cli.options:main',
        ],
    },
    cmdclass=CMDCLASS,
    zip_safe=False,
)
