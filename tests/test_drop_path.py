"""``DropPath.add_to`` (one ``addcdiv``) equals the written-out ``x + drop_path(gamma * y)`` bit for bit,
forward and backward, with the same random draws."""

from __future__ import annotations

import pytest
import torch

from gdino.model.fusion import DropPath


def _written_out(x, y, gamma, p):
    """The expression as the official code and ``DropPath.forward`` compute it."""
    keep = 1.0 - p
    scaled = y if gamma is None else gamma * y
    mask = scaled.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x + scaled * mask / keep


def _leaves(seed, with_gamma):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 7, 24, generator=g).requires_grad_()
    y = (torch.randn(32, 7, 24, generator=g) * 3).requires_grad_()
    gamma = (torch.rand(24, generator=g) + 0.5).requires_grad_() if with_gamma else None
    return x, y, gamma


@pytest.mark.parametrize("with_gamma", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_training_matches_the_written_out_expression_bit_for_bit(with_gamma, p):
    upstream = torch.randn(32, 7, 24, generator=torch.Generator().manual_seed(5))
    results = []
    for fused in (False, True):
        x, y, gamma = _leaves(3, with_gamma)
        torch.manual_seed(11)  # the same mask draws
        if fused:
            out = DropPath(p).train().add_to(x, y, gamma)
        else:
            out = _written_out(x, y, gamma, p)
        out.backward(upstream)
        grads = [x.grad, y.grad] + ([gamma.grad] if gamma is not None else [])
        results.append((out.detach(), grads))
    (ref, ref_grads), (got, got_grads) = results
    assert torch.equal(got, ref)
    for a, b in zip(got_grads, ref_grads):
        assert torch.equal(a, b)
    # some samples were dropped and some kept at these rates and seeds: both branches ran
    x, y, gamma = _leaves(3, with_gamma)
    kept = (got - x.detach()).flatten(1).abs().amax(1) > 0
    assert kept.any() and not kept.all()


def test_eval_and_zero_rate_add_without_drawing():
    x, y, gamma = _leaves(4, True)
    state = torch.random.get_rng_state()
    for module in (DropPath(0.3).eval(), DropPath(0.0).train()):
        assert torch.equal(module.add_to(x, y, gamma), x + gamma * y)
        assert torch.equal(module.add_to(x, y), x + y)
    assert torch.equal(torch.random.get_rng_state(), state)
