#!/usr/bin/env python
"""Install lwsr_plugin: the package, its console commands and the start-up hook (see _lwsr_plugin_startup.py)."""
import os
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = 'lwsr_plugin_startup.pth'


class build_py_with_pth(build_py):
    """Also place the start-up ``.pth`` at the root of the wheel, i.e. directly in site-packages.

    ``site`` runs ``import`` lines of ``*.pth`` files found there at every interpreter start, which is the only way an
    unmodified ``basicsr/train.py`` (or a spawned DataLoader worker) gets the plugin without an import line.
    """

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, PTH)
        self.mkpath(self.build_lib)
        self.copy_file(os.path.join(HERE, PTH), target, preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


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
    ],
    extras_require={
        'onnx': ['onnx', 'onnxruntime'],
        'report': ['matplotlib'],
        'test': ['pytest', 'onnx', 'onnxruntime', 'matplotlib'],
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
            'lwsr-report = lwsr_plugin.cli.report:main',
            'lwsr-compare = lwsr_plugin.cli.compare:main',
            'lwsr-upscale = lwsr_plugin.cli.upscale:main',
            'lwsr-export = lwsr_plugin.cli.export:main',
            'lwsr-reproduce = lwsr_plugin.cli.reproduce:main',
        ],
    },
    cmdclass=CMDCLASS,
    zip_safe=False,
)
