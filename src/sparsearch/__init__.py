"""sparsearch: find, train and run sparse neural networks.

The main objects, for use on your own model and in your own loop (imported on first use, so `import sparsearch`
stays cheap):

    sparsearch.Static, OneShot, GMP, SET, RigL, GraNet, SRSTE, MaskDecay,     methods: prepare(model, optimizer),
               Hydra, MaskSparsity                                             step(), state_dict(), squash()
    sparsearch.IMP, SparseSoup                                                lottery tickets, sparse model soups
                                                                               around your own train(model)
    sparsearch.Cubic, Periodic, Constant, CosineDecay, FlowDecay              their schedules
    sparsearch.find_layers, compute_masks, attach, sparsify, squash, remove   the mask layer (sparsearch.sparsity)
    sparsearch.Trainer                                                         the training loop (sparsearch.train)
    sparsearch.compile, export, load                                           inference (sparsearch.runtime)
    sparsearch.build_model                                                     the model registry
"""

from importlib import import_module

from .errors import SparsearchError

__version__ = "0.1.0"

_METHODS = ("Static", "OneShot", "GMP", "SET", "RigL", "GraNet", "SRSTE", "MaskDecay", "Hydra", "MaskSparsity",
            "IMP", "SparseSoup", "SparseMethod",
            "Cubic", "Periodic", "Constant", "CosineDecay", "FlowDecay")
_EXPORTS = {
    **{name: "sparsearch.methods" for name in _METHODS},
    **{name: "sparsearch.sparsity" for name in ("find_layers", "compute_masks", "attach", "sparsify", "squash", "remove")},
    "Trainer": "sparsearch.train",
    **{name: "sparsearch.runtime" for name in ("compile", "export", "load")},
    "build_model": "sparsearch.models",
}
__all__ = ["SparsearchError", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name in ("sparsity", "methods", "runtime", "train", "models", "data"):
        return import_module(f"sparsearch.{name}")
    raise AttributeError(f"module 'sparsearch' has no attribute {name!r}")
