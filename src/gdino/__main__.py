"""``python -m gdino`` runs the CLI."""

import sys

from gdino.cli import main

sys.exit(main())
