"""Writing a finished ONNX graph: gdino's metadata, ``onnx.checker``, then an atomic save."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gdino.errors import GdinoError


def save_checked(
    proto: Any, metadata: dict[str, str], path: Path, tmp: Path, error: type[GdinoError], what: str
) -> None:
    """Replace ``proto``'s metadata with ``metadata``, check the graph (``full_check``) and write it
    to ``path`` through ``tmp``; a failed check raises ``error`` naming ``what`` and leaves no ``tmp``."""
    import onnx  # optional dependency ([export] extra)

    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        tmp.unlink(missing_ok=True)
        raise error(f"{what} failed onnx.checker: {str(err).splitlines()[0]}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)
