"""Check the PyTorch port of :mod:`mi_ref.porting.pytorch` against mi-ref's golden vectors.

    mi-ref vectors --out vectors
    python scripts/verify_torch_example.py vectors [--precision float32]

The same as ``python -m mi_ref.porting.pytorch``; the port itself lives in the package, so that a porter's
own tests can import it (see README, "Checking your implementation against mi-ref").
"""

import sys

from mi_ref.porting.pytorch import main

if __name__ == "__main__":
    sys.exit(main())
