"""``python -m app.cli``: the same as the ``foundry-gateway`` command."""

import sys

from app.cli.main import main

sys.exit(main())
