"""The plugin's file I/O, free of side effects: importing it patches nothing and imports no BasicSR training code.

* **One temp-and-rename mechanism** for every file and folder the plugin writes (checkpoints, training states,
  safetensors, LMDBs, the in-memory cache, result images, reports, ONNX): :func:`temp_name` gives the sibling
  ``<path>.tmp-<pid>[-<tag>]@<host>[<suffix>]``, :func:`publish` renames a finished one into place (an existing
  folder is moved aside first and deleted only after the new one is in place), :func:`atomic_target` wraps both
  around a ``with`` block, and :func:`remove_stale_temps` deletes what killed writers left beside a path.
* **Checkpoints**: ``.pth`` written atomically (:func:`atomic_save`, :class:`CheckpointWriteError` on a full disk),
  ``.safetensors`` read and written (:func:`save_safetensors`), any network file read weights-only with its tensors
  checked (:func:`read_state_dict`), and whether a state dict fits a network (:func:`checkpoint_mismatch`,
  :func:`load_state_dict_checked`).
* **Integrity seals**: every checkpoint, training state and safetensors file written here carries the SHA-256 of its
  own bytes (:func:`seal`); reading verifies it (:func:`check_seal`), so a flipped byte is refused in one line.
"""
import contextlib
import hashlib
import os
import re
import shutil
import socket
import struct

# <base>.tmp-<pid>[-<tag>]@<host>[<suffix>] (and .old-: a folder moved aside). Earlier versions of the plugin wrote
# <base>.tmp-<pid>[<suffix>] / <base>.old-<pid> without a host, and <base>.tmp-<host>-<pid>-<8 hex> (the in-memory
# cache): a host name may hold '-', '.' and digits, so there the host is everything before the last two fields.
_TEMP_RE = re.compile(r'(?P<base>.+?)\.(?:tmp|old)-(?:(?P<pid>\d+)(?:-[0-9a-f]+)?(?:@(?P<rest>.+)|(?:\.[A-Za-z0-9]+)?)'
                      r'|(?P<host>[^@]+)-(?P<host_pid>\d+)-[0-9a-f]{8})')


def pid_alive(pid):
    """True while a process ``pid`` exists on this host (a temp file's writer may still be at work)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(path, suffix='', tag=''):
    """This process's temporary sibling of ``path``: ``<path>.tmp-<pid>[-<tag>]@<host><suffix>``. The host name keeps
    writers on two machines sharing a network folder apart; ``suffix`` keeps the extension a writer picks its format
    by; ``tag`` (hex) tells apart several temporaries of one process."""
    return f'{os.fspath(path)}.tmp-{os.getpid()}{"-" + tag if tag else ""}@{socket.gethostname()}{suffix}'


def _stale(match, own_host):
    """The writer of a temp/old name is dead: on this host (or of an older, host-less name) and not running."""
    rest, pid = match.group('rest'), match.group('pid')
    if pid is None:
        host, pid = match.group('host'), match.group('host_pid')
        if host != own_host:
            return False  # another machine's writer: only that machine can tell whether it is alive
    elif rest is not None and rest != own_host and not rest.startswith(own_host + '.'):
        return False
    return int(pid) != os.getpid() and not pid_alive(int(pid))


def remove_stale_temps(path, siblings=None):
    """Delete the leftovers of killed writers beside ``path``: ``<path>.tmp-...`` / ``<path>.old-...`` files and
    folders whose process no longer exists on this host. ``siblings`` (a name suffix such as ``'.lmdb'``, or ``''``
    for every name) also clears the leftovers of every other such output in the folder."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    host = socket.gethostname()
    for entry in entries:
        m = _TEMP_RE.fullmatch(entry)
        if m is None or not (m.group('base') == name or (siblings is not None and m.group('base').endswith(siblings))):
            continue
        if _stale(m, host):
            full = os.path.join(folder, entry)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(full)


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # a full disk can surface only here (delayed allocation), before the rename makes it final
    finally:
        os.close(fd)


def publish(tmp, final):
    """Rename the finished ``tmp`` to ``final``. A file replaces ``final`` in one step; an existing folder is moved
    aside first and deleted only after the new one is in place."""
    if os.path.isdir(final) and not os.path.islink(final):
        old = f'{final}.old-{os.getpid()}@{socket.gethostname()}'
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def remove_path(path):
    """Delete a file or folder if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def atomic_target(path, suffix='', fsync=True):
    """The temp-and-rename mechanism around a ``with`` block: yields :func:`temp_name` of ``path`` (``suffix`` keeps
    the extension a writer picks its format by) and, when the block completes, fsyncs it and publishes it as
    ``path``; on any error, or a kill, nothing half-written is ever under ``path`` and the temp file is removed (or,
    after a kill, by the next writer of ``path``)."""
    path = os.fspath(path)
    remove_stale_temps(path, siblings='')  # a killed save of any file here (a checkpoint, an image, ONNX) too
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        if fsync and os.path.isfile(tmp):
            fsync_file(tmp)
        publish(tmp, path)
    finally:
        if os.path.lexists(tmp):
            remove_path(tmp)


def write_text_atomic(path, text):
    """``text`` (UTF-8, newlines as given) to ``path`` through ``atomic_target``."""
    with atomic_target(path) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
        f.write(text)

# ------------------------------------------------------------------------------------------------ integrity seals
# Every checkpoint, training state and safetensors file the plugin writes carries the SHA-256 of its own bytes, so a
# flipped byte anywhere (bit rot, an interrupted copy, a bad disk) is refused on load instead of giving other
# weights. Zip files (torch.save: .pth, .state) keep it as the archive comment, which torch.load and BasicSR ignore;
# safetensors files as the metadata entry ``lwsr_sha256``. Files without a seal (official releases, files written
# by BasicSR or by older versions of the plugin) load as before.
SEAL_KEY = 'lwsr_sha256'
_SEAL_TAG = SEAL_KEY.encode() + b':'
_EOCD = b'PK\x05\x06'  # zip's end-of-central-directory record; its last field is the comment length
_PLACEHOLDER = '0' * 64


class DamagedFileError(ValueError):
    """A sealed file whose bytes no longer match its seal; the message names the file and what to do."""


def _sha256_of(path, skip=None, start=0, end=None):
    """SHA-256 of bytes ``start:end`` of ``path``, with the span ``skip`` = (offset, length) read as '0's."""
    digest = hashlib.sha256()
    with open(path, 'rb') as fh:
        fh.seek(start)
        pos, end = start, os.path.getsize(path) if end is None else end
        while pos < end:
            chunk = fh.read(min(1 << 22, end - pos))
            if not chunk:
                break
            if skip is not None and pos < skip[0] + skip[1] and skip[0] < pos + len(chunk):
                lo, hi = max(skip[0] - pos, 0), min(skip[0] + skip[1] - pos, len(chunk))
                chunk = chunk[:lo] + b'0' * (hi - lo) + chunk[hi:]
            digest.update(chunk)
            pos += len(chunk)
    return digest.hexdigest()


def _zip_seal_span(path):
    """``(comment offset, comment bytes)`` of a zip file's archive comment, or None when the file ends in no
    end-of-central-directory record that accounts for its last bytes."""
    size = os.path.getsize(path)
    with open(path, 'rb') as fh:
        fh.seek(max(size - (22 + len(_SEAL_TAG) + 64 + 16), 0))
        tail = fh.read()
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        return None
    length = struct.unpack('<H', tail[at + 20:at + 22])[0]
    if at + 22 + length != len(tail):
        return None
    return size - length, tail[at + 22:]


def _safetensors_seal_span(path):
    """``(offset of the seal's hex digest, digest, key)`` in a safetensors header, or None for a file without one. A
    metadata key one character away from the seal's is returned too (``key`` then differs): a flipped byte there must
    not make a sealed file look unsealed."""
    import json
    with open(path, 'rb') as fh:
        head = fh.read(8)
        n = struct.unpack('<Q', head)[0] if len(head) == 8 else 0
        header = fh.read(min(n, 1 << 24))
    try:
        metadata = json.loads(header).get('__metadata__') or {}
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None  # not a safetensors header: the loader refuses the file
    for key, value in metadata.items():
        if key == SEAL_KEY or (len(key) == len(SEAL_KEY) and sum(a != b for a, b in zip(key, SEAL_KEY)) == 1):
            at = header.find(json.dumps({key: value}, separators=(',', ':'))[1:-1].encode())
            start = at + len(f'"{key}":"'.encode()) if at >= 0 else -1
            return 8 + start, str(value), key
    return None


def seal(path):
    """Write the SHA-256 of ``path``'s bytes into it: a zip file (``torch.save``) gets it as its archive comment; a
    safetensors file written with ``{SEAL_KEY: '0' * 64}`` in its metadata gets the placeholder filled in (the same
    length, so no offset moves). Called on the temporary file, before it is renamed into place."""
    if str(path).endswith('.safetensors') or _zip_seal_span(path) is None:
        span = _safetensors_seal_span(path)
        if span is None or span[1] != _PLACEHOLDER or span[0] < 8:
            raise ValueError(f'{path}: neither a zip file nor a safetensors file with a seal placeholder')
        digest = _sha256_of(path, skip=(span[0], 64))
        with open(path, 'r+b') as fh:
            fh.seek(span[0])
            fh.write(digest.encode())
        return digest
    offset, comment = _zip_seal_span(path)
    if comment:
        raise ValueError(f'{path}: the zip file already has a comment')
    length = len(_SEAL_TAG) + 64
    with open(path, 'r+b') as fh:
        fh.seek(offset - 2)
        fh.write(struct.pack('<H', length))
    digest = _sha256_of(path)
    with open(path, 'ab') as fh:
        fh.write(_SEAL_TAG + digest.encode())
    return digest


def check_seal(path):
    """True when ``path`` carries a seal that matches its bytes, False when it has none (official releases, older
    files); :class:`DamagedFileError` (one line) when the seal does not match or is itself damaged."""
    span = _zip_seal_span(path)
    if span is not None:
        offset, comment = span
        if not comment:
            return False  # torch.save writes no archive comment: an unsealed zip
        # any other comment is a seal hit by a flipped byte: torch.save never writes one
        if comment.startswith(_SEAL_TAG) and _sha256_of(path, end=offset) == comment[len(_SEAL_TAG):].decode('latin-1'):
            return True
    else:
        found = _safetensors_seal_span(path)
        if found is None and not _damaged_seal_tail(path):
            return False
        if found is not None and found[2] == SEAL_KEY and found[0] >= 8 and \
                _sha256_of(path, skip=(found[0], 64)) == found[1]:
            return True
    raise DamagedFileError(f'{path}: damaged: its bytes no longer match the SHA-256 written into it when it was saved '
                           '(bit rot, an interrupted copy or a bad disk). Use another copy, or an earlier checkpoint '
                           'of the same run.')


def _damaged_seal_tail(path):
    """The file ends in what looks like a zip seal whose record no longer parses (e.g. its length field was hit)."""
    size = os.path.getsize(path)
    with open(path, 'rb') as fh:
        fh.seek(max(size - 200, 0))
        return _SEAL_TAG in fh.read()


class CheckpointWriteError(SystemExit):
    """A checkpoint that could not be written (disk full, quota, I/O error). A ``SystemExit`` because BasicSR's save
    loop catches ``Exception``, logs "Just ignore it" and trains on without checkpoints; this stops the run."""



def _write_failure(path, err):
    try:
        free = f'{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.0f} MiB free there'
    except OSError:
        free = 'free space unknown'
    cause = ' '.join(str(err).split())[:160]
    return CheckpointWriteError(
        f'lwsr_plugin: cannot write {path} ({type(err).__name__}: {cause}; {free}): stopped rather than train on '
        'without checkpoints. The previous complete file is kept; free disk space (or set path.root on another disk) '
        'and continue with --auto_resume.')



def atomic_save(obj, f, *args, **kwargs):
    """``torch.save`` to a temp file, sealed (:func:`seal`) and renamed into place: a process killed while saving never
    leaves a truncated file under the final name, and the leftovers of killed saves beside it are removed. A failed
    write (full disk) raises ``CheckpointWriteError`` (one line); the previous file under the final name stays as it
    was."""
    import torch
    if not isinstance(f, (str, os.PathLike)):
        return torch.save(obj, f, *args, **kwargs)
    f = os.fspath(f)
    try:
        with atomic_target(f) as tmp:
            torch.save(obj, tmp, *args, **kwargs)
            seal(tmp)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports ENOSPC as RuntimeError('unexpected pos')
        raise _write_failure(f, err) from None



def require_safetensors(option):
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise SystemExit(f'lwsr_plugin: {option} needs the safetensors package: pip install safetensors') from None


def _safetensors_complete(path):
    """True when the file holds as many bytes as its header says (a write to a full device can report success)."""
    import json
    import struct
    size = os.path.getsize(path)
    with open(path, 'rb') as fh:
        head = fh.read(8)
        n = struct.unpack('<Q', head)[0] if len(head) == 8 else size
        if n > size - 8:
            return False
        header = json.loads(fh.read(n))
    end = max((v['data_offsets'][1] for k, v in header.items() if k != '__metadata__'), default=0)
    return size == 8 + n + end


def save_safetensors(tensors, path, metadata=None):
    """``safetensors.torch.save_file`` to a temp name, sealed (:func:`seal`) and renamed into place (never a truncated
    file under ``path``); a failed write raises ``CheckpointWriteError`` as ``atomic_save`` does."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    path = os.fspath(path)
    try:
        with atomic_target(path, fsync=False) as tmp:  # fsynced below, before the completeness check
            save_file(tensors, tmp, metadata={**{k: str(v) for k, v in (metadata or {}).items()},
                                              SEAL_KEY: _PLACEHOLDER})
            seal(tmp)
            fsync_file(tmp)
            if not _safetensors_complete(tmp):
                raise OSError(28, 'the file is shorter than its header says (No space left on device?)')
    except (OSError, SafetensorError) as err:  # SafetensorError carries the OS error as text
        raise _write_failure(path, err) from None


def _read_safetensors(load_path, param_key):
    """A plugin ``.safetensors`` checkpoint (keys ``params.<name>``, ``params_ema.<name>``) or a plain one."""
    require_safetensors(f'reading {load_path}')
    from safetensors.torch import load_file
    try:
        flat = load_file(load_path, device='cpu')
    except Exception as err:  # SafetensorError, or what a mangled header makes the loader raise
        raise ValueError(f'{load_path}: not a readable .safetensors file ({_one_line(err)}); the file is damaged or '
                         'of another format. Give a BasicSR .pth / .safetensors network file.') from None
    groups = {}
    for key, value in flat.items():
        prefix, _, name = key.partition('.')
        groups.setdefault(prefix, {})[name] = value
    if groups and set(groups) <= {'params', 'params_ema'}:
        key = param_key if param_key in groups else 'params' if 'params' in groups else 'params_ema'
        return groups[key], key
    return flat, None  # a plain state dict saved by someone else


def _one_line(err, limit=160):
    """``Type: first meaningful line`` of a loader's error; torch's weights-only refusal buries the cause (e.g.
    ``Unsupported global: GLOBAL posix.system``) after a paragraph of advice."""
    import re
    text = re.sub(r'Weights only load failed\..*?trusted source\.', '', str(err), flags=re.S)
    text = re.sub(r'Please file an issue.*?WeightsUnpickler error:', '', text, flags=re.S)
    text = re.sub(r'Check the documentation of torch\.load.*', '', text, flags=re.S)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), '') or str(err).strip()[:limit]
    return f'{type(err).__name__}: {line[:limit]}'


def _check_tensors(load_path, state):
    """The loaded object must be a flat {name: tensor} dict of finite values (a diverged run saves NaN weights that
    would silently give black images or NaN losses)."""
    import torch
    if not isinstance(state, dict) or not state:
        raise ValueError(f'{load_path}: holds {type(state).__name__ if state is not None else "nothing"}, not a '
                         'state dict of tensors. Give a BasicSR .pth / .safetensors network file.')
    for name, value in state.items():
        if not isinstance(name, str) or not torch.is_tensor(value):
            raise ValueError(f'{load_path}: entry {str(name)[:60]!r} is a {type(value).__name__}, not a tensor: not a '
                             'network checkpoint. Give a BasicSR .pth / .safetensors network file.')
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(f'{load_path}: {name} holds {bad} NaN/Inf values of {value.numel()}; the run that '
                                 'saved it had diverged. Use an earlier checkpoint of that run (saved before its loss '
                                 'became NaN).')


def read_state_dict(load_path, param_key='params'):
    """The state dict in a checkpoint: under ``param_key`` (BasicSR's files), ``params``, or the root of a plain state
    dict (official releases); ``module.`` prefixes stripped. ``.pth`` files are read weights-only whatever
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says (an explicit ``weights_only=True`` wins over it: no code in a pickle
    runs); ``.safetensors`` files as the plugin writes them. A sealed file is checked against its seal first. Damaged
    files, non-tensor contents and NaN/Inf weights raise ValueError with one line. Returns (state_dict, key used)."""
    import torch
    if os.path.isfile(load_path):
        check_seal(load_path)
    if str(load_path).endswith('.safetensors'):
        load_net, param_key = _read_safetensors(load_path, param_key)
    else:
        try:
            load_net = torch.load(load_path, map_location='cpu', weights_only=True)
        except Exception as err:
            raise ValueError(f'{load_path}: not a readable weights-only checkpoint ({_one_line(err)}); nothing in it '
                             'was run. Give a BasicSR .pth / .safetensors network file.') from None
        if param_key is not None and isinstance(load_net, dict):
            if param_key in load_net:
                load_net = load_net[param_key]
            elif 'params' in load_net:
                param_key, load_net = 'params', load_net['params']
            elif load_net and all(torch.is_tensor(v) for v in load_net.values()):
                param_key = None
            else:
                raise KeyError(f'{load_path} has no {param_key!r} entry (keys: {list(load_net)[:5]}). Set param_key_g '
                               'to one of its keys, or to ~ for a plain state dict.')
    _check_tensors(load_path, load_net)
    return {(k[7:] if k.startswith('module.') else k): v for k, v in load_net.items()}, param_key


def checkpoint_mismatch(own, loaded):
    """'' if ``loaded`` fits the state dict ``own`` exactly, else what differs (shapes first)."""
    bad = [f'{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}' for k, v in loaded.items()
           if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(loaded) - set(own))
    return '; '.join(bad[:3] + [f'missing {missing[:3]}'] * bool(missing) +
                     [f'unexpected {unexpected[:3]}'] * bool(unexpected))


def mismatch_message(label, load_path, net, details):
    return (f'{label}: {load_path} does not fit network_g ({type(net).__name__}): {details}. Pick the checkpoint '
            'made for this arch and scale (e.g. IMDN_x4.pth for upscale: 4), or set strict_load_g: false to load '
            'only the matching layers (fine-tuning across scales).')


def load_state_dict_checked(net, state_dict, strict, label, load_path, assign=False):
    """``net.load_state_dict`` whose failure names the option, what differs, and the fix. The arch's own loading
    hooks run (e.g. s-LWSR's mean shift consumes its extra keys), so strictness is torch's own."""
    try:
        net.load_state_dict(state_dict, strict=strict, assign=assign)
    except RuntimeError as err:
        details = checkpoint_mismatch(net.state_dict(), state_dict) or str(err).split('\n')[0]
        raise ValueError(mismatch_message(label, load_path, net, details)) from None


def all_finite(net):
    """True when every floating-point parameter and buffer of ``net`` is finite."""
    import torch
    return all(bool(torch.isfinite(t).all()) for t in list(net.parameters()) + list(net.buffers())
               if t.is_floating_point())
