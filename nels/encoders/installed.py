"""Pretrained models (and the data they need) as a user gets them.

    nels models fetch yamnet        # download the official file: SHA-256 checked, refused on mismatch, resumable
    nels models add yamnet FILE     # install a local copy (same check)
    nels models list                # what is installed: size, classes, licence

Installed files live in `config.models_dir()` ($NELS_MODELS, else $NELS_CACHE/models), one folder per model:
NAME/FILE and NAME/manifest.json (hash, size, where it came from, when). Encoders find their weights with
`find(name)`: the installed copy, else a development machine's shared copy (`../shared/models/NAME`), else
`require(name)` raises a ModelError that says how to fetch it.

A download goes to NAME/FILE.part: an interrupted one (dropped connection, Ctrl-C) resumes from there with an
HTTP Range request, within the same run (a few retries) or the next. Nothing is installed unless the whole
file has the published SHA-256; a mismatching file is deleted.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nels import config
from nels.errors import ModelError

MANIFEST = "manifest.json"
USER_AGENT = "nels/0.1 (+models fetch)"


@dataclass(frozen=True)
class KnownModel:
    """A file NELS knows how to get and check.

    urls : official locations, tried in order (the first that yields the right hash wins).
    shared : where a development machine keeps a copy, relative to its `shared/` folder.
    """

    name: str
    file: str
    sha256: str
    size: int
    urls: tuple[str, ...]
    licence: str
    classes: int | None
    kind: str  # "encoder" (weights behind the Encoder seam) or "vocabulary" (class names and descriptions)
    what: str
    homepage: str
    shared: str


KNOWN: dict[str, KnownModel] = {
    "yamnet": KnownModel(
        name="yamnet", file="yamnet_classification.tflite",
        sha256="10c95ea3eb9a7bb4cb8bddf6feb023250381008177ac162ce169694d05c317de", size=4_126_810,
        urls=("https://tfhub.dev/google/lite-model/yamnet/classification/tflite/1?lite-format=tflite",
              "https://storage.googleapis.com/tfhub-lite-models/google/lite-model/yamnet/classification/tflite/1.tflite"),
        licence="Apache-2.0", classes=521, kind="encoder",
        what="YAMNet (Google): AudioSet sound events, TFLite int8; 521 classes + 1024-d embedding",
        homepage="https://tfhub.dev/google/lite-model/yamnet/classification/tflite/1 (Kaggle: google/yamnet)",
        shared="models/yamnet"),
    "audioset-ontology": KnownModel(
        name="audioset-ontology", file="ontology.json",
        sha256="9c685f4403eecc3ca9be37fd7285cf212feaaea6ff7229d3e7ca89e0d1f2d15d", size=342_780,
        urls=("https://raw.githubusercontent.com/audioset/ontology/d417d32bf59c711abb5910fd2f76a0eb44697991/"
              "ontology.json",),
        licence="CC BY-SA 4.0", classes=632, kind="vocabulary",
        what="AudioSet ontology (Google): names, descriptions and hierarchy of the AudioSet classes",
        homepage="https://github.com/audioset/ontology", shared="datasets/audioset-ontology"),
}

# shipped inside the package (not fetched): listed by `nels models list` with its licence
SHIPPED_CNN_LICENCE = "CC BY-NC 3.0 (non-commercial: trained on ESC-50)"


def known(name: str) -> KnownModel:
    try:
        return KNOWN[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN))}") from None


def models_dir() -> Path:
    return config.models_dir()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def installed_file(name: str) -> Path:
    m = known(name)
    return models_dir() / m.name / m.file


def find(name: str) -> tuple[Path, str] | None:
    """(path, where) of a model's file: where is "installed" (models_dir()) or "shared" (a development
    machine's copy); None when neither exists. Sizes are checked here, hashes by `verify`."""
    m = known(name)
    p = installed_file(name)
    if p.is_file() and p.stat().st_size == m.size:
        return p, "installed"
    for d in config.shared_candidates(m.shared):
        q = d / m.file
        if q.is_file() and q.stat().st_size == m.size:
            return q.resolve(), "shared"
    return None


def require(name: str) -> Path:
    """The model's file, or a ModelError that says how to get it."""
    hit = find(name)
    if hit is None:
        m = known(name)
        raise ModelError(f"{name} is not installed (looked in {installed_file(name).parent} and"
                         f" {', '.join(str(d) for d in config.shared_candidates(m.shared))}): run"
                         f" 'nels models fetch {name}' on a machine with internet, or"
                         f" 'nels models add {name} PATH' with a copy of {m.file}")
    return hit[0]


def verify(name: str, path: str | os.PathLike) -> str:
    """The file's SHA-256; a ModelError when it is not the published one."""
    m = known(name)
    got = sha256_file(path)
    if got != m.sha256:
        raise ModelError(f"{path}: SHA-256 {got} is not the published {m.sha256} of {name} ({m.file}):"
                         f" refused (corrupt, truncated or another file)")
    return got


def _install(m: KnownModel, src: Path, source: str, move: bool) -> dict:
    """Put a verified file in place (atomically) and write its manifest."""
    d = models_dir() / m.name
    d.mkdir(parents=True, exist_ok=True)
    dest = d / m.file
    if move:
        os.replace(src, dest)
    else:
        tmp = d / (m.file + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    manifest = {"name": m.name, "file": m.file, "sha256": m.sha256, "size": dest.stat().st_size,
                "source": source, "licence": m.licence, "classes": m.classes, "kind": m.kind,
                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, d / MANIFEST)
    return {**manifest, "path": str(dest)}


def add(name: str, path: str | os.PathLike) -> dict:
    """Install a local copy of a known model (a file, or a folder holding the model's file) after checking
    its SHA-256."""
    m = known(name)
    src = Path(path).expanduser()
    if src.is_dir():
        src = src / m.file
    if not src.is_file():
        raise ModelError(f"{src}: no such file")
    verify(name, src)
    return _install(m, src, str(src.resolve()), move=False)


# -- download ------------------------------------------------------------------------------------------------
class _Refused(Exception):
    """This URL cannot give the file (HTTP 404, wrong size, not http(s)): try the next one."""


class _Restart(Exception):
    """The server answered a Range request with another range: start over."""


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _content_range_start_total(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000)."""
    try:
        unit, _, rest = (value or "").partition(" ")
        rng, _, total = rest.partition("/")
        return int(rng.split("-")[0]), (None if total.strip() == "*" else int(total))
    except ValueError:
        return None, None


def _download(url: str, part: Path, size: int, bar, timeout: float, attempts: int, backoff: float,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """Download `url` into `part` until it holds `size` bytes, resuming with Range after a dropped connection.

    An attempt that received bytes before failing is retried at once (up to `attempts` times in all); one
    that received nothing waits `backoff` * 2^n s first and counts towards 3 such failures. HTTP errors other
    than 408/429/5xx, and a server offering another size, refuse the URL (_Refused)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _Refused("only http and https URLs are fetched")
    stalls = 0
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return
        bar.n = have
        bar.refresh()
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
        got = 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                if have and resp.status == 206:
                    start, total = _content_range_start_total(resp.headers.get("Content-Range"))
                    if start != have:  # not the range we asked for: start over
                        raise _Restart()
                    mode = "ab"
                else:  # 200: the whole file (a server that ignores Range, or a fresh start)
                    have, mode, total = 0, "wb", None
                    bar.n = 0
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                if total is not None and total != size:
                    raise _Refused(f"the server offers {total} bytes, the published file has {size}")
                with open(part, mode) as f:
                    while True:
                        block = resp.read(1 << 16)
                        if not block:
                            break
                        if have + got + len(block) > size:
                            raise _Refused(f"the server sent more than the published {size} bytes")
                        f.write(block)
                        got += len(block)
                        bar.update(len(block))
            if have + got == size:
                return
            raise http.client.IncompleteRead(b"", size - have - got)  # closed early without an error
        except _Restart:
            part.unlink(missing_ok=True)
            continue
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to send from there: what we have is stale
                part.unlink(missing_ok=True)
                continue
            if exc.code not in (408, 429) and exc.code < 500:
                raise _Refused(f"HTTP {exc.code} {exc.reason}") from None
            err: Exception = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(getattr(exc, "reason", None), socket.gaierror):  # no such host (or offline): no retry
                raise _Refused(f"cannot resolve the host ({exc.reason})") from None
            err = exc
        if got == 0:
            stalls += 1
            if stalls >= 3:
                raise _Refused(f"no data after {stalls} tries ({err.__class__.__name__}: {err})")
            sleep(backoff * 2 ** (stalls - 1))
        if got:
            bar.write(f"{url}: connection lost at {(have + got) / 1e6:.2f} MB ({err.__class__.__name__}); resuming",
                      file=sys.stderr)
    raise _Refused(f"incomplete after {attempts} attempts")


def fetch(name: str, url: str | None = None, progress: bool = True, force: bool = False,
          timeout: float = 60.0, attempts: int = 8, backoff: float = 1.0) -> dict:
    """Download a known model from its official URL (or `url`), check its SHA-256, install it.

    Already installed with the right hash: nothing is downloaded (unless `force`). A partial download
    (NAME/FILE.part) resumes. Returns the manifest (+ path, and `downloaded`: whether bytes were fetched)."""
    m = known(name)
    dest = installed_file(name)
    if not force and dest.is_file() and sha256_file(dest) == m.sha256:
        man = dest.parent / MANIFEST
        info = json.loads(man.read_text()) if man.exists() else {}
        return {**info, "path": str(dest), "downloaded": False}
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / (m.file + ".part")
    errors = []
    for u in ([url] if url else list(m.urls)):
        bar = _progress_bar(m.size, 0, name, progress)
        try:
            _download(u, part, m.size, bar, timeout, attempts, backoff)
        except _Refused as exc:
            errors.append(f"{u}: {exc}")
            continue
        finally:
            bar.close()
        got = sha256_file(part)
        if got != m.sha256:
            part.unlink(missing_ok=True)
            errors.append(f"{u}: SHA-256 {got} is not the published {m.sha256}: refused, deleted")
            continue
        return {**_install(m, part, u, move=True), "downloaded": True}
    raise ModelError(f"could not fetch {name}; nothing was installed.\n  " + "\n  ".join(errors)
                     + f"\n(without internet here: download {m.file} elsewhere from {m.homepage}, then"
                       f" 'nels models add {name} FILE')")


# -- what is installed -------------------------------------------------------------------------------------------
def list_models(check_hashes: bool = True) -> list[dict]:
    """Every model NELS knows: the shipped CNN and the KNOWN ones, installed or not.

    Each row: name, kind, status ("shipped", "installed", "shared" (a development copy), "missing" or
    "corrupt"), path, size (bytes), classes, licence, what."""
    from nels.encoders.registry import DEFAULT_MODEL_DIR

    rows = []
    d = DEFAULT_MODEL_DIR
    if (d / "model.json").exists():
        try:
            meta = json.loads((d / "model.json").read_text())
        except ValueError:
            meta = {}
        rows.append({"name": d.name, "kind": "encoder", "status": "shipped", "path": str(d),
                     "size": sum(p.stat().st_size for p in d.rglob("*") if p.is_file()),
                     "classes": len(meta.get("labels") or []) or None, "licence": SHIPPED_CNN_LICENCE,
                     "what": "NELS's own sound-event CNN (+ joint space), the default model"})
    vocab = Path(__file__).resolve().parent.parent / "data" / "audioset" / "vocabulary.json"
    if vocab.is_file():  # generated from the ontology (nels.encoders.audioset), so under its licence
        try:
            n = len(json.loads(vocab.read_text(encoding="utf-8")).get("classes") or {}) or None
        except (ValueError, AttributeError):
            n = None
        rows.append({"name": "audioset-vocabulary", "kind": "vocabulary", "status": "shipped", "path": str(vocab),
                     "size": vocab.stat().st_size, "classes": n,
                     "licence": "CC BY-SA 4.0 (derived from the AudioSet ontology)",
                     "what": "AudioSet class names, synonyms, descriptions and parents, for text search"})
    for m in KNOWN.values():
        hit = find(m.name)
        status, path, size = "missing", None, None
        if hit is not None:
            path, status = hit
            size = path.stat().st_size
            if check_hashes and sha256_file(path) != m.sha256:
                status = "corrupt"
        rows.append({"name": m.name, "kind": m.kind, "status": status, "path": str(path) if path else None,
                     "size": size, "classes": m.classes, "licence": m.licence, "what": m.what})
    return rows
