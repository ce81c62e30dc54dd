"""Put this folder on PYTHONPATH to run Python as if the frameworks named in ``LOCMOE_HIDE`` (comma-separated,
e.g. ``torch,mindspore``) were not installed: importing one, or asking ``importlib.util.find_spec`` for it, raises
the ``ModuleNotFoundError`` a missing package raises. Used by ``tests/test_missing_framework.py``."""

import os
import sys

HIDDEN = {name.strip() for name in os.environ.get("LOCMOE_HIDE", "").split(",") if name.strip()}


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if HIDDEN:
    sys.meta_path.insert(0, _Hide())
