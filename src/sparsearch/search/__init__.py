"""Architecture search: the DARTS supernet, the architect, genotype derivation (DASS phases build on these)."""

from ..models.genotypes import GENOTYPES, Genotype, load_genotype
from .architect import Architect
from .phases import ArchitectCallback, run_search
from .supernet import MixedOp, SearchCell, SuperNet, derive_genotype

__all__ = ["GENOTYPES", "Architect", "ArchitectCallback", "run_search", "Genotype", "MixedOp", "SearchCell", "SuperNet", "derive_genotype",
           "load_genotype"]
