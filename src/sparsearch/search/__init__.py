"""Architecture search: the DARTS supernet, the architect, genotype derivation, the DASS/DARTS phases and
the random-search baseline."""

from ..models.genotypes import GENOTYPES, Genotype, load_genotype
from .architect import Architect
from .phases import ArchitectCallback, check_search, differentiable_search, run_search
from .random_search import random_search, sample_genotype
from .supernet import MixedOp, SearchCell, SuperNet, derive_genotype

__all__ = ["GENOTYPES", "Architect", "ArchitectCallback", "Genotype", "MixedOp", "SearchCell", "SuperNet", "derive_genotype",
           "check_search", "differentiable_search", "load_genotype", "random_search", "run_search", "sample_genotype"]
