"""The behaviour fingerprint of a restructuring: `sparsearch compare` on digits over every method and recipe, then
the sha256 of every trained weight (tensor values, not file bytes). Run it before and after a change that must not
change what the code computes, and compare the two JSON files.

    python scripts/behaviour_digest.py OUT_DIR digest.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from sparsearch.cli import main

VARIANTS = ["dense", "static-uniform", "static-erk", "snip", "oneshot", "oneshot-lamp", "gmp", "set", "rigl", "granet",
            "hydra", "imp", "maskspar", "soup", "wide-static", "parallel-rigl"]


def digest(path: Path) -> str:
    tensors = load_file(str(path))
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous().reshape(-1)
        h.update(key.encode() + str(t.dtype).encode() + t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run(out_dir: str) -> dict[str, str]:
    common = ["--set", "data.name=digits", "--set", "model.name=cnn", "--set", "model.kwargs={width: 8}",
              "--set", "train.epochs=2", "--set", "compare.seeds=[0]", "--set", f"out_dir={out_dir}",
              "--set", "hydra.prune_epochs=1", "--set", "hydra.finetune_epochs=1", "--set", "oneshot.finetune_epochs=1",
              "--set", "imp.prune_fraction=0.5", "--set", "imp.branches=[reinit, random_mask]",
              "--set", "soup.phases=1", "--set", "soup.kind=greedy", "--set", "soup.ingredients=2",
              "--set", "soup.retrain_epochs=1", "--set", "maskspar.reg_epochs=1", "--set", "maskspar.finetune_epochs=1"]
    assert main(["compare", "--name", "digest", *common, "--set", f"compare.variants={json.dumps(VARIANTS)}",
                 "--set", "compare.sparsities=[0.75]"]) == 0
    assert main(["compare", "--name", "digest-nm", *common, "--set", "compare.variants=[nm]",
                 "--set", "compare.sparsities=[0.5]", "--set", "sparsity.kind=nm:2:4"]) == 0
    assert main(["search", "--name", "digest-search", "--set", "data.name=digits", "--set", f"out_dir={out_dir}",
                 "--set", "search.channels=4", "--set", "search.layers=3", "--set", "search.pretrain_epochs=1",
                 "--set", "search.prune_epochs=1", "--set", "search.finetune_epochs=1", "--set", "search.sparsity=0.9"]) == 0
    root = Path(out_dir)
    found = {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*.safetensors")) if "compiled" not in p.parts}
    for p in sorted(root.rglob("*.ckpt")):  # the search keeps its weights and alpha in checkpoints
        found[str(p.relative_to(root))] = hashlib.sha256(json.dumps({k: v.tolist() for k, v in _tensors(p).items()},
                                                                    sort_keys=True).encode()).hexdigest()
    for p in sorted(root.rglob("genotype.json")):
        found[str(p.relative_to(root))] = p.read_text()
    return found


def _tensors(path: Path) -> dict:
    """Every tensor of a checkpoint's model and architecture state (not its timings or file offsets, nor a mask's
    recorded kind and density: metadata, whose encoding may change)."""
    from sparsearch.train import load_checkpoint

    state = load_checkpoint(path)
    return {f"{part}.{k}": v for part in ("model", "arch", "optimizer") if isinstance(state.get(part), dict)
            for k, v in state[part].items() if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(run(sys.argv[1]), indent=1))
