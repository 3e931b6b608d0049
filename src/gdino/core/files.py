"""Files written atomically (a temporary file beside the target, then ``os.replace``) and JSON read
with one-line errors. Every writer in gdino goes through :func:`atomic_path`, so a killed job never
leaves a half-written file under the real name."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gdino.errors import GdinoError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the suffix (``.x.tmp-PID.png``), so writers that choose a format by
    extension (Pillow, safetensors) work on it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2, **dumps: Any) -> Path:
    """Write ``data`` as JSON atomically (a trailing newline when indented)."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, **dumps)
    return atomic_write_text(path, text + ("\n" if indent is not None else ""))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a one-line :class:`GdinoError`."""
    p = Path(path)
    if not p.is_file():
        raise GdinoError(f"{p}: {what} not found")
    try:
        with p.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise GdinoError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GdinoError(f"{p}: cannot read {what} ({e})") from None
