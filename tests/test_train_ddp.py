"""DDP on CPU: a 2-process gloo job (as torchrun would start it) keeps every rank's weights equal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist

OVERRIDES = ["data.batch_size=1", "schedule.max_steps=2", "optim.lr=1e-3"]


def _worker(rank: int, world: int, init_file: str, tmp: str, vocab: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_loop import make_trainer, synthetic_dataset

    from gdino.text.tokenizer import load_tokenizer
    from gdino.train.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tokenizer = load_tokenizer(vocab)
        cfg, ds = synthetic_dataset(Path(tmp), tokenizer, 4, OVERRIDES)
        trainer = make_trainer(cfg, ds, tokenizer, dist_info=DistInfo(rank, world))
        torch.manual_seed(100 + rank)  # ranks draw different denoising noise, as in a real job
        seen = []
        original = trainer.train_step

        def step(batch):
            seen.append(batch.targets[0].image_id)
            return original(batch)

        trainer.train_step = step
        trainer.fit()
        torch.save({"params": trainer.model.state_dict(), "seen": seen}, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_job_keeps_ranks_in_sync(tmp_path, vocab_dir, tokenizer):
    from test_train_loop import synthetic_dataset

    synthetic_dataset(tmp_path, tokenizer, 4, OVERRIDES)  # generate the data once, before the ranks start
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), str(vocab_dir)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert len(set(r0["seen"]) | set(r1["seen"])) == 4, (r0["seen"], r1["seen"])  # disjoint shards
    from test_train_loop import MICRO

    from gdino.model.grounding_dino import build_model

    torch.manual_seed(0)
    init = build_model(MICRO, tokenizer).state_dict()
    changed = 0
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), f"{k} differs between ranks"
        changed += not torch.equal(v, init[k])
    assert changed > 50
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert (run / "model.safetensors").is_file()
    assert len((run / "log.jsonl").read_text().splitlines()) == 2  # rank 0 logs, once per step
