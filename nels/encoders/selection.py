"""Which encoders a library uses: fixed at its first ingest, recorded in its catalogue, checked on every
later use (vectors of two models are not comparable), and re-chosen only by `nels reindex`.

A spec may name several encoders joined by "+" ("default+yamnet"): each writes its own vector space and
class probabilities for the same segments, and search fuses them. The first one is the library's
*primary* encoder (its name is the one recorded and checked); each encoder's joint space, when it has
one, follows it.

`lib` is anything with `get_meta`/`set_meta`, `newest_ids()` and `memo(key, make)` (a
`nels.store.library.Library`); this module does not import the store.
"""
from __future__ import annotations

from nels import config
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


def split_spec(spec: str) -> list[str]:
    """"default+yamnet" -> ["default", "yamnet"] (a path may not contain "+" then; a single spec may)."""
    parts = [p.strip() for p in str(spec).split("+")]
    return parts if len(parts) > 1 and all(parts) else [str(spec)]


def encoders_for(spec: str) -> list[Encoder]:
    """The encoders of a spec, in ingest order: each acoustic encoder, then its joint space if it has one
    (a derived encoder maps the output of the acoustic encoder just before it). A library has one joint space,
    the primary's (search maps queries through `joint_encoder_for(primary)`): another encoder's joint space
    (a head on YAMNet carries one too) would write the same "joint" vectors from other towers, so it is left out."""
    out: list[Encoder] = []
    for i, part in enumerate(split_spec(spec)):
        enc = create_encoder(part)
        out.append(enc)
        joint = joint_encoder_for(enc) if i == 0 else None
        if joint is not None:
            out.append(joint)
    return out


def primaries(encoders) -> list[Encoder]:
    """The acoustic encoders of a list (those that read audio, not another encoder's output)."""
    return [e for e in encoders if not hasattr(e, "encode_from")]


NO_BACKBONE_NOTE = ("the YAMNet backbone is not installed, so this library uses the ESC-50 CNN alone (50 classes);"
                    " 'nels models fetch yamnet' (or 'nels models add yamnet FILE') adds YAMNet's 521 AudioSet classes"
                    " to new libraries")


def default_spec() -> tuple[str, str | None]:
    """(spec, note) for a new library indexed without `--model`: $NELS_MODEL when set; else the best measured
    configuration, the own CNN + YAMNet fused ("default+yamnet", bench/RESULTS.md "Pretrained backbones"),
    where the YAMNet weights are installed (or a development machine's shared copy is found); else the CNN
    alone, with a note that says so and how to get the backbone."""
    chosen = config.MODEL.get()
    if chosen:
        return chosen, None
    from nels.encoders.installed import find

    if find("yamnet") is not None:
        return "default+yamnet", None
    return "default", NO_BACKBONE_NOTE


def library_encoders(lib, model: str | None, note=None) -> list[Encoder]:
    """The encoders a library ingests with (see `encoders_for`): fixed at the first ingest; another spec
    needs `nels reindex`. A new library without `model` gets `default_spec()` (its note, if any, goes to
    `note(str)`); an existing one keeps what it was indexed with."""
    current = lib.get_meta("model")
    if model is None:
        if current is None and lib.newest_ids()["segments"] == 0:
            model, why = default_spec()
            if why and note is not None:
                note(why)
        else:
            model = current or "default"
    encoders = encoders_for(model)
    enc = encoders[0]
    if current is None or lib.newest_ids()["segments"] == 0:
        record_model(lib, model, enc)
    else:
        check_model(lib, enc, model)
        if split_spec(model) != split_spec(current) and len(split_spec(current)) + len(split_spec(model)) > 2:
            raise ModelMismatchError(f"this library is indexed with '{current}'; '{model}' names other encoders: run"
                                     f" 'nels reindex --model {model}' to re-encode the library with them")
    return encoders


def library_encoder(lib) -> Encoder:
    """The library's primary acoustic encoder, created once per library object and checked against the
    catalogue."""
    return library_primaries(lib)[0]


def library_primaries(lib) -> list[Encoder]:
    """Every acoustic encoder of the library's spec (the primary first), created once per library object."""
    def make():
        encs = primaries(encoders_for(lib.get_meta("model") or "default"))
        check_model(lib, encs[0])
        return encs

    return lib.memo("encoders", make)
