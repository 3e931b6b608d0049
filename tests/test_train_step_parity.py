"""The loss values of three fixed training steps equal those of the code before the training-speed work.

Reference: ``tests/fixtures/train_step_losses_4d6e833.json``, written by an independent run of
commit 4d6e833 (before the matcher/loss vectorization):

    git archive 4d6e833 src | tar -x -C /tmp/gdino-4d6e833
    PYTHONPATH=/tmp/gdino-4d6e833/src python tests/fixtures/train_step_losses.py /tmp/steps-data \
        > tests/fixtures/train_step_losses_4d6e833.json

Steps 2 and 3 follow optimizer steps, so they hold the backward pass and the update too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

from train_step_losses import step_losses  # noqa: E402  (the fixture script, shared with the recording run)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_three_fixed_steps_match_recorded_losses(tmp_path, vocab_dir):
    reference = json.loads((FIXTURES / "train_step_losses_4d6e833.json").read_text())
    current = step_losses(tmp_path)
    assert len(current) == len(reference) == 3
    for step, (now, before) in enumerate(zip(current, reference)):
        assert set(now) == set(before), (step, set(now) ^ set(before))
        for name, value in before.items():
            # float32 sums in another order differ in the last bits; the class losses are sums of
            # ~10^3 terms, the grad norm a norm over every parameter: relative 1e-4
            assert now[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, name, now[name], value)
