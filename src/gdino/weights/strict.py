"""Strict key mapping between a checkpoint's tensors and gdino's state dict.

A :class:`Route` says where one gdino tensor lives in a file: under one name (``rename``), split
in row blocks over several names (``cat``: fused q/k/v), or repeated under several names that
must hold equal copies (``alias``: the shared box head). :func:`gather` reads a file's tensors
through routes, using every key exactly once; :func:`scatter` writes them back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from gdino.errors import CheckpointError

#: how many key names an error message lists per category
SHOWN = 4


@dataclass(frozen=True)
class Route:
    """Where one gdino tensor is stored in another layout.

    Attributes:
        keys: source names; for ``alias`` the accepted copies, the first being the canonical one.
        kind: ``rename`` (one key), ``cat`` (row blocks, concatenated along dim 0) or ``alias``.
        write_all: for ``alias``, whether writing repeats the tensor under every key.
    """

    keys: tuple[str, ...]
    kind: str = "rename"
    write_all: bool = False


def rename(key: str) -> Route:
    return Route((key,))


def gather(
    source: Mapping[str, Tensor],
    routes: Mapping[str, Route],
    expected: Mapping[str, torch.Size],
    allowed: Callable[[str], bool],
    origin: str,
) -> dict[str, Tensor]:
    """gdino state dict from ``source`` through ``routes``; strict.

    Every route must find its keys, every tensor must have the expected shape, alias copies must
    be equal, and every source key must be used once or be an allowed leftover.

    Raises:
        CheckpointError: one line naming ``origin`` and the first few problems of each kind.
    """
    used: set[str] = set()
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    for name, route in routes.items():
        if route.kind == "alias":
            present = [k for k in route.keys if k in source]
            if not present:
                missing.append(route.keys[0])
                continue
            tensor = source[present[0]]
            for other in present[1:]:
                copy = source[other]
                if copy.shape != tensor.shape or not torch.equal(copy, tensor):
                    raise CheckpointError(
                        f"{origin}: {other} should equal {present[0]} (one shared box head) but differs"
                    )
            used.update(present)
        else:
            absent = [k for k in route.keys if k not in source]
            if absent:
                missing.extend(absent)
                continue
            used.update(route.keys)
            parts = [source[k] for k in route.keys]
            if len(parts) == 1:
                tensor = parts[0]
            elif len({p.shape[1:] for p in parts}) != 1:
                mismatched.append(f"{route.keys[0]} {tuple(parts[0].shape)}")
                continue
            else:
                tensor = torch.cat(parts, 0)
        want = tuple(expected[name])
        if tuple(tensor.shape) != want:
            mismatched.append(f"{route.keys[0]} {tuple(tensor.shape)} vs expected {want}")
            continue
        out[name] = tensor
    unexpected = sorted(k for k in source if k not in used and not allowed(k))
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{origin} does not fit the model: " + describe(missing, unexpected, mismatched))
    return out


def scatter(state: Mapping[str, Tensor], routes: Mapping[str, Route]) -> dict[str, Tensor]:
    """Inverse of :func:`gather`: gdino tensors -> another layout's names (no copies made)."""
    out: dict[str, Tensor] = {}
    for name, route in routes.items():
        tensor = state[name]
        if route.kind == "cat":
            n = len(route.keys)
            if tensor.shape[0] % n:
                raise CheckpointError(f"cannot split {name} {tuple(tensor.shape)} into {n} equal blocks")
            out.update(zip(route.keys, tensor.chunk(n, 0)))
        elif route.kind == "alias" and route.write_all:
            out.update((k, tensor) for k in route.keys)
        else:
            out[route.keys[0]] = tensor
    return out


def describe(missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[str]) -> str:
    """``missing 3 (a, b, c); unexpected 1 (x); shape mismatch 1 (k (2, 3) vs expected (4, 3))``."""
    parts = []
    for label, items in (
        ("missing", list(missing)),
        ("unexpected", list(unexpected)),
        ("shape mismatch", list(mismatched)),
    ):
        if items:
            shown = ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")
            parts.append(f"{label} {len(items)} ({shown})")
    return "; ".join(parts)


def contiguous(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Tensors that own their memory (safetensors refuses views and shared storage)."""
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def load_state_dict_strict(
    module: torch.nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str = "the checkpoint",
    what: str | None = None,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> None:
    """Copy ``state`` into ``module``: every key of each side used, every shape equal.

    The one strict loader of gdino (the detector's formats go through :func:`gather` first;
    segmenters and text encoders call this directly).

    Args:
        source: the file, for the message.
        what: the model, for the message (default: the module's class name).
        allow_missing: keys the module has and the file may lack (they keep the module's values).
        allow_unexpected: keys the file may hold and the module lacks (ignored): each caller
            documents its list next to the call.

    Raises:
        CheckpointError: one line naming the missing, unexpected and mis-shaped keys.
    """
    own = module.state_dict()
    allowed_missing, allowed_unexpected = set(allow_missing), set(allow_unexpected)
    missing = sorted(k for k in own if k not in state and k not in allowed_missing)
    unexpected = sorted(k for k in state if k not in own and k not in allowed_unexpected)
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs expected {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        name = what or type(module).__name__
        raise CheckpointError(f"{source}: weights do not match {name}: " + describe(missing, unexpected, mismatched))
    module.load_state_dict({k: state[k] if k in state else own[k] for k in own}, strict=True)
