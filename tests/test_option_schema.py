"""The option-file schema (``lwsr-options schema``, made from the registries in a fresh process): every shipped option
file starts with the line naming it and validates, under draft 2020-12 and under the draft-07 rules editors apply;
misspelt keys, a wrong arch type and a wrong arch argument fail naming them; a user arch from ``--user-modules`` joins
it; the plugin keys in it are the definition in ``lwsr_plugin.options.keys``, which the run-time checks read (they
accept and refuse the same values); ``copy`` writes it beside the copied file."""
import ast
import glob
import json
import os

import jsonschema
import pytest
import yaml

from _utils import PY, run
from conftest import REPO

from lwsr_plugin.cli.options import FILE_NAME, MODELINE
from lwsr_plugin.options import keys
from lwsr_plugin.options.schema import TRAIN, VAL, problems

SHIPPED = sorted(glob.glob(os.path.join(REPO, 'options', '*.yml')))
IMDN = os.path.join(REPO, 'options', 'train_IMDN_x4.yml')
TINY_ARCH = '''
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class TinySchemaNet(nn.Module):
    def __init__(self, num_feat=16, upscale=4, act='relu'):
        super().__init__()
        self.conv = nn.Conv2d(3, 3 * upscale ** 2, 3, 1, 1)
'''


def _schema(cwd, *args):
    """The schema that ``lwsr-options schema`` writes in a fresh interpreter (no LWSR_USER_MODULES)."""
    out = os.path.join(cwd, 'out.schema.json')
    run([PY, '-m', 'lwsr_plugin.cli.options', 'schema', '-o', out, *args], cwd=str(cwd), env={'LWSR_USER_MODULES': ''})
    with open(out, encoding='utf-8') as f:
        return json.load(f)


@pytest.fixture(scope='module')
def schema(tmp_path_factory):
    return _schema(tmp_path_factory.mktemp('schema'))


def _imdn():
    with open(IMDN, encoding='utf-8') as f:
        return yaml.safe_load(f)


def _node(schema, section):
    """The ``properties`` of a plugin key section in the schema."""
    if section == 'datasets.*':
        return schema['$defs']['dataset']['properties']
    node = schema
    for part in [p for p in section.split('.') if p]:
        node = node['properties'][part]
    return node['properties']


def test_every_shipped_file_names_the_schema_and_validates(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft7Validator.check_schema(schema)  # what the YAML language server applies
    draft7 = jsonschema.Draft7Validator(schema)
    assert len(SHIPPED) > 40
    for path in SHIPPED:
        with open(path, encoding='utf-8') as f:
            assert f.readline().rstrip('\n') == MODELINE, path
            opt = yaml.safe_load(f)
        assert problems(opt, schema) == [], path
        assert [e.message for e in draft7.iter_errors(opt)] == [], path


@pytest.mark.parametrize('change, where, name', [
    (lambda o: o.__setitem__('netwrok_g', o.pop('network_g')), '(top level)', 'netwrok_g'),
    (lambda o: o['datasets']['train'].__setitem__('batch_size_per_gpus', 16), 'datasets.train', 'batch_size_per_gpus'),
    (lambda o: o['network_g'].__setitem__('type', 'IMDNN'), 'network_g.type', 'IMDNN'),
    (lambda o: o['network_g'].__setitem__('num_blocks', 6), 'network_g', 'num_blocks'),
    (lambda o: o['network_g'].__setitem__('num_feat', 'wide'), 'network_g.num_feat', 'wide'),
    (lambda o: o['train']['pixel_opt'].__setitem__('reductio', 'mean'), 'train.pixel_opt', 'reductio'),
    (lambda o: o['train']['optim_g'].__setitem__('weight_decy', 0), 'train.optim_g', 'weight_decy'),
    (lambda o: o['val']['metrics']['psnr'].__setitem__('test_y_chanel', True), 'val.metrics.psnr', 'test_y_chanel'),
    (lambda o: o['train'].__setitem__('ampp', 'bf16'), 'train', 'ampp'),
    (lambda o: o['logger'].__setitem__('save_formt', 'pth'), 'logger', 'save_formt'),
    (lambda o: o.__setitem__('model_type', 'SRModel'), 'train', 'amp'),  # SRModel does not read train.amp
])
def test_a_wrong_key_or_value_fails_naming_it(schema, change, where, name):
    opt = _imdn()
    change(opt)
    found = problems(opt, schema)
    assert len(found) == 1 and found[0].startswith(f'{where}: ') and repr(name) in found[0], found


def test_a_user_arch_from_user_modules_joins_the_schema(schema, tmp_path):
    (tmp_path / 'tiny_schema_arch.py').write_text(TINY_ARCH)
    mine = _schema(tmp_path, '--user-modules', 'tiny_schema_arch.py')
    names = mine['$defs']['network']['properties']['type']['enum']
    assert 'TinySchemaNet' in names and 'IMDN' in names
    assert 'TinySchemaNet' not in schema['$defs']['network']['properties']['type']['enum']
    opt = _imdn()
    opt['network_g'] = {'type': 'TinySchemaNet', 'num_feat': 8, 'upscale': 4}
    assert problems(opt, mine) == []
    opt['network_g']['num_feats'] = 8
    assert problems(opt, mine) == ["network_g: Additional properties are not allowed ('num_feats' was unexpected)"]


def test_the_plugin_keys_in_the_schema_are_the_definition(schema):
    for k in keys.KEYS:
        node = _node(schema, k.section)[k.name]
        assert node['description'] == k.description and node.get('default', keys.UNSET) == k.default, k.path
        fragment = {'allOf': [k.schema]} if '$ref' in k.schema else k.schema
        assert {name: node[name] for name in fragment} == fragment, k.path
    # nothing else: the sections hold BasicSR's keys and the plugin's, and a plugin model's train/val exactly those
    assert set(_node(schema, 'train')) == set(TRAIN) | {k.name for k in keys.under('train')}
    assert set(_node(schema, 'val')) == set(VAL) | {k.name for k in keys.under('val')}
    for model, plugin in (('LWSRModel', True), ('SRModel', False)):
        branch = next(b['then']['properties'] for b in schema['allOf']
                      if model in b['if'].get('properties', {}).get('model_type', {}).get('enum', []))
        for section, basicsr_keys in (('train', TRAIN), ('val', VAL)):
            own = {k.name for k in keys.under(section) if k.models == keys.PLUGIN_MODELS}
            assert set(branch[section]['properties']) == set(basicsr_keys) | (own if plugin else set()), model


def _accepts(node, value):
    return jsonschema.Draft202012Validator(node).is_valid(value)


def test_the_run_time_accepts_and_refuses_what_the_schema_does(schema):
    from lwsr_plugin.models import training_options as to

    probes = ['BF16', 'Auto', 'False', 'OFF', 'Default', 'max-autotune', 'fp8', 'fastest', 'image', 'Image', 'stop',
              'ignore', 'safetensors', 'PTH', '', True, False, None, 0, 1, 0.0, [], {}]
    for k in keys.KEYS:
        if not k.spellings:
            continue
        node = _node(schema, k.section)[k.name]
        for value in probes + [s for s, _ in k.spellings]:
            try:
                keys.parse(k.path, value)
                parsed = True
            except ValueError:
                parsed = False
            assert _accepts(node, value) == parsed, (k.path, value)
    for value in probes:
        for path, parse in (('train.amp', to._normalise_amp), ('train.compile', to._normalise_compile)):
            try:
                parse(value)
                parsed = True
            except to.TrainingOptionError:
                parsed = False
            assert parsed == _accepts(_node(schema, 'train')[path.split('.')[1]], value), (path, value)


def test_a_bad_value_is_refused_with_the_values_the_schema_lists(schema):
    from lwsr_plugin.models.lwsr_model import SAVE_FORMATS
    from lwsr_plugin.models.training_options import COMPILE_MODES, TrainingOptionError, _normalise_compile
    from lwsr_plugin.options import OptionError
    from lwsr_plugin.options.checks import _check_datasets

    opt = _imdn()
    opt['train']['compile'] = 'fastest'
    assert problems(opt, schema) == ["train.compile: 'fastest' is not valid under any of the given schemas"]
    with pytest.raises(TrainingOptionError) as err:
        _normalise_compile('fastest')
    listed = ast.literal_eval(str(err.value).split('one of ')[1].rstrip('.'))
    documented = [v for v in _node(schema, 'train')['compile']['anyOf'][0]['enum'] if isinstance(v, str)]
    assert listed == documented == list(COMPILE_MODES) == [v for v in keys.allowed('train.compile') if v]

    bad = {'scale': 4, 'datasets': {'val': {'name': 'Set5', 'type': 'PairedImageDataset', 'on_corrupt': 'ignore'}}}
    with pytest.raises(OptionError) as err:
        _check_datasets(bad, REPO, 'test')
    enum = _node(schema, 'datasets.*')['on_corrupt']['enum']
    assert str(err.value).startswith("datasets.val.on_corrupt: 'ignore' is not `stop` or `skip`") and \
        enum == ['stop', 'skip']
    assert list(SAVE_FORMATS) == _node(schema, 'logger')['save_format']['anyOf'][0]['enum']


def test_copy_writes_the_schema_beside_the_file_and_keeps_one_there(tmp_path, monkeypatch, capsys):
    from lwsr_plugin.cli import options as command
    monkeypatch.chdir(tmp_path)
    assert command.main(['copy', 'train_IMDN_x4']) == 0
    out = capsys.readouterr().out
    written = tmp_path / FILE_NAME
    assert f'wrote {FILE_NAME} (the schema its first line names' in out
    mine = json.loads(written.read_text())
    assert 'IMDN' in mine['$defs']['network']['properties']['type']['enum']
    with open(tmp_path / 'train_IMDN_x4.yml', encoding='utf-8') as f:
        assert problems(yaml.safe_load(f), mine) == []
    written.write_text('{"mine": true}\n')  # e.g. made with --user-modules: a second copy keeps it
    assert command.main(['copy', 'test_IMDN_x4']) == 0
    assert 'kept the existing' in capsys.readouterr().out and json.loads(written.read_text()) == {'mine': True}
    assert command.main(['copy', 'test_IMDN_x4', '--overwrite']) == 0
    assert json.loads(written.read_text()) == mine
    assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]


def test_schema_command_refuses_bad_input_in_one_line(tmp_path):
    proc = run([PY, '-m', 'lwsr_plugin.cli.options', 'schema', '-o', str(tmp_path / 'no' / 'x.json')],
               cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and len(proc.stdout.strip().splitlines()) == 1 and 'does not exist' in proc.stdout
    proc = run([PY, '-m', 'lwsr_plugin.cli.options', 'schema', '--user-modules', './nothing_here'],
               cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and len(proc.stdout.strip().splitlines()) == 1 and './nothing_here' in proc.stdout
