"""A method object misused the way a user who skimmed the docs would: each mistake is an error or a warning that
says what to do, never a run that looks fine and is wrong."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import sparsearch
from sparsearch import SparsearchError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 10))


def _backward(model: nn.Module) -> None:
    model(torch.randn(2, 1, 8, 8)).sum().backward()


def _direct_optimizer_step():
    model, method = _net(), sparsearch.GMP(0.9, total_steps=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.prepare(model, optimizer)
    _backward(model)
    optimizer.step()  # the torch.ao habit: GMP would never prune


def _both_steps():
    model, method = _net(), sparsearch.RigL(0.5, total_steps=400)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.prepare(model, optimizer)
    _backward(model)
    method.step()
    optimizer.step()  # a second optimizer step in the same batch


def _step_without_optimizer():
    model, method = _net(), sparsearch.Static(0.5)
    method.prepare(model)
    _backward(model)
    method.step()  # nothing would ever change the weights


def _hydra_optimizer_built_before():
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # before prepare: the scores are not in it
    sparsearch.Hydra(0.5).prepare(model, optimizer)


def _state_of_another_method():
    sparsearch.RigL(0.9, total_steps=10).load_state_dict(sparsearch.GMP(0.9, total_steps=10).state_dict())


def _resume_with_other_total_steps():
    sparsearch.GMP(0.9, total_steps=20).load_state_dict(sparsearch.GMP(0.9, total_steps=10).state_dict())


ERRORS = [
    ("GMP('0.9')", lambda: sparsearch.GMP("0.9"), "a number in [0, 1)"),
    ("SRSTE(0.5)", lambda: sparsearch.SRSTE(0.5), 'an N:M pattern such as "2:4"'),
    ("total_steps=0", lambda: sparsearch.RigL(0.9, total_steps=0), "an int >= 1"),
    ("squash() before prepare()", lambda: sparsearch.Static(0.5).squash(), "before prepare(model)"),
    ("step() before prepare()", lambda: sparsearch.Static(0.5).step(), "call prepare(model, optimizer) first"),
    ("prepare(model) then step()", _step_without_optimizer, "call prepare(model, optimizer) first"),
    ("optimizer.step() in place of method.step()", _direct_optimizer_step, "call method.step() in its place"),
    ("method.step() and optimizer.step()", _both_steps, "step the optimizer twice"),
    ("Hydra with an optimizer built before prepare()", _hydra_optimizer_built_before, "build it over hydra.trainable()"),
    ("a GMP state loaded into RigL", _state_of_another_method, "not this method's state"),
    ("a resume with another total_steps", _resume_with_other_total_steps, "saved by a run of 10 steps"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_a_misuse_is_an_error_that_says_what_to_do(case):
    _, misuse, expected = case
    with pytest.raises(SparsearchError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        misuse()


def test_a_dynamic_run_too_short_for_an_update_and_unmasked_attention_are_warned():
    with pytest.warns(UserWarning, match="no topology update at all"):
        sparsearch.RigL(0.5, total_steps=50).prepare(_net())
    model = nn.Sequential(nn.Linear(8, 8))
    model.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)  # three separate bare weights: not maskable
    with pytest.warns(UserWarning, match="kdim / vdim"):
        sparsearch.Static(0.5, dense_first_last=False).prepare(model)


def test_the_right_loop_is_quiet():
    model, method = _net(), sparsearch.RigL(0.5, total_steps=400)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.prepare(model, optimizer)
        for _ in range(3):
            optimizer.zero_grad()
            _backward(model)
            method.step()
    assert method.step_count == 3


def test_an_export_that_load_could_not_rebuild_fails_at_export_and_a_user_class_loads(tmp_path):
    from sparsearch.models import MODELS, register_model

    model = _net()
    sparsearch.Static(0.5).prepare(model)
    with pytest.raises(SparsearchError, match="no registry model is called 'nobody-knows'"):
        sparsearch.export(model, tmp_path / "a", "nobody-knows")
    assert not (tmp_path / "a").exists()

    class UserNet(nn.Module):  # takes neither num_classes nor in_channels
        def __init__(self, width: int = 4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Conv2d(width, 4, 3), nn.Flatten(),
                                      nn.Linear(64, 10))

        def forward(self, x):
            return self.body(x)

    register_model("test-misuse-usernet")(UserNet)
    try:
        torch.manual_seed(0)
        mine = UserNet()
        sparsearch.Static(0.5).prepare(mine)
        with pytest.raises(SparsearchError, match="do not fit"):
            sparsearch.export(mine, tmp_path / "b", "test-misuse-usernet", width=8)
        sparsearch.export(mine, tmp_path / "c", "test-misuse-usernet")
        x = torch.randn(2, 1, 8, 8)
        with torch.no_grad():
            assert torch.equal(sparsearch.load(tmp_path / "c")(x), mine.eval()(x))
    finally:
        MODELS.pop("test-misuse-usernet")


def test_a_prepared_models_state_dict_saves_with_safetensors_and_loads_back(tmp_path):
    from safetensors.torch import load_file, save_file

    from sparsearch import sparsity as sp

    model = _net()
    sparsearch.Static(0.5, allocation="erk").prepare(model)
    save_file(model.state_dict(), str(tmp_path / "state.safetensors"))  # every entry a tensor, masks' kinds too
    fresh = _net()
    sp.load_masked_state_dict(fresh, load_file(str(tmp_path / "state.safetensors")))
    assert all(torch.equal(a, b) for a, b in zip(sp.current_masks(fresh).values(), sp.current_masks(model).values()))
    assert [r.get("kind") for r in sp.report(fresh)] == [r.get("kind") for r in sp.report(model)]
