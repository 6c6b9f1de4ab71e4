"""``python -m mtlzoo``: the ``mtlzoo`` command (see ``mtlzoo.cli``)."""

import sys

from mtlzoo.cli import main

sys.exit(main())
