"""Atomic writing of BasicSR-format LMDBs and folders, and reading of ``meta_info.txt``.

The format is BasicSR's (``basicsr.utils.lmdb_util``): PNG bytes under ``<key>`` in ``data.mdb``, and one
``<key>.png (<h>,<w>,<c>) <compress_level>`` line per record in ``meta_info.txt``, so ``PairedImageDataset`` with
``io_backend: {type: lmdb}`` reads it. Unlike BasicSR's ``LmdbMaker``, everything is written under the temporary
name :func:`lwsr_plugin.fileio.temp_name` gives beside the target and published (:func:`lwsr_plugin.fileio.publish`)
only when complete: a killed run never leaves a partial output under the final name, and the next run removes the
leftovers of dead runs (:func:`lwsr_plugin.fileio.remove_stale_temps`).

``lwsr_plugin.fileio`` is imported inside the functions that write: it loads torch and BasicSR, which
``lwsr-check-lmdb`` (a reader of this module) and the commands' ``--help`` must not pay for.
"""
import errno
import os
import re
import struct

import lmdb

from .images import DataPrepError

MAP_SIZE = 1024**4  # address space only: LMDB files grow with the data on Linux
COMMIT_EVERY = 2000
_META_RE = re.compile(r'^(\S+?)\.png \((\d+),(\d+),(\d+)\) (\d+)$')


def refuse_existing(final_paths, overwrite):
    """Refuse to start when an output exists and ``overwrite`` is off. Touches nothing on disk, so the commands
    run it with their other up-front checks."""
    for path in final_paths:
        if os.path.exists(path) and not overwrite:
            raise DataPrepError(f'{path}: already exists; pass --overwrite to replace it')


def refuse_output_on_input(outputs, inputs):
    """Refuse an output that is, or holds, one of the inputs, also by another route (symlink, ``..``): publishing it
    (``--overwrite``) would delete that input."""
    for out in outputs:
        out_real = os.path.realpath(out)
        for item in inputs:
            real = os.path.realpath(item)
            if real == out_real or real.startswith(out_real + os.sep):
                raise DataPrepError(f'{out}: this output is (or holds) the input {item}, which writing it would '
                                    'replace; choose another output folder')


def check_targets(final_paths, overwrite):
    """Refuse to start when an output exists and ``overwrite`` is off; create parents; delete what killed runs left
    beside each output, and beside any other ``*.lmdb`` in its folder."""
    refuse_existing(final_paths, overwrite)
    from lwsr_plugin import fileio
    for path in final_paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fileio.remove_stale_temps(path, siblings='.lmdb')


def _is_disk_full(err):
    return getattr(err, 'errno', None) == errno.ENOSPC or 'No space left' in str(err) or 'MDB_MAP_FULL' in str(err)


class AtomicLmdbWriter:
    """Writes a BasicSR-format LMDB under :func:`lwsr_plugin.fileio.temp_name` of its final path; :meth:`finish`
    completes it for :func:`lwsr_plugin.fileio.publish`, :meth:`abort` removes it."""

    def __init__(self, final_path, compress_level=1):
        from lwsr_plugin import fileio
        if not final_path.endswith('.lmdb'):
            raise DataPrepError(f'{final_path}: LMDB output names must end with .lmdb (BasicSR requires it)')
        self.final_path = final_path
        self.path = fileio.temp_name(final_path)
        self.compress_level = compress_level
        fileio.remove_path(self.path)
        self.env = lmdb.open(self.path, map_size=MAP_SIZE)
        self.txn = self.env.begin(write=True)
        self.meta = {}
        self.pending = 0

    def _guard(self, action):
        try:
            return action()
        except (lmdb.Error, OSError) as err:
            if _is_disk_full(err):
                raise DataPrepError(f'{self.path}: no space left on the target disk ({err}); '
                                    'existing outputs were left untouched') from None
            raise DataPrepError(f'{self.path}: LMDB write failed ({err})') from None

    def put(self, key, png_bytes, shape):
        """Store one record (PNG bytes, (h, w, c) shape) under ``key``."""
        if key in self.meta:
            raise DataPrepError(f'{self.final_path}: duplicate key "{key}"')
        self._guard(lambda: self.txn.put(key.encode('ascii'), png_bytes))
        self.meta[key] = shape
        self.pending += 1
        if self.pending >= COMMIT_EVERY:
            self._guard(self.txn.commit)
            self.txn = self.env.begin(write=True)
            self.pending = 0

    def finish(self):
        """Commit, write ``meta_info.txt`` (sorted by key) and close; returns the temporary path to publish."""
        self._guard(self.txn.commit)
        self.txn = None
        self._guard(self.env.sync)
        self.env.close()
        self.env = None
        lines = [f'{k}.png ({h},{w},{c}) {self.compress_level}\n' for k, (h, w, c) in sorted(self.meta.items())]

        def write_meta():
            with open(os.path.join(self.path, 'meta_info.txt'), 'w') as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())

        self._guard(write_meta)
        return self.path

    def abort(self):
        """Drop everything written so far."""
        from lwsr_plugin import fileio
        try:
            if self.txn is not None:
                self.txn.abort()
            if self.env is not None:
                self.env.close()
        except lmdb.Error:
            pass
        self.txn = self.env = None
        fileio.remove_path(self.path)


_META_MAGIC = 0xBEEFC0DE


def _meta_page(head):
    """(txnid, last page number, page size) of one LMDB meta page (64-bit layout), or None when it is not one:
    16-byte page header, then mm_magic, mm_version, mm_address, mm_mapsize, two 48-byte MDB_db records (the first
    one's md_pad holds the page size), mm_last_pg, mm_txnid."""
    if len(head) < 152 or struct.unpack_from('<I', head, 16)[0] != _META_MAGIC:
        return None
    psize = struct.unpack_from('<I', head, 40)[0]
    last_pg, txnid = struct.unpack_from('<QQ', head, 136)
    return txnid, last_pg, psize


def lmdb_file_problem(lmdb_path):
    """One line saying why ``<lmdb_path>/data.mdb`` cannot be used safely, or None when its size covers every page
    its header says is in use. LMDB maps the file into memory: a file cut short (a copy or a build that did not
    finish) kills the reading process with SIGBUS, with no message, at the first record past the end. Only the two
    meta pages are read (plain reads, no mapping)."""
    data = os.path.join(lmdb_path, 'data.mdb')
    if not os.path.isfile(data):
        return f'{lmdb_path}: no data.mdb in the folder (not an LMDB, or an unfinished copy); rebuild or copy it again'
    size = os.path.getsize(data)
    with open(data, 'rb') as f:
        first = f.read(4096)
        meta0 = _meta_page(first)
        psize = meta0[2] if meta0 and meta0[2] in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) else 4096
        f.seek(psize)
        meta1 = _meta_page(f.read(152))
    metas = [m for m in (meta0, meta1) if m is not None]
    if size < 2 * psize or not metas:
        return (f'{lmdb_path}/data.mdb: {size} bytes, not an LMDB file (its header is missing or damaged); rebuild '
                'the LMDB (lwsr-prepare-*) or copy it again')
    _, last_pg, _ = max(metas)
    need = (last_pg + 1) * psize
    if size < need:
        return (f'{lmdb_path}/data.mdb: truncated ({size} bytes, its header says {need}): an unfinished copy or '
                'build. Copy it again or rebuild it with --overwrite; reading it would crash with SIGBUS')
    return None


def check_lmdb_file(lmdb_path):
    """Raise DataPrepError with ``lmdb_file_problem``'s line, if any."""
    problem = lmdb_file_problem(lmdb_path)
    if problem:
        raise DataPrepError(problem)


def read_meta_info(lmdb_path):
    """``meta_info.txt`` of a BasicSR LMDB as {key: ((h, w, c), compress_level)}; DataPrepError on a bad line."""
    meta_path = os.path.join(lmdb_path, 'meta_info.txt')
    if not os.path.isfile(meta_path):
        raise DataPrepError(f'{meta_path}: missing')
    meta = {}
    with open(meta_path) as f:
        for n, line in enumerate(f, 1):
            m = _META_RE.match(line.strip())
            if not m:
                raise DataPrepError(f'{meta_path}:{n}: not "<key>.png (h,w,c) level": {line.strip()!r}')
            key = m.group(1)
            if key in meta:
                raise DataPrepError(f'{meta_path}:{n}: duplicate key "{key}"')
            meta[key] = (tuple(int(m.group(i)) for i in (2, 3, 4)), int(m.group(5)))
    return meta
