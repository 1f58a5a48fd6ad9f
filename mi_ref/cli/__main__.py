"""``python -m mi_ref.cli``: the ``mi-ref`` command (:func:`mi_ref.cli.main`)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
