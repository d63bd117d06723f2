"""The config tree: one dataclass per section, every field typed and defaulted, so an empty YAML file is a
valid config. Value ranges are checked in `checks.py`; reading and overrides live in `loading.py`."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal


def opt(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:
    """A field with its help text, which `sparsearch train --method M --help` shows beside the default."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar10 | mnist | fashion-mnist | imagefolder
    path: str | None = None  # dataset source: folder, archive or official batches
    image_size: int | None = None  # resize images to this square size (imagefolder only)
    cache_dir: str | None = None  # decoded arrays are cached here (default: ~/.cache/sparsearch)
    batch_size: int = 128
    eval_batch_size: int = 512
    augment: bool = True  # random crop with padding + horizontal flip (images only)
    crop_padding: int = 4
    flip: bool = True
    train_subset: int | None = None  # use only this many training examples (stratified)
    download: bool = False  # fetch the dataset if `path` is missing (needs network)


@dataclass
class ModelConfig:
    name: str = "resnet20"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model constructor


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    step_gamma: float = 0.1
    grad_clip: float | None = None  # max global L2 norm of the gradients
    label_smoothing: float = 0.0
    aux_weight: float = 0.4  # weight of an auxiliary head's loss, for models that return one
    drop_path: float = 0.0  # drop-path probability for genotype networks, ramped linearly from 0 over the epochs
    amp: bool = False  # mixed precision: autocast to `amp_dtype` for the forward pass and the loss
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # float16 (CUDA only) adds a gradient scaler
    # model and batches in channels-last memory format (NHWC kernels); null: the faster layout for the job, NHWC for the
    # DASS / DARTS search on the CPU (1.2-2x per step, `sparsearch bench search`), NCHW for training (where a user's
    # NCHW loop is bit-identical to `sparsearch train`)
    channels_last: bool | None = None
    # masked conv / linear layers with fixed masks: on the sparse training kernels (on), PyTorch's dense ones (off), or
    # per layer whichever measured faster when its mask was set (auto; a timing, so not bit-reproducible run to run)
    sparse_kernels: Literal["off", "on", "auto"] = "off"
    cudnn_benchmark: bool = True  # on CUDA: let cuDNN time its convolution algorithms for the fixed shapes
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    log_every: int = 50  # steps between step-level metric lines
    eval_every: int = 1  # epochs between test-set evaluations (the last epoch is always evaluated)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: end of each epoch only)
    check_sparsity: bool = True  # run the sparsity invariant check after each epoch
    resume: bool = True  # continue from the run directory's last checkpoint when there is one

    def stage(self, epochs: int, lr: float | None = None, **changes: Any) -> TrainConfig:
        """This training with another budget: `epochs` at peak `lr` (default: this lr), other fields as `changes`."""
        return dataclasses.replace(self, epochs=epochs, lr=self.lr if lr is None else lr, **changes)


@dataclass
class LayerOverride:
    """Another sparsity or mask kind for the layers whose names match one of `layers` (globs), as torch.ao's config
    list allows; the first override that matches a layer applies to it."""

    layers: list[str] = field(default_factory=list)
    sparsity: float | None = None
    kind: str | None = None


@dataclass
class SparsityConfig:
    # checked against the method registry (sparsearch.recipes.registry), where each method says what it reads
    method: str = opt("static", "how the sparse network is obtained (`sparsearch methods` lists them)")
    sparsity: float = opt(0.0, 'fraction of prunable weights set to zero (0 = dense; maskspar: fraction of channels)')
    kind: str = opt("unstructured", 'unstructured | nm:N:M | block:BH:BW | channel')
    criterion: Literal["magnitude", "random", "lamp", "snip", "wanda"] = opt(
        "magnitude", 'scores the masks keep the largest of (snip and wanda read calibration batches)')
    allocation: Literal["uniform", "er", "erk", "global"] = opt(
        "erk", "how the overall sparsity splits over layers: uniform | er | erk | global (one threshold)")
    calibration_batches: int = opt(1, 'training batches the snip and wanda criteria score on')
    include: list[str] = opt(factory=lambda: ["*"], help='name globs of the conv / linear layers to mask')
    exclude: list[str] = opt(factory=list, help='name globs of layers to keep dense')
    dense_first_last: bool = opt(True, 'keep the first conv and the final classifier dense')
    overrides: list[LayerOverride] = opt(factory=list, help="per-layer settings, [{layers: [globs], sparsity: S, kind: "
                                         "K}]: the first match wins; the other layers share sparsity.sparsity")


@dataclass
class HydraConfig:
    """HYDRA stages (`sparsity.method: hydra`, and the final training of `sparsearch run`). The dense pretrain
    runs `train.epochs` at `train.lr`; these set the other two stages."""

    prune_epochs: int = opt(20, "scores trained, weights frozen (HYDRA's released schedule uses 20)")
    finetune_epochs: int = opt(20, 'mask fixed, surviving weights trained')
    score_lr: float = opt(0.1, 'learning rate of the scores (prune stage)')
    finetune_lr: float = opt(0.01, 'learning rate of the finetuning')


@dataclass
class OneShotConfig:
    """`oneshot`: dense training (`train.*`), one magnitude (or LAMP) prune to the target, then finetuning."""

    finetune_epochs: int = opt(20, 'epochs of finetuning after the prune')
    finetune_lr: float = opt(0.01, 'learning rate of the finetuning')


@dataclass
class GMPConfig:
    """`gmp`: Zhu & Gupta (2017) cubic schedule s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3 over training."""

    initial_sparsity: float = opt(0.0, 's_i')
    start: float = opt(0.0, 't0, as a fraction of all training steps')
    end: float = opt(0.75, 't0 + n dt: the target is reached here and held to the end')
    frequency: int = opt(100, 'dt, steps between mask updates (rounded so the last update lands on `end`)')


@dataclass
class DSTConfig:
    """`set`, `rigl`, `granet`: every `update_every` steps until `end`, each layer drops its smallest-magnitude active
    weights and regrows as many (SET: at random; RigL, GraNet: largest dense gradient), starting at zero. The
    fraction is `drop_fraction`, constant for SET, decaying with a cosine to 0 at `end` for RigL and GraNet."""

    update_every: int = opt(100, 'dT')
    drop_fraction: float = opt(0.3, 'zeta (SET), alpha (RigL), the regeneration rate (GraNet)')
    end: float = opt(0.75, 'T_end, as a fraction of all training steps; the topology is fixed afterwards')


@dataclass
class IMPConfig:
    """`imp` (Frankle et al.): train, prune `prune_fraction` of the remaining weights globally by magnitude, rewind the
    survivors to their values at step `rewind_step` (0: the initialisation, a lottery ticket), retrain; the last
    level lands exactly on `sparsity.sparsity`. Each level trains `train.epochs` with the full schedule."""

    prune_fraction: float = opt(0.2, 'fraction of the remaining weights each level prunes')
    rewind_step: int = opt(0, 'step of the dense training the survivors rewind to (0: the initialisation, a lottery ticket)')
    branches: list[Literal["reinit", "random_mask"]] = opt(factory=list, help='controls at the last level')


@dataclass
class SoupConfig:
    """`soup` (Sparse Model Soups, Zimmer et al. 2024): dense training (`train.*`) on the training set less a held-out
    `val_fraction`, then `phases` prune-retrain cycles. Each prunes the current model globally by magnitude (the phase
    densities are geometric; the last lands on `sparsity.sparsity`), retrains `ingredients` copies that share the mask
    and differ in one setting (`vary`), averages them into a soup, recalibrates BatchNorm statistics, and hands the
    soup to the next phase. `kind` picks the soup that goes on: uniform (all averaged) or greedy (ingredients added in
    order of validation accuracy while it does not drop). Ingredients are trials: `run.executor` runs them."""

    phases: int = opt(3, 'prune-retrain cycles')
    ingredients: int = opt(3, 'retrained copies averaged per phase')
    vary: Literal["seed", "weight_decay"] = opt("seed", 'seed: data order and augmentation')
    weight_decays: list[float] = opt(factory=list, help='one per ingredient when vary is weight_decay')
    retrain_epochs: int = opt(10, 'per ingredient and phase, `train.schedule` restarted at `retrain_lr`')
    retrain_lr: float | None = opt(None, 'null: train.lr (the peak of the original training, as SMS retrains)')
    kind: Literal["uniform", "greedy"] = opt("uniform", "the soup that goes on: uniform (all averaged) or greedy "
                                             "(added while validation accuracy does not drop)")
    val_fraction: float = opt(0.1, 'of the training set, held out from all training to choose greedy soups on')
    bn_batches: int = opt(50, 'training batches that re-estimate BatchNorm statistics after averaging')


@dataclass
class NMConfig:
    """`nm`: N:M sparsity (`sparsity.kind: nm:N:M`) trained from scratch with SR-STE (Zhou et al. 2021)."""

    lambda_w: float = opt(2e-4, 'sparse-refined term: grad += lambda_w * (1 - mask) * W on the pruned weights')
    # instead of SR-STE, progressive gradient flow's mask decay (Bambhaniya et al. 2024): the forward pass uses
    # W * (E + (1 - E) * beta_t), beta_t = max(0, 1 - rate * t) (linear) or exp(-rate * t) (exp), t the step; the
    # mask is hard (beta = 0) for the last `decay_hard_fraction` of training and at every evaluation
    decay: Literal["none", "linear", "exp"] = opt("none", "none (SR-STE) | linear | exp: mask decay instead of SR-STE")
    decay_rate: float = opt(2e-4, 'rate of the mask decay per step')
    decay_hard_fraction: float = opt(0.1, 'the last fraction of training, where the mask is hard')


@dataclass
class MaskSparConfig:
    """`maskspar` (MaskSparsity, Jiang et al. 2022): after dense training, choose the channels to prune by BatchNorm
    scale (`sparsity.sparsity` of them, per layer or globally), push only their scales to zero with L1, then remove
    them and finetune."""

    include: list[str] = opt(factory=lambda: ["*"], help='BatchNorm layers (name globs) whose channels may go')
    exclude: list[str] = opt(factory=list, help='name globs of layers to keep dense')
    reg: float = opt(5e-4, "L1 strength on the selected scales (the reference's SPARSE.SPARSITY)")
    reg_epochs: int = opt(20, 'sparse-regularisation training, from the dense weights at `train.lr`')
    finetune_epochs: int = opt(20, 'epochs of finetuning after the prune')
    finetune_lr: float = opt(0.01, 'learning rate of the finetuning')


@dataclass
class IFTConfig:
    """Sparse-IFT (Thangarasa et al. 2023): a bigger network, sparse at the dense network's FLOPs. `sparsity.sparsity`
    is the transformation's s; the method (`sparsity.method`) then trains the network at the mask sparsity solved so
    that its effective MACs equal the dense network's (written back as `sparsity.sparsity`, s kept in `ift.sparsity`)."""

    family: Literal["none", "wide", "parallel"] = opt("none", "wide: every width x sqrt(k); parallel: k parallel "
                                                      "branches per layer; k = 1 / (1 - s)")
    sparsity: float | None = opt(None, "s, which sets k (0.5: k = 2, 0.75: k = 4); null: sparsity.sparsity")


@dataclass
class SearchConfig:
    """DASS / DARTS search. Defaults are the paper's reference values (GPU scale); configs/ has CPU sizes."""

    mode: Literal["dass", "darts"] = "dass"  # darts: the same supernet dense, one phase of the same total budget
    sparsity: float = 0.9  # DASS target: fraction of weights pruned in every parametric layer
    channels: int = 16
    layers: int = 8
    portion: float = 0.5  # fraction of the training set that trains weights; the rest trains alpha
    batch_size: int | None = None  # search batches (the reference uses 32); null: data.batch_size
    second_order: bool = True
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    pretrain_epochs: int = 100
    prune_epochs: int = 50
    finetune_epochs: int = 100
    weight_lr: float = 0.025
    score_lr: float = 0.1
    min_lr: float = 0.001
    momentum: float = 0.0  # the reference search SGD has no momentum
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    alpha_in_prune: bool = True  # update alpha while scores train (the reference's `base` trainer does)
    random_samples: int = 8  # random-search baseline: genotypes sampled from the same space
    random_epochs: int = 2  # short sparse training per sample (weight half), ranked on the alpha half


@dataclass
class RunConfig:
    """`sparsearch run`: search with each method, then train every derived cell with HYDRA at each sparsity
    (network: `model.kwargs`; pretrain: `train.*`; prune and finetune: `hydra.*`)."""

    methods: list[Literal["dass", "darts", "random"]] = field(default_factory=lambda: ["dass", "darts", "random"])
    sparsities: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # the paper's DASS_90/95/99 cells are separate searches: DASS and random search at each of `sparsities`, each
    # cell trained at its own sparsity (DARTS is dense: one search); false: one search at search.sparsity for all
    search_per_sparsity: bool = True
    search_seeds: list[int] = field(default_factory=list)  # a search (and its cells) per seed; empty: [seed]
    # how independent trials (comparison runs, random-search samples, soup ingredients) run: one after another here,
    # in `workers` processes on this machine, or as Ray tasks (a local instance, or the cluster at `ray_address`)
    executor: Literal["local", "process", "ray"] = "local"
    workers: int = 2  # trials at once (process, ray); the machine's cores are split between them
    retries: int = 1  # a trial that raises or whose worker dies runs again, resuming from its checkpoint
    ray_address: str | None = None  # e.g. "auto" or "ray://head:10001"; None starts a local instance


@dataclass
class CompareConfig:
    """`sparsearch compare`: every variant at every sparsity and seed on the configured model and data. A variant is a
    method name (`sparsity.*` as configured) or a named recipe: static-uniform, static-erk, snip, oneshot-lamp."""

    variants: list[str] = field(default_factory=lambda: ["dense", "oneshot", "gmp", "static-uniform", "static-erk", "snip", "hydra"])
    sparsities: list[float] = field(default_factory=lambda: [0.9, 0.98])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class Config:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    hydra: HydraConfig = field(default_factory=HydraConfig)
    oneshot: OneShotConfig = field(default_factory=OneShotConfig)
    gmp: GMPConfig = field(default_factory=GMPConfig)
    maskspar: MaskSparConfig = field(default_factory=MaskSparConfig)
    dst: DSTConfig = field(default_factory=DSTConfig)
    nm: NMConfig = field(default_factory=NMConfig)
    imp: IMPConfig = field(default_factory=IMPConfig)
    soup: SoupConfig = field(default_factory=SoupConfig)
    ift: IFTConfig = field(default_factory=IFTConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name
