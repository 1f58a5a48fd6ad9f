"""Check the PyTorch port of :mod:`mi_ref.porting.pytorch` against mi-ref's golden vectors.

    mi-ref vectors --out vectors
    python scripts/verify_torch_example.py vectors [--precision float32] [--out RESULTS.npz]

The same as ``python -m mi_ref.porting.pytorch``; the port itself lives in the package, so that a porter's
own tests can import it (see README, "Checking your implementation against mi-ref"). The results go to
``--out``, by default ``VECTORS/torch_results_PRECISION.npz`` beside the golden files; the last line says where.
"""

import sys

from mi_ref.porting.pytorch import main

if __name__ == "__main__":
    sys.exit(main())
