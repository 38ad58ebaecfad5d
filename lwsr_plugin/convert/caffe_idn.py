"""Official IDN Caffe weights (``IDN_x{2,3,4}.caffemodel``, Zheng222/IDN-Caffe) -> BasicSR ``.pth`` for
:class:`lwsr_plugin.archs.idn_arch.IDN`, without Caffe or the protobuf package.

A ``.caffemodel`` is a serialised ``caffe.NetParameter``. Only a handful of fields are needed, read straight from the
protobuf wire format: NetParameter ``layer`` (100; legacy V1 ``layers`` = 2), LayerParameter ``name`` (1), ``type`` (2),
``blobs`` (7), ``convolution_param`` (106, ``stride`` = 6); V1LayerParameter ``name`` (4), ``blobs`` (6),
``convolution_param`` (10); BlobProto ``shape`` (7, BlobShape ``dim`` = 1), ``data`` (5, float32), ``double_data`` (8)
and the legacy ``num/channels/height/width`` (1-4).

Caffe layer names of the release: ``conv1``, ``conv2`` (FBlock, §3.1), ``conv{3..6}_{1..6}`` + ``down{1..4}`` (the four
DBlocks: enhancement unit convs, compression unit; §3.2-3.3) and ``upsample`` (RBlock deconvolution). Blob layouts
equal torch's (Conv2d ``(out, in/groups, k, k)``, ConvTranspose2d ``(in, out, k, k)``), so values copy bit-exactly.

``lwsr-convert-idn`` imports this module before parsing its arguments, so NumPy and torch (and, through the IDN
arch and ``atomic_save``, BasicSR) are imported in the functions that use them: ``--help`` stays instant.
"""
import argparse
import os
import sys
from collections import OrderedDict


class CaffeModelError(ValueError):
    """The file is not a readable .caffemodel, or not the IDN network."""


# ----------------------------------------------------------------------------------------------- protobuf wire format
def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CaffeModelError('unexpected end of data inside a varint (file truncated?)')
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeModelError('malformed varint (not a protobuf file?)')


def _fields(buf):
    """Yield ``(field_number, wire_type, value)`` of one message; value = int or a memoryview of the payload."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise CaffeModelError('field number 0 (not a protobuf file?)')
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise CaffeModelError(f'unsupported wire type {wire} (not a protobuf file?)')
        if pos > end:
            raise CaffeModelError('a field runs past the end of the data (file truncated?)')
        yield field, wire, value


def _packed_varints(value, wire):
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _blob(buf):
    import numpy as np
    shape, legacy, data = None, {}, []
    for field, wire, value in _fields(buf):
        if field == 7:  # BlobShape
            shape = [d for f, w, v in _fields(value) if f == 1 for d in _packed_varints(v, w)]
        elif field in (1, 2, 3, 4) and wire == 0:
            legacy[field] = value
        elif field in (5, 8):
            width = 4 if field == 5 else 8
            if wire not in (1, 2, 5) or len(value) % width:
                raise CaffeModelError(f'blob data of {len(value)} bytes is not a whole number of '
                                      f'{width}-byte floats (file damaged?)')
            # packed (wire 2) or one fixed value (wire 5 / 1)
            data.append(np.frombuffer(bytes(value), '<f4' if width == 4 else '<f8').astype(np.float32))
    if shape is None:
        shape = [legacy.get(i, 1) for i in (1, 2, 3, 4)]
    arr = np.concatenate(data) if data else np.zeros(0, np.float32)
    expected = 1
    for d in shape:  # Python ints: a corrupt dim must not overflow NumPy's int64 product into a match
        expected *= d
    if arr.size != expected or len(shape) > 8:
        raise CaffeModelError(f'blob has {arr.size} values for shape {shape[:8]} (file truncated?)')
    return arr.reshape(shape)


def _conv_stride(buf):
    strides = [s for f, w, v in _fields(buf) if f == 6 for s in _packed_varints(v, w)]
    return strides[0] if strides else 1


def read_caffemodel(path):
    """Parse a ``.caffemodel``: ordered ``{layer name: {'type': str|int, 'blobs': [ndarray], 'stride': int}}`` for
    every layer (V2 or legacy V1) that carries parameters."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such .caffemodel file.')
    with open(path, 'rb') as f:
        buf = memoryview(f.read())
    if len(buf) == 0:
        raise CaffeModelError(f'{path}: empty file. Download the .caffemodel again.')
    layers = OrderedDict()
    try:
        for field, wire, value in _fields(buf):
            if wire != 2 or field not in (100, 2):
                continue
            v1 = field == 2
            name_f, type_f, blob_f, conv_f = (4, 5, 6, 10) if v1 else (1, 2, 7, 106)
            name, ltype, blobs, stride = None, None, [], 1
            for f, w, v in _fields(value):
                if f == name_f and w == 2:
                    name = bytes(v).decode('utf-8', 'replace')
                elif f == type_f:
                    ltype = v if w == 0 else bytes(v).decode('utf-8', 'replace')
                elif f == blob_f and w == 2:
                    blobs.append(_blob(v))
                elif f == conv_f and w == 2:
                    stride = _conv_stride(v)
            if blobs:
                layers[name] = {'type': ltype, 'blobs': blobs, 'stride': stride}
    except CaffeModelError as err:
        raise CaffeModelError(f'{path}: cannot parse as a .caffemodel: {err}. Download the file again.') from None
    except (ValueError, TypeError, OverflowError, MemoryError) as err:  # NumPy on a damaged blob
        raise CaffeModelError(f'{path}: cannot parse as a .caffemodel: damaged blob ({type(err).__name__}: '
                              f'{str(err)[:120]}). Download the file again.') from None
    if not layers:
        raise CaffeModelError(f'{path}: no layer with weights found: not a .caffemodel (or an empty net).')
    return layers


# ----------------------------------------------------------------------------------------------------- IDN mapping
def idn_key_map(num_block=4):
    """Caffe layer name -> plugin IDN parameter prefix."""
    mapping = OrderedDict([('conv1', 'fblock.0'), ('conv2', 'fblock.2')])
    for b in range(num_block):
        for i in range(6):
            chain, idx = ('upper', 2 * i) if i < 3 else ('lower', 2 * (i - 3))
            mapping[f'conv{b + 3}_{i + 1}'] = f'dblocks.{b}.{chain}.{idx}'
        mapping[f'down{b + 1}'] = f'dblocks.{b}.compress.0'
    mapping['upsample'] = 'rblock'
    return mapping


def convert_idn_caffemodel(path, scale=None):
    """Read an official IDN ``.caffemodel`` and return ``(state_dict, network_g_kwargs)`` for the plugin's IDN.

    Args:
        path (str): The ``.caffemodel``.
        scale (int | None): Expected scale; checked against the deconvolution stride stored in the file.

    Raises:
        CaffeModelError: unreadable/truncated file, or a network that is not IDN (missing or extra layers, wrong
            shapes).
    """
    layers = read_caffemodel(path)
    if 'upsample' not in layers or 'conv1' not in layers:
        raise CaffeModelError(f'{path}: not an IDN caffemodel: layers {list(layers)[:8]}... lack conv1/upsample.')
    num_block = sum(1 for n in layers if n.startswith('down'))
    mapping = idn_key_map(num_block)
    missing = [n for n in mapping if n not in layers]
    extra = [n for n in layers if n not in mapping]
    if missing or extra or num_block < 1 or len(layers['conv1']['blobs'][0].shape) != 4 or \
            len(layers['upsample']['blobs'][0].shape) != 4:
        raise CaffeModelError(f'{path}: not an IDN caffemodel: missing layers {missing}, unexpected layers {extra}.')
    stride = layers['upsample']['stride']
    if scale is not None and int(scale) != stride:
        raise CaffeModelError(f'{path}: the file is an x{stride} model (deconvolution stride), not x{scale}.')
    w_in = layers['conv1']['blobs'][0]
    deconv = layers['upsample']['blobs'][0]
    kwargs = dict(num_in_ch=int(w_in.shape[1]), num_out_ch=int(deconv.shape[1]), num_feat=int(w_in.shape[0]),
                  num_block=num_block, upscale=int(stride), deconv_kernel=int(deconv.shape[-1]))
    import numpy as np
    import torch  # only now: a missing or foreign file is reported without waiting for torch
    state = OrderedDict()
    for cname, prefix in mapping.items():
        blobs = layers[cname]['blobs']
        if len(blobs) != 2:
            raise CaffeModelError(f'{path}: layer {cname} has {len(blobs)} blobs, expected weight and bias.')
        bad = sum(int((~np.isfinite(b)).sum()) for b in blobs)
        if bad:
            raise CaffeModelError(f'{path}: layer {cname} holds {bad} NaN/Inf values: the file is damaged. Download '
                                  'the official .caffemodel again.')
        state[f'{prefix}.weight'] = torch.from_numpy(np.ascontiguousarray(blobs[0], dtype=np.float32))
        state[f'{prefix}.bias'] = torch.from_numpy(np.ascontiguousarray(blobs[1], dtype=np.float32).reshape(-1))
    _check_against_arch(path, state, kwargs)
    return state, kwargs


def _check_against_arch(path, state, kwargs):
    from ..archs.idn_arch import IDN
    try:
        reference = IDN(**kwargs).state_dict()
    except (ValueError, TypeError, RuntimeError) as err:  # sizes read from a damaged file can be nonsense
        raise CaffeModelError(f'{path}: not an IDN caffemodel: {err}') from None
    bad = [f'{k}: {tuple(v.shape)} vs {tuple(reference[k].shape)}' for k, v in state.items()
           if tuple(v.shape) != tuple(reference[k].shape)]
    if bad:
        raise CaffeModelError(f'{path}: not an IDN caffemodel (shape mismatch): ' + '; '.join(bad[:5]))


def save_basicsr_pth(state, out_path):
    """Write ``{'params': state}``, what BasicSR's ``load_network`` (``param_key_g: params``) reads."""
    from lwsr_plugin.fileio import atomic_save
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_save({'params': state}, out_path)  # never a half-written .pth under the final name
    return out_path


def same_file(a, b):
    """True when path ``b`` is, or resolves to (symlink, ``..``, hard link), the file ``a``."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: they cannot be the same file
        return False


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official IDN .caffemodel into a BasicSR .pth (params key) for the plugin IDN.')
    parser.add_argument('caffemodel', help='IDN_x{2,3,4}.caffemodel')
    parser.add_argument('output', help='output .pth (BasicSR format, key "params")')
    parser.add_argument('--scale', type=int, default=None, help='expected scale (checked against the file)')
    return parser.parse_args(argv)


def main(argv=None):
    """Console command ``lwsr-convert-idn``; returns the exit status (1 for a file that is not an IDN model)."""
    args = parse_args(argv)
    if same_file(args.caffemodel, args.output):
        print(f'error: output {args.output} is the input {args.caffemodel}; writing it would destroy the input. '
              'Give another output name (e.g. IDN_x4.pth).', file=sys.stderr)
        return 2
    try:
        state, kwargs = convert_idn_caffemodel(args.caffemodel, args.scale)
    except (CaffeModelError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    try:
        save_basicsr_pth(state, args.output)
    except OSError as err:  # e.g. the output folder cannot be created
        print(f'error: cannot write {args.output} ({err.strerror or err}). Choose a writable output path.',
              file=sys.stderr)
        return 2
    except SystemExit as err:  # fileio.CheckpointWriteError: disk full while writing
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'wrote {args.output}: {sum(v.numel() for v in state.values()):,} parameters, network_g: '
          f'{{type: IDN, upscale: {kwargs["upscale"]}}}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
