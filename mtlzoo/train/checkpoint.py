"""The checkpoint file: a header line with the SHA-256 of the payload, then the payload
(``torch.save`` of plain values and tensors), written atomically, read with
``weights_only=True``; and the checks that a checkpoint fits the trainer it is loaded into.

A damaged file (a flipped bit, a truncated or empty one) or a foreign one is refused with
``MtlzooError`` naming the file and what is wrong, before any of it is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule

from mtlzoo.errors import MtlzooError

MAGIC = b"mtlzoo checkpoint"
FORMAT = 2
PAYLOAD = ("model", "optimizer", "weighting", "trainer", "rng")


def write_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, flushed
    to disk, then renamed over ``path``; a crash leaves the old file or the new, never half."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = b"%s %d sha256 %s %d\n" % (
        MAGIC, FORMAT, hashlib.sha256(body).hexdigest().encode(), len(body)
    )
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    # O_EXCL: a name of our own; mode 0o666 less the umask, as for any file (not mkstemp's 0600)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(header)
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def read_checkpoint(path: str | Path, map_location=None) -> dict:
    """The payload of a checkpoint written by ``write_checkpoint``, its checksum verified."""
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if not path.exists():
        raise MtlzooError(f"no checkpoint at {str(path)!r}")
    if not path.is_file():
        raise MtlzooError(f"{where} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise MtlzooError(f"{where} cannot be read: {error.strerror or error}") from error
    if not raw:
        raise MtlzooError(f"{where} is empty")
    line, newline, body = raw.partition(b"\n")
    parts = line.split(b" ")
    if not (newline and line.startswith(MAGIC) and len(parts) == 6 and parts[5].isdigit()):
        if MAGIC.startswith(raw) or (raw.startswith(MAGIC) and not newline):
            raise MtlzooError(f"{where} is truncated: it ends inside its header")
        kind = "a torch.save file" if raw.startswith(b"PK") else "it has no mtlzoo header"
        raise MtlzooError(f"{where} is not an mtlzoo checkpoint ({kind})")
    if parts[2] != str(FORMAT).encode():
        raise MtlzooError(
            f"{where} is of format {parts[2].decode(errors='replace')}; this mtlzoo reads "
            f"format {FORMAT}"
        )
    digest, size = parts[4].decode(errors="replace"), int(parts[5])
    if len(body) < size:
        raise MtlzooError(f"{where} is truncated: {len(body)} of its {size} payload bytes")
    if len(body) > size or hashlib.sha256(body).hexdigest() != digest:
        raise MtlzooError(
            f"{where} is corrupted: its contents do not match the SHA-256 checksum it was "
            "written with"
        )
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as error:  # checksum right, content unreadable: written by another torch
        raise MtlzooError(f"{where} cannot be read by this torch: {error}") from error
    if not isinstance(payload, dict) or sorted(payload) != sorted(PAYLOAD):
        raise MtlzooError(f"{where} does not hold what an mtlzoo checkpoint holds")
    return payload


def check_writable(path: str | Path) -> Path:
    """Fail now, not after an epoch, if a checkpoint cannot be written at ``path``: its folder
    is created and a temporary file written and removed there."""
    path = Path(path)
    where = f"checkpoint path {str(path)!r}"
    if path.is_dir():
        raise MtlzooError(f"{where} is a folder; name a file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as error:
        raise MtlzooError(f"{where} is not writable: {error.strerror or error}") from error
    return path


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# --- does a checkpoint fit? -------------------------------------------------------------


def record(thing: object, state: dict, layout: dict) -> dict:
    """What a checkpoint keeps of a model, weighting or optimizer: its class, its ``layout``
    (what must match to load it: entries and shapes) and its state."""
    return {"class": class_name(thing), "layout": layout, "state": state}


def class_name(thing: object) -> str:
    """The name of ``thing``'s class; of a model FSDP2 sharded, that of the model's own
    (FSDP2 makes it an instance of ``FSDP<class>``)."""
    kind = type(thing)
    if isinstance(thing, FSDPModule):
        kind = next(base for base in kind.__mro__[1:] if not issubclass(base, FSDPModule))
    return kind.__name__


def shapes(state: Mapping[str, object]) -> dict[str, list[int]]:
    """The layout of a module's state dict: each entry's shape."""
    return {key: list(v.shape) if isinstance(v, Tensor) else [] for key, v in state.items()}


def check_fits(what: str, saved: object, thing: object, layout: dict) -> None:
    """Refuse ``saved`` (a ``record``) unless it is of ``thing``'s class and ``layout``."""
    if not isinstance(saved, Mapping) or sorted(saved) != ["class", "layout", "state"]:
        raise MtlzooError(f"its {what} record is damaged")
    ours = class_name(thing)
    if saved["class"] != ours:
        raise MtlzooError(f"it holds a {saved['class']} {what}, this trainer's is a {ours}")
    theirs = saved["layout"]
    if theirs == layout:
        return
    missing = [key for key in layout if key not in theirs]
    extra = [key for key in theirs if key not in layout]
    if missing or extra:
        raise MtlzooError(
            f"its {what} differs from this one: it lacks {missing} and has {extra} besides"
        )
    key = next(key for key in layout if theirs[key] != layout[key])
    raise MtlzooError(
        f"its {what} differs from this one: {key!r} is {tuple(theirs[key])} in the checkpoint "
        f"and {tuple(layout[key])} here"
    )
