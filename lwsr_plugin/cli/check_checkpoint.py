"""``lwsr-check-checkpoint FILE...``: check network files and training states without building a network.

For each file, one line: whether its integrity seal (the SHA-256 the plugin writes into every ``.pth``, ``.state`` and
``.safetensors`` it saves) matches its bytes, whether it is one of the official weight releases the docs point to
(known by SHA-256), and whether its contents read as a checkpoint (weights-only; tensors finite). Exit status 0 when
every file is usable, 1 when one is damaged or unreadable, 2 for a bad command line.

    lwsr-check-checkpoint experiments/my_run/models/*.pth experiments/my_run/training_states/*.state
"""
import argparse
import os
import sys


def build_parser():
    """The argument parser of ``lwsr-check-checkpoint`` (imports nothing heavy)."""
    p = argparse.ArgumentParser(prog='lwsr-check-checkpoint', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('files', nargs='+', metavar='FILE', help='.pth / .safetensors network files, .state training states, '
                   'official releases (.pth, .pt, .caffemodel)')
    return p


def check(path):
    """``(ok, line)`` for one file."""
    import torch

    from lwsr_plugin.data.manifest import release_note
    from lwsr_plugin.fileio import DamagedFileError, check_seal, read_state_dict
    if not os.path.isfile(path):
        return False, f'{path}: no such file'
    try:
        sealed = check_seal(path)
    except DamagedFileError as err:
        return False, str(err)
    note = release_note(path)
    if note and note[0] == 'warning':
        return False, note[1]
    parts = ['seal ok' if sealed else 'no seal (written elsewhere or by an older version)']
    if note:
        parts.append(note[1].split(': ', 1)[1])
    if path.endswith('.caffemodel'):
        return True, f'{path}: {", ".join(parts)}; convert it with lwsr-convert-idn'
    try:
        if path.endswith('.state'):
            state = torch.load(path, map_location='cpu', weights_only=True)
            parts.append(f'training state at iteration {state.get("iter")}')
        else:
            tensors, key = read_state_dict(path, None if path.endswith('.pt') else 'params')
            parts.append(f'{len(tensors)} tensors' + (f' under {key!r}' if key else ''))
    except Exception as err:  # noqa: BLE001  (every reader failure is the answer for this file)
        return False, f'{path}: unreadable: {str(err).splitlines()[0][:300] if str(err) else type(err).__name__}'
    return True, f'{path}: {", ".join(parts)}'


def main(argv=None):
    args = build_parser().parse_args(argv)
    bad = 0
    for path in args.files:
        ok, line = check(path)
        print(line, file=sys.stdout if ok else sys.stderr, flush=True)
        bad += not ok
    if len(args.files) > 1:
        print(f'lwsr-check-checkpoint: {len(args.files) - bad} of {len(args.files)} files usable')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
