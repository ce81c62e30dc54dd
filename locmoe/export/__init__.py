"""The router export format: ``router.safetensors`` (weights) + ``manifest.json`` (everything else).

Both backends, the inference path and the planners read it without the training code.
"""

from locmoe.export.from_checkpoint import export_checkpoint
from locmoe.export.manifest import EXPORT_FORMAT_VERSION, ExportError, PlacementTable, RouterManifest
from locmoe.export.router_export import ExportedRouter, load_router, write_router_export

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "ExportError",
    "ExportedRouter",
    "PlacementTable",
    "RouterManifest",
    "export_checkpoint",
    "load_router",
    "write_router_export",
]
