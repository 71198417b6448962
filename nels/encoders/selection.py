"""Which encoders a library uses: fixed at its first ingest, recorded in its catalogue, checked on every
later use (vectors of two models are not comparable), and re-chosen only by `nels reindex`.

`lib` is anything with `get_meta`/`set_meta`, `newest_ids()` and `memo(key, make)` (a
`nels.store.library.Library`); this module does not import the store.
"""
from __future__ import annotations

from nels.encoders.base import Encoder, create_encoder
from nels.encoders.joint import joint_encoder_for
from nels.errors import ModelMismatchError


def weights_of(enc) -> str:
    return getattr(enc, "meta", {}).get("weights_sha256") or ""


def record_model(lib, spec, enc) -> None:
    """Remember which model (and which exact weights) the library's vectors come from."""
    lib.set_meta("model", str(spec))
    lib.set_meta("model_name", enc.name)
    lib.set_meta("model_sha256", weights_of(enc))


def check_model(lib, enc, spec=None) -> None:
    """ModelMismatchError unless `enc` is the model the library was indexed with (name, and weights where
    the library recorded them): an upgraded default model must not be mixed silently with the old one's
    index."""
    name, sha = lib.get_meta("model_name"), lib.get_meta("model_sha256")
    mine = weights_of(enc)
    if (name is not None and name != enc.name) or (sha and mine and sha != mine):
        what = f"{enc.name}" + (f" (weights {mine[:12]})" if name == enc.name else "")
        raise ModelMismatchError(
            f"this library is indexed with {name}" + (f" (weights {sha[:12]})" if name == enc.name else "")
            + f"; the model now at '{spec or lib.get_meta('model') or 'default'}' is {what}: run"
            f" 'nels reindex{' --model ' + str(spec) if spec else ''}' to re-encode the library with it")


def library_encoders(lib, model: str | None) -> list[Encoder]:
    """The encoders a library ingests with: the acoustic encoder (fixed at the first ingest; another one
    needs `nels reindex`), then the joint space trained on it, when there is one."""
    current = lib.get_meta("model")
    if model is None:
        model = current or "default"
    enc = create_encoder(model)
    if current is None or lib.newest_ids()["segments"] == 0:
        record_model(lib, model, enc)
    else:
        check_model(lib, enc, model)
    encoders: list[Encoder] = [enc]
    joint = joint_encoder_for(enc)
    if joint is not None:
        encoders.append(joint)
    return encoders


def library_encoder(lib) -> Encoder:
    """The library's acoustic encoder, created once per library object and checked against the catalogue."""
    def make():
        enc = create_encoder(lib.get_meta("model") or "default")
        check_model(lib, enc)
        return enc

    return lib.memo("encoder", make)
