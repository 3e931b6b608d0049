"""Host syncs inside one training step: a constant few, whatever the batch size and the layer count.

On CPU there is no device, so a :class:`TorchFunctionMode` stands in for one: every tensor that
would live on the accelerator (the model's parameters and buffers, the batch after ``batch.to``,
and whatever is computed from them) is tracked, and every call that reads such a tensor on the
host is counted: ``item``, ``tolist``, ``cpu``, ``numpy``, ``bool()``/``float()``/``int()``,
``nonzero`` and boolean-mask indexing (whose output size needs the data). The code's convention
is that ``.to(device)`` only moves data to the device and reads back use ``.cpu()``/``.tolist()``;
on CUDA the same step also runs under ``torch.cuda.set_sync_debug_mode``.

Tensors the code creates on the device itself count as device tensors too: a factory call with a
``device=`` argument (``torch.arange(n, device=...)``) or a ``.to(device)`` move. Constants built on
the host (no ``device=``) and moved afterwards are host data until the move. The same counter
holds an inference forward pass to no reads at all (the level shapes and the Swin window indices
were once built on the device and read back: 36 host waits per forward on a GPU).
"""

from __future__ import annotations

import linecache
import os
import sys
import weakref
from dataclasses import replace

import pytest
import torch
from test_train_loop import MICRO, make_trainer, synthetic_dataset
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from gdino.data.collate import Batch

pytestmark = pytest.mark.usefixtures("one_thread")

READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero", "unique"}


#: Reads made only when the tensors are on the CPU, so never on an accelerator:
#: ``gdino/ops/deformable.py`` skips zeroing padded values when no position is padding,
#: ``value.device.type != "cpu" or bool(key_padding_mask.any())`` (short-circuits on a GPU), and
#: ``gdino/model/position.py`` embeds one row of an unpadded map only under ``device.type == "cpu"``.
CPU_ONLY_BRANCHES = (
    (os.path.join("gdino", "ops", "deformable.py"), "key_padding_mask.any()"),
    (os.path.join("gdino", "model", "position.py"), "(x == x[:, :1]).all()"),
)


def cpu_only_branch() -> bool:
    """Whether the read comes from one of :data:`CPU_ONLY_BRANCHES` (by file and source line)."""
    frame = sys._getframe(2)
    while frame is not None:
        for path, text in CPU_ONLY_BRANCHES:
            if frame.f_code.co_filename.endswith(path):
                return text in (linecache.getline(frame.f_code.co_filename, frame.f_lineno) or "")
        frame = frame.f_back
    return False


class SyncCounter(TorchFunctionMode):
    """Counts host reads of tracked ("device") tensors; tracking spreads to every op's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked: dict[int, weakref.ref] = {}  # id -> weak reference (tensors compare elementwise)
        self.reads: list[str] = []

    def track(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self.tracked[id(t)] = weakref.ref(t)

    def _is_tracked(self, values) -> bool:
        for v in tree_flatten(values)[0]:
            if isinstance(v, torch.Tensor):
                ref = self.tracked.get(id(v))
                if ref is not None and ref() is v:
                    return True
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        inputs_tracked = self._is_tracked((args, kwargs))
        if inputs_tracked and name in READS and not cpu_only_branch():
            self.reads.append(name)
        if (
            inputs_tracked
            and name == "__getitem__"
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(args[1:])[0])
        ):
            self.reads.append("bool-mask index")
        out = func(*args, **kwargs)
        if name == "cpu" and out is args[0]:  # on the CPU .cpu() is the identity; a device gives a copy
            return out.clone()
        moved = name == "to" and _names_device(args[1:], kwargs)
        if moved and out is args[0]:
            out = out.clone()  # the identity on the CPU; a move to an accelerator gives a new tensor
        created_on_device = kwargs.get("device") is not None  # a factory given a device
        if name not in READS and (inputs_tracked or moved or created_on_device):
            self.track(*[t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)])
        return out


def _names_device(args, kwargs) -> bool:
    """Whether a ``.to(...)`` call names a device (a move), not only a dtype."""
    return kwargs.get("device") is not None or any(isinstance(a, (torch.device, str)) for a in args)


def count_step_syncs(tmp_path, tokenizer, batch_size: int, dec_layers: int) -> list[str]:
    cfg, ds = synthetic_dataset(
        tmp_path, tokenizer, batch_size, ["data.augment=false", f"data.batch_size={batch_size}", "schedule.max_steps=2"]
    )
    trainer = make_trainer(cfg, ds, tokenizer, model_cfg=replace(MICRO, dec_layers=dec_layers))
    ds.set_epoch(0)
    from gdino.data.collate import collate

    batch = collate([ds[i] for i in range(batch_size)])
    trainer.train_step(batch)  # warm-up: optimizer state and lazy buffers exist from here on
    counter = SyncCounter()
    original_to = Batch.to

    def to_device(self, device, non_blocking=False):  # "upload": fresh tensors, tracked as the device's
        moved = original_to(self, device, non_blocking)
        moved = Batch(
            moved.pixel_values.clone(),
            moved.pixel_mask.clone(),
            [
                replace(t, boxes=t.boxes.clone(), token_map=t.token_map.clone(), labels=t.labels.clone())
                for t in moved.targets
            ],
            moved.captions,
        )
        counter.track(
            moved.pixel_values, moved.pixel_mask, *[x for t in moved.targets for x in (t.boxes, t.token_map, t.labels)]
        )
        return moved

    counter.track(*trainer.model.parameters(), *trainer.model.buffers())
    for state in trainer.optimizer.state.values():
        counter.track(*[v for v in state.values() if isinstance(v, torch.Tensor)])
    Batch.to = to_device
    try:
        with counter:
            trainer.train_step(batch)
    finally:
        Batch.to = original_to
    return counter.reads


def test_a_step_reads_the_device_twice_whatever_the_batch_and_depth(tmp_path, tokenizer):
    """Two reads: the matching costs of every layer (one ``cpu``) and the loss values with the grad
    norm (one ``tolist``); the same for 1 or 3 images and 2 or 4 decoder layers."""
    small = count_step_syncs(tmp_path / "a", tokenizer, batch_size=1, dec_layers=2)
    large = count_step_syncs(tmp_path / "b", tokenizer, batch_size=3, dec_layers=4)
    assert sorted(small) == sorted(large) == ["cpu", "tolist"], (small, large)


def test_the_counter_sees_reads(tmp_path):
    """The counter itself: reads of tracked tensors and of their results count, host tensors do not."""
    counter = SyncCounter()
    device_tensor = torch.ones(3)
    counter.track(device_tensor)
    host = torch.zeros(2)
    with counter:
        y = (device_tensor * 2).sum()
        float(y)
        y.item()
        device_tensor[device_tensor > 0]
        host.tolist()
        host.cpu()
        int(host[0])
    assert counter.reads == ["__float__", "item", "bool-mask index"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")
def test_cuda_step_syncs(tmp_path, tokenizer):
    import warnings

    cfg, ds = synthetic_dataset(tmp_path, tokenizer, 2, ["data.augment=false", "data.batch_size=2"])
    trainer = make_trainer(cfg, ds, tokenizer, device="cuda")
    from gdino.data.collate import collate

    ds.set_epoch(0)
    batch = collate([ds[0], ds[1]])
    trainer.train_step(batch)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2, [str(w.message) for w in syncs]


def test_an_inference_forward_never_reads_the_device(tokenizer):
    """No host read in a forward pass: the level shapes stay Python values and constants (window
    indices, level sizes) are built on the host, so a GPU never waits for the host mid-forward.
    Padding is present (two image sizes in one batch) and the prompts differ in length."""
    from gdino.model.grounding_dino import build_model

    torch.manual_seed(0)
    model = build_model(MICRO, tokenizer).eval()
    pixels = torch.randn(2, 3, 96, 128)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    mask[1, 64:] = False
    mask[1, :, 80:] = False
    counter = SyncCounter()
    counter.track(*model.parameters(), *model.buffers())
    text = model.tokenize(["a cat . a remote control .", "dog ."])
    with counter, torch.inference_mode():
        text = text.to(torch.device("cpu"))  # the host-to-device move of the tokenized prompts
        pixels, mask = pixels.to(torch.device("cpu")), mask.to(torch.device("cpu"))
        out = model(pixels, text, pixel_mask=mask)
    assert counter.reads == [], counter.reads
    assert out.boxes.shape == (2, MICRO.num_queries, 4) and torch.isfinite(out.boxes).all()
