"""Where bundles are found when none is named, and whether a cached default bundle still fits.

`$REPLYRANK_BUNDLE` wins; otherwise the default bundle (`replyrank build-default`) and the default
ranking bundle (`build-default --rank-only`) live in the user's cache folder. A cached default
bundle records the recipe that built it, so an upgrade that changes the recipe says so
(`stale_default`) instead of silently ranking with the old models.
"""

from __future__ import annotations

import os
from pathlib import Path

from .bundle import MANIFEST, REEXPORT, Bundle


# The version of what `replyrank build-default` builds (export.default): SmolLM2-135M-Instruct with the shipped
# generator adapter merged, quantized at MatMulNBits block `export.default.GENERATOR_BLOCK_SIZE` with the smoothed
# dynamic-int8 projections, its graph taking an attention bias (candidates decode as one sequence,
# `generate.Candidates`) and returning each kept position's top-k logits (export.quantize.prune_lm_head), the template
# prefix's cache from the fp32 graph; one MiniLM scorer with the shipped Reddit realism and upvote heads and the
# realism threshold they recorded; the shipped relevance embedder; and the deployment sampling it records
# (`export.assemble.DEPLOYMENT`). The build writes it into the bundle's `training`, so that a cached default bundle
# built by another recipe is told apart (`stale_default`); raise it whenever what the build produces changes.
# "custom": built with another adapter or block (`build-default --adapter/--untuned`), the user's choice.
DEFAULT_RECIPE = 8
# The same for the default ranking bundle (`build-default --rank-only`): the default bundle's scorers alone, in its own
# folder (`default_ranking_dir`); raise it whenever what that build produces changes.
DEFAULT_RANKING_RECIPE = 3


def stale_default(bundle: Bundle) -> str | None:
    """Why the cached default bundle (or default ranking bundle), loaded because no bundle was named, is older than this
    version's recipe, or None when it is current or `$REPLYRANK_BUNDLE` chose it."""
    if os.environ.get("REPLYRANK_BUNDLE"):
        return None
    built = (bundle.training or {}).get("default_recipe", 1)
    current, which, rebuild = ((DEFAULT_RANKING_RECIPE, "default ranking bundle", "build-default --rank-only --force")
                               if bundle.ranking_only else (DEFAULT_RECIPE, "default bundle", "build-default --force"))
    if built in (current, "custom"):
        return None
    return f"the {which} in {bundle.root} was built by an earlier recipe ({built}, this version's is {current}); `replyrank {rebuild}` rebuilds it"


def cpu_mismatch(bundle: Bundle) -> str | None:
    """Why this CPU may not give the quality a dynamic-int8 generator was gated at (export.quantize), or None."""
    from .environment import int8_dot_product

    layout = bundle.validation.get("generator_layout") or {}
    validated = layout.get("validated_on") or {}
    if not layout.get("dynamic_int8") or not validated.get("int8_dot_product") or int8_dot_product() is not False:
        return None
    return (f"the generator's dynamic-int8 layers passed the export's quality gate on a CPU with int8 dot products "
            f"({validated.get('cpu')}); this one has none (no AVX512-VNNI or AVX-VNNI), where ONNX Runtime's int8 GEMMs can "
            f"saturate; {REEXPORT} on this CPU, so that its gate runs here")


def default_bundle_dir() -> Path:
    """`$REPLYRANK_BUNDLE`, else the default bundle in the user's cache folder."""
    if os.environ.get("REPLYRANK_BUNDLE"):
        return Path(os.environ["REPLYRANK_BUNDLE"]).expanduser()
    return _cache() / "default-bundle"


def default_ranking_dir() -> Path:
    """`$REPLYRANK_BUNDLE`, else the default ranking bundle (`build-default --rank-only`) in the user's cache folder.

    A folder of its own, so that building it never stands in the way of the full default bundle."""
    if os.environ.get("REPLYRANK_BUNDLE"):
        return Path(os.environ["REPLYRANK_BUNDLE"]).expanduser()
    return _cache() / "default-ranker"


def ranking_bundle_dir() -> Path:
    """What ranking opens when no bundle is named: `$REPLYRANK_BUNDLE`, else the default bundle where it is built
    (its scorers rank, its generator stays closed), else the default ranking bundle."""
    full = default_bundle_dir()
    return full if os.environ.get("REPLYRANK_BUNDLE") or (full / MANIFEST).is_file() else default_ranking_dir()


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "replyrank"
