"""Methods as objects in a user's own loop, on a user's own model: the same weights and masks, bit for bit, as
`sparsearch train` with that method; and a user loop resumed from state_dicts halfway ends the same."""

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

import sparsearch
from sparsearch import sparsity as sp
from sparsearch.cli import main
from sparsearch.config import from_dict
from sparsearch.data import build_loaders, dataset_from_config
from sparsearch.methods import Cubic, FlowDecay, Periodic
from sparsearch.models import register_model
from sparsearch.train import load_checkpoint

LR, MOMENTUM, WEIGHT_DECAY, EPOCHS = 0.05, 0.9, 5e-4, 2


class UserCNN(nn.Module):
    """A model of the user's: not one of the registry's."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


register_model("test-user-cnn")(UserCNN)  # only so that the CLI can train the same model

# (method object, the CLI flags that configure the same method)
CASES = {
    "rigl": (lambda steps: sparsearch.RigL(0.8, updates=Periodic(every=2, end=0.75), total_steps=steps),
             ["--method", "rigl", "--sparsity", "0.8", "--set", "dst.update_every=2"]),
    "gmp": (lambda steps: sparsearch.GMP(0.8, schedule=Cubic(every=3), total_steps=steps),
            ["--method", "gmp", "--sparsity", "0.8", "--set", "gmp.frequency=3"]),
    "nm": (lambda steps: sparsearch.SRSTE("2:4", lambda_w=2e-4, total_steps=steps),
           ["--method", "nm", "--sparsity", "0.5", "--set", "sparsity.kind=nm:2:4"]),
    "nm-decay": (lambda steps: sparsearch.MaskDecay("2:4", decay=FlowDecay("linear", rate=0.05), total_steps=steps),
                 ["--method", "nm", "--sparsity", "0.5", "--set", "sparsity.kind=nm:2:4", "--set", "nm.decay=linear",
                  "--set", "nm.decay_rate=0.05"]),
}


def _loader():
    cfg = from_dict({"data": {"name": "digits", "batch_size": 64, "train_subset": 384}})
    train, _ = build_loaders(dataset_from_config(cfg.data, seed=0), cfg.data, 0)
    return train


def _user_run(name, stop_at=None, resume=None):
    """A plain loop; `stop_at`: return the state_dicts at that step; `resume`: continue from them."""
    loader = _loader()
    torch.manual_seed(0)
    model = UserCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    method = CASES[name][0](EPOCHS * len(loader))
    method.prepare(model, optimizer)
    step = 0
    if resume is not None:
        state = torch.load(resume, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        step = method.step_count
    while step < EPOCHS * len(loader):
        epoch, batch = divmod(step, len(loader))
        loader.set_epoch(epoch)
        for x, y in loader.batches(batch):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            method.step()
            step += 1
            if step == stop_at:
                buffer = io.BytesIO()
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "method": method.state_dict()}, buffer)
                buffer.seek(0)
                return buffer
    return model, method


def _cli_run(tmp_path, name):
    argv = ["train", "--model", "test-user-cnn", "--name", name, "--set", f"out_dir={tmp_path}",
            "--set", "data.name=digits", "--set", "data.train_subset=384", "--set", "data.batch_size=64",
            "--set", f"train.epochs={EPOCHS}", "--set", f"train.lr={LR}", "--set", "train.schedule=constant",
            "--set", f"train.momentum={MOMENTUM}", "--set", f"train.weight_decay={WEIGHT_DECAY}",
            "--set", "train.log_every=0", *CASES[name][1]]
    assert main(argv) == 0
    (out,) = (tmp_path / name / "train").iterdir()
    return load_checkpoint(out / "checkpoints" / "last.ckpt")["model"], load_file(out / "final.safetensors")


def _assert_identical(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key, value in want.items():
        if torch.is_tensor(value):
            assert torch.equal(got[key], value), key
        else:  # a mask's kind and density
            assert got[key] == value, key


@pytest.mark.parametrize("name", list(CASES))
def test_a_user_loop_matches_the_cli_bit_for_bit_and_resumes_exactly(tmp_path, cache_dir, name):
    cli_state, cli_final = _cli_run(tmp_path, name)
    model, method = _user_run(name)
    # squash first: it computes the weights from the final state, so an N:M layer's mask (a record of the
    # latest forward pass) is that of the final weights, as in the CLI's checkpoint after its evaluation
    _assert_identical(method.squash(), cli_final)  # the exported weights
    _assert_identical(model.state_dict(), cli_state)  # weights, masks, BatchNorm statistics
    assert not sp.check(model)
    if name == "rigl":
        assert len(method.churn) == 4  # steps 2, 4, 6, 8 of 12: the topology did change
    halfway = _user_run(name, stop_at=7)  # mid-epoch 2 (6 steps per epoch)
    resumed, method = _user_run(name, resume=halfway)
    _assert_identical(method.squash(), cli_final)
    _assert_identical(resumed.state_dict(), cli_state)


def test_a_schedule_method_without_total_steps_says_so():
    model = UserCNN()
    method = sparsearch.GMP(0.9)
    method.prepare(model)
    with pytest.raises(sparsearch.SparsearchError, match="total_steps"):
        model(torch.zeros(1, 1, 8, 8))


def test_mask_sparsity_and_a_uniform_soup_in_a_users_loop():
    torch.manual_seed(0)
    model, x, y = UserCNN(), torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    channels = sparsearch.MaskSparsity(0.5, x[:2], reg=1e-2)
    channels.prepare(model, optimizer)
    gammas = {n: model.get_submodule(n).weight.detach().clone() for n in channels.keep}
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        channels.step()
    assert set(channels.keep) == {"stem.1", "body.1"}  # the BatchNorms fed directly by a convolution
    channels.prune()
    for name, keep in channels.keep.items():
        assert int(keep.sum()) == keep.numel() // 2 and torch.all(model.get_submodule(name).weight[~keep] == 0)
        assert torch.all(gammas[name][~keep].abs() <= gammas[name][keep].abs().min())  # the smallest |gamma| went
    assert not sp.check(model)

    def train(model, phase, i):
        torch.manual_seed(i)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        sp.bind_optimizer(model, opt)
        for _ in range(2):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    soup = sparsearch.SparseSoup(0.75, phases=2, ingredients=2)
    souped = soup.run(UserCNN(), train)
    assert [round(h["density"], 3) for h in soup.history] == [0.5, 0.25] and not sp.check(souped)
    assert sp.report(souped)[-2]["density"] == pytest.approx(0.25, abs=1e-3)  # the masked layers; stem, classifier dense
