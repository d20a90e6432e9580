"""The build side of replyrank: train, export and quantize models into a bundle (`pip install replyrank[export]`)."""

from .assemble import ExportOptions, export_bundle
from .convert import ExportError

__all__ = ["ExportError", "ExportOptions", "export_bundle"]
