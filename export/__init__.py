"""The build side of replyrank: train, export and quantize models into a bundle (`pip install replyrank[export]`)."""

from .assemble import ExportOptions, export_bundle, real_pairs, spread
from .convert import ExportError
from .default import build_default_bundle

__all__ = ["ExportError", "ExportOptions", "build_default_bundle", "export_bundle", "real_pairs", "spread"]
