"""``python -m locmoe`` for launchers that take a script path instead of a module (msrun):
``msrun ... scripts/locmoe_entry.py train CONFIG --set ...``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locmoe.cli import main  # noqa: E402

sys.exit(main())
