"""replyrank: write candidate replies to a comment, score how human and how well received each
would be, and return the best one, on CPU with ONNX Runtime (never torch). Apps that only rank
replies written elsewhere open the scorers alone: `load_ranker()`, or a ranking bundle."""

from .bot import Bot, Candidate, Result, load, load_ranker
from .locations import default_bundle_dir
from .errors import BundleError, DeadlineExceeded, InputError, RankingOnly, ReplyrankError
from .filters import ReplyFilters, read_blocklist
from .generate import GenerationOptions

__version__ = "0.1.0"
__all__ = [
    "Bot",
    "BundleError",
    "Candidate",
    "DeadlineExceeded",
    "GenerationOptions",
    "InputError",
    "RankingOnly",
    "ReplyFilters",
    "ReplyrankError",
    "Result",
    "__version__",
    "default_bundle_dir",
    "load",
    "load_ranker",
    "read_blocklist",
]
