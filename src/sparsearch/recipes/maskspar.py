"""The MaskSparsity recipe: from the shared dense training, the sparse-regularised stage, then the finetune of the
channels it kept."""

from __future__ import annotations

from .. import distributed
from ..errors import ConfigError
from ..files import write_json
from ..methods import MaskSparsity
from ..train import StageResult
from .context import MethodContext
from .registry import MethodSpec, register


def maskspar(ctx: MethodContext) -> StageResult:
    cfg, m = ctx.cfg, ctx.cfg.maskspar
    model = ctx.from_pretrained()
    method = MaskSparsity.from_config(cfg, example=next(iter(ctx.train_loader.batches()))[0][:2])
    reg = ctx.train(method, model, ctx.out_dir / "sparse-reg", ctx.stage_cfg(m.reg_epochs, cfg.train.lr))
    if distributed.is_main():
        write_json(ctx.out_dir / "channels.json", method.channels())
    pruned = ctx.build()
    pruned.load_state_dict(reg.model.state_dict())
    final = ctx.fit(method.prune(pruned), ctx.out_dir / "finetune", ctx.stage_cfg(m.finetune_epochs, m.finetune_lr))
    return final.costing_too(reg)


def _check(cfg) -> None:
    if cfg.sparsity.allocation not in ("uniform", "global"):
        raise ConfigError(f"maskspar selects channels per layer (uniform) or globally, not by '{cfg.sparsity.allocation}'")


register(MethodSpec("maskspar", maskspar, "MaskSparsity: channel pruning by BatchNorm scales with a masked L1 penalty "
                    "(sparsity.sparsity: fraction of channels)", sections=("maskspar",), checks=(_check,),
                    starts_from_dense=True, reads=("sparsity", "allocation")))
