"""Fetch and verify the test data and reference weights: a ``shared/``-shaped folder checked against the package
manifest (``lwsr_plugin/data/manifest.json``; docs/data_sources.md).

    python scripts/get_test_data.py --dest ../shared                  # fetch what is missing or wrong, then verify
    python scripts/get_test_data.py --dest ../shared --verify-only    # verify only
    python scripts/get_test_data.py --dest ../shared --only datasets/Set5 --only anchors/imdn   # a part of it

Every file is fetched from its published URL (a file of a public GitHub repository at a fixed commit), checked
against the manifest's SHA-256 before it is renamed into place, and every file is verified at the end: one line per
problem (missing, wrong) with its fix, then a summary. Exit 0 only when every file verifies. Reference outputs that
were computed from the official weights have no public copy: an absent one is listed (the tests that read it skip)
without failing the run, a present one is verified.

Maintainers: ``--write-manifest`` rewrites the manifest from a complete ``--dest`` (hashes computed from the files,
checked against ``datasets/SHA256SUMS`` and the SHA-256s in ``anchors/*/PROVENANCE.md``).
"""
import argparse
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the checkout's package, installed or not

from lwsr_plugin.data import manifest  # noqa: E402

# the checkout's copy, read and written by path: an installed package may be another version, or lack the JSON
MANIFEST = os.path.join(REPO, 'lwsr_plugin', 'data', 'manifest.json')

RAW = 'https://raw.githubusercontent.com/{repo}/{commit}/{path}'
PAN = ('zhaohengyuan1/PAN', '4d045d18592c5771cd3990da88f292812774e538')  # Set14 LR (datasets/PROVENANCE.md, Update)
IMDN = ('Zheng222/IMDN', '8f158e6a5ac9db6e5857d9159fd4a6c4214da574')
IDN = ('Zheng222/IDN-Caffe', '482c601336000f5c00b0e93f83a525f0fc917830')
SLWSR = ('Sudo-Biao/s-LWSR', '789ed425830873018c632fe56a8d6953a96edbc5')
# path in shared/ -> (repo, commit, path in the repo): the official weights (anchors/*/PROVENANCE.md)
WEIGHTS = {
    **{f'anchors/imdn/checkpoints/{n}': (*IMDN, f'checkpoints/{n}')
       for n in ('IMDN_x2.pth', 'IMDN_x3.pth', 'IMDN_x4.pth', 'IMDN_AS.pth', 'model_RTC.pth')},
    **{f'anchors/idn/IDN_x{s}.caffemodel': (*IDN, f'test/caffemodel/IDN_x{s}.caffemodel') for s in (2, 3, 4)},
    'anchors/slwsr/slwsr32_x4_repo_1epoch_model_best.pt':
        (*SLWSR, 'Train/experiment/s-LWSR_BIX4_P48/model/model_best.pt'),
}
_IDN_BIRD = 'the LR Y of Set5 bird (MATLAB-style bicubic, not quantised, as IDN\'s test_IDN.m)'
# path in shared/ -> how it was made: the reference outputs the tests read (no public copy)
DERIVED = {
    'anchors/idn/ref_bird_x2_bicubic_matlab.npy': 'MATLAB-style bicubic x2 of ref_bird_x2_lr_y.npy (IDN\'s skip)',
    **{f'anchors/idn/ref_bird_x{s}_lr_y.npy': f'float32 {_IDN_BIRD}, x{s}' for s in (2, 4)},
    **{f'anchors/idn/ref_bird_x{s}_residual_full.npy':
       f'the residual branch of the official IDN x{s} weights on ref_bird_x{s}_lr_y.npy' for s in (2, 4)},
    **{f'anchors/imdn/reference_outputs/golden_float/butterfly_x{s}_IMDN_out_float32_CHW_rgb01_unclamped.npy':
       f'the raw output of the official IMDN code and x{s} weights on Set5 butterfly LR (CPU)' for s in (2, 3, 4)},
    'anchors/slwsr/ref_bird_x4_sr_rgb0to255_float.npy':
        'the raw output of the official s-LWSR code and slwsr32_x4_repo_1epoch_model_best.pt on Set5 bird x4 LR',
}
_NOT_REDISTRIBUTED = 'For tests and benchmarks; the project does not redistribute them.'
LICENCES = {
    'set5': 'Set5 (Bevilacqua et al., BMVC 2012), benchmark images with their own, unclear terms; copied from '
            'JingyunLiang/SwinIR, whose Apache-2.0 licence covers its code, not necessarily the images. '
            + _NOT_REDISTRIBUTED,
    'set14': "Set14 (Zeyde et al., 2010), benchmark images with their own terms (it includes 'lenna'); HR from "
             "majedelhelou/denoising_datasets ('no ownership claimed'), LR from zhaohengyuan1/PAN (no licence "
             'file). ' + _NOT_REDISTRIBUTED,
    'bsd100': "BSDS300 test images (Martin et al., ICCV 2001), for research use; HR from majedelhelou/"
              "denoising_datasets ('no ownership claimed') and jbhuang0604/SelfExSR (no licence file), LR from "
              'SelfExSR. ' + _NOT_REDISTRIBUTED,
    'urban100': "Urban100 (Huang et al., CVPR 2015), images with their own terms; HR from majedelhelou/"
                "denoising_datasets ('no ownership claimed'), LR from jbhuang0604/SelfExSR (no licence file). "
                + _NOT_REDISTRIBUTED,
    't91': 'T91 (Yang et al., TIP 2010), training images with their own terms; from jiny2001/dcscn-super-resolution, '
           'whose MIT licence covers its code, not necessarily the images. ' + _NOT_REDISTRIBUTED,
    'bsd200': 'BSDS300 training images (Martin et al., ICCV 2001), for research use; from jiny2001/'
              'dcscn-super-resolution, whose MIT licence covers its code, not necessarily the images. '
              + _NOT_REDISTRIBUTED,
    'imdn': 'Official IMDN weights (Zheng222/IMDN) and outputs computed from them: the repository has no licence, so '
            'default copyright applies. Used to verify the port only; never redistributed.',
    'idn': 'Official IDN weights (Zheng222/IDN-Caffe) and outputs computed from them: the repository has no licence '
           'file. Used to verify the port only; never redistributed.',
    'slwsr': 'The s-LWSR debug checkpoint (Sudo-Biao/s-LWSR, MIT, Copyright (c) 2019 Biao) and an output computed '
             'from it. Used to verify the port only; not redistributed.',
}
ABOUT = ('Every file the tests and docs read from a shared/-shaped folder (../shared beside the checkout): path in '
         'it, source URL (a GitHub file at a fixed commit), SHA-256, size, licence note (a key of "licences"). '
         'Written by scripts/get_test_data.py --write-manifest; see lwsr_plugin/data/manifest.py.')


def licence_key(rel):
    """The ``LICENCES`` key of a path in shared/: its dataset folder, or its anchor family."""
    top, name = rel.split('/')[:2]
    return name.lower() if top == 'datasets' else name


def _url(repo, commit, path):
    return RAW.format(repo=repo, commit=commit, path=urllib.parse.quote(path))


# ---------------------------------------------------------------------------------------------------- the manifest
def build_manifest(root):
    """The manifest of ``root`` (a complete shared/ folder): the datasets from ``datasets/sources.tsv`` (Set14 LR
    from PAN, as datasets/PROVENANCE.md's update says), the official weights and the derived references above;
    hashes computed from the files (``check_published_hashes`` compares them with what the folder publishes)."""
    files = {}
    with open(os.path.join(root, 'datasets', 'sources.tsv'), encoding='utf-8') as f:
        rows = [line.rstrip('\n').split('\t') for line in f][1:]
    for dest, repo, commit, path, blob, note in rows:
        rel = f'datasets/{dest}'
        with open(os.path.join(root, rel), 'rb') as f:
            data = f.read()
        entry = {'sha256': manifest.sha256_bytes(data), 'size': len(data), 'licence': licence_key(rel)}
        if dest.startswith('Set14/LR_bicubic/'):
            repo, commit, path = *PAN, f'datasets/{dest}'
        elif note.startswith('BMP->PNG'):
            entry.update(convert='bmp-to-png', source_git_blob=blob, pixels_sha256=manifest.pixels_sha256(data))
        elif manifest.git_blob_id(data) != blob:
            raise SystemExit(f'{rel}: not the git blob {blob} that sources.tsv names; check the file or the table.')
        files[rel] = dict(entry, url=_url(repo, commit, path))
    for rel, (repo, commit, path) in WEIGHTS.items():
        files[rel] = dict(_entry(root, rel), url=_url(repo, commit, path))
    for rel, how in DERIVED.items():
        files[rel] = dict(_entry(root, rel), url=None, derived=how)
    return {'about': ABOUT, 'licences': LICENCES, 'files': files}


def _entry(root, rel):
    path = os.path.join(root, rel)
    return {'sha256': manifest.sha256_file(path), 'size': os.path.getsize(path), 'licence': licence_key(rel)}


def check_published_hashes(root, files):
    """Stop unless every hash that datasets/SHA256SUMS or an anchor's PROVENANCE.md lists (in full, or as
    ``prefix…suffix``) for a manifest file agrees with the file; the paths checked against each, as two sets."""
    in_sums, in_provenance = set(), set()
    with open(os.path.join(root, 'datasets', 'SHA256SUMS'), encoding='utf-8') as f:
        for line in f:
            digest, name = line.split(maxsplit=1)
            rel = 'datasets/' + os.path.normpath(name.strip())
            if rel not in files:
                continue
            if files[rel]['sha256'] != digest:
                raise SystemExit(f'{rel}: SHA256SUMS lists {digest}, the file hashes to {files[rel]["sha256"]}.')
            in_sums.add(rel)
    for family in sorted(os.listdir(os.path.join(root, 'anchors'))):
        with open(os.path.join(root, 'anchors', family, 'PROVENANCE.md'), encoding='utf-8') as f:
            text = f.read()
        for line in text.splitlines():
            # a SHA-256 in full or as prefix…suffix; a line may also hold a 40-digit commit, which is neither
            digests = re.findall(r'(?<![0-9a-f])([0-9a-f]{64}|[0-9a-f]{6,}…[0-9a-f]{4,})(?![0-9a-f])', line)
            for rel, entry in files.items():
                if len(digests) != 1 or not rel.startswith(f'anchors/{family}/') or \
                        not re.search(rf'(?<![\w.]){re.escape(os.path.basename(rel))}(?![\w.])', line):
                    continue
                head, _, tail = digests[0].partition('…')
                if not (entry['sha256'].startswith(head) and entry['sha256'].endswith(tail)):
                    raise SystemExit(f'{rel}: {family}/PROVENANCE.md lists {digests[0]}, the file hashes to '
                                     f'{entry["sha256"]}.')
                in_provenance.add(rel)
    return in_sums, in_provenance


def write_manifest(data, path=MANIFEST):
    """The manifest as sorted JSON, one line per file (a stable, reviewable diff)."""
    files = data['files']
    lines = ['{', f' "about": {json.dumps(data["about"])},', ' "files": {']
    lines += [f'  {json.dumps(rel)}: {json.dumps(files[rel], sort_keys=True, ensure_ascii=False)}'
              + (',' if i < len(files) - 1 else '') for i, rel in enumerate(sorted(files))]
    lines += [' },', ' "licences": ' + json.dumps(data['licences'], indent=1, sort_keys=True).replace('\n', '\n '),
              '}', '']
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- fetching
def fetch(dest, rel, entry, bar=None):
    """Download ``rel`` from its URL, check it (SHA-256; for a converted image the source's git blob, then the
    pixels of the PNG written from it) and rename it into ``dest``; None, or why it failed."""
    try:
        with urllib.request.urlopen(entry['url'], timeout=60) as resp:
            chunks = []
            for chunk in iter(lambda: resp.read(manifest.CHUNK), b''):
                chunks.append(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    except (OSError, ValueError) as err:  # URLError, timeouts, refused connections
        return f'the download failed ({getattr(err, "reason", err)})'
    data = b''.join(chunks)
    if entry.get('convert') == 'bmp-to-png':
        if manifest.git_blob_id(data) != entry['source_git_blob']:
            return 'the download is not the published BMP (git blob differs)'
        import cv2
        import numpy as np
        ok, png = cv2.imencode('.png', cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))
        data = png.tobytes() if ok else b''
        if manifest.pixels_sha256(data) != entry['pixels_sha256']:
            return 'the BMP did not convert to the manifest\'s pixels'
    elif manifest.sha256_bytes(data) != entry['sha256']:
        return f'the download has SHA-256 {manifest.sha256_bytes(data)[:16]}..., not the manifest\'s'
    path = os.path.join(dest, rel)
    tmp = f'{path}.part-{os.getpid()}'  # a kill mid-write leaves this name, never a partial file under the real one
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        return f'cannot write it ({err.strerror or err})'
    return None


def fetch_all(dest, todo, workers=8):
    """Fetch every ``{rel: entry}`` of ``todo`` (8 at a time, one progress bar in bytes); ``{rel: why}`` of those
    that failed."""
    from tqdm import tqdm
    failed = {}
    with tqdm(total=sum(e['size'] for e in todo.values()), unit='B', unit_scale=True, desc='get_test_data',
              file=sys.stderr) as bar, ThreadPoolExecutor(workers) as pool:
        for rel, why in zip(todo, pool.map(lambda rel: fetch(dest, rel, todo[rel], bar), todo)):
            if why:
                failed[rel] = why
    return failed


# ---------------------------------------------------------------------------------------------------- main
def report(dest, dest_arg, files, failed, verify_only):
    """One line per file that does not verify, with its fix, then the summary; the exit status."""
    counts = {'ok': 0, 'missing': 0, 'wrong': 0, 'absent': 0}
    command = f'python scripts/get_test_data.py --dest {dest_arg}'
    for rel, entry in sorted(files.items()):
        state = manifest.problem(dest, rel, entry)
        if state is None:
            counts['ok'] += 1
            continue
        if entry['url'] is None:
            if state == 'missing':
                counts['absent'] += 1
                print(f'{rel}: absent; a reference output ({entry["derived"]}) with no public copy: the tests that '
                      'read it skip.')
                continue
            fix = 'copy it again from the machine that made the reference outputs (it has no public copy)'
        elif rel in failed:
            fix = f'{failed[rel]} ({entry["url"]}); run `{command}` again, or copy it from a machine that has it'
        else:
            fix = (f'run `{command}`' if verify_only else f'run `{command}` again') + f' (source: {entry["url"]})'
        what = 'missing' if state == 'missing' else "its SHA-256 is not the manifest's (a changed or partial file)"
        counts[state] += 1
        print(f'{rel}: {what}. Fix: {fix}.')
    bad = counts['missing'] + counts['wrong']
    line = f'get_test_data: {counts["ok"]} of {len(files)} files verify under {dest}'
    if bad:
        line += f'; {counts["missing"]} missing, {counts["wrong"]} wrong'
    if counts['absent']:
        line += f'; {counts["absent"]} derived reference outputs absent (the tests that read them skip)'
    print(line + '.')
    return 1 if bad else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dest', required=True, help='the shared/-shaped folder (../shared beside the checkout)')
    p.add_argument('--verify-only', action='store_true', help='verify; fetch nothing')
    p.add_argument('--only', action='append', default=[], metavar='PATH',
                   help='only the files at or under this path in the folder, e.g. datasets/Set5 (repeatable)')
    p.add_argument('--write-manifest', action='store_true', help='maintainers: rewrite the manifest from --dest')
    args = p.parse_args(argv)
    dest = os.path.abspath(args.dest)
    if args.write_manifest:
        data = build_manifest(dest)
        in_sums, in_provenance = check_published_hashes(dest, data['files'])
        write_manifest(data)
        print(f'wrote {MANIFEST}: {len(data["files"])} files; SHA-256s agree with datasets/SHA256SUMS for '
              f'{len(in_sums)} and with anchors/*/PROVENANCE.md for {len(in_provenance)}')
        return 0
    if args.verify_only and not os.path.isdir(dest):
        print(f'--dest {args.dest}: no such folder; make it with python scripts/get_test_data.py --dest {args.dest}')
        return 2
    files = manifest.select(manifest.load(MANIFEST)['files'], args.only)
    if not files:
        print(f'--only {" ".join(args.only)}: no file of the manifest lies there; give a path such as datasets/Set5 '
              'or anchors/imdn.')
        return 2
    failed = {}
    if not args.verify_only:
        todo = {rel: e for rel, e in files.items() if e['url'] and manifest.problem(dest, rel, e)}
        failed = fetch_all(dest, todo) if todo else {}
    return report(dest, args.dest, files, failed, args.verify_only)


if __name__ == '__main__':
    sys.exit(main())
