"""mi-ref's parameter names and layouts and PyTorch's, both ways; plain numpy, no torch needed.

:mod:`mi_ref.porting.pytorch` uses these to load the golden vectors into its PyTorch port, and
:mod:`mi_ref.verify` to recognize a PyTorch state-dict name (``layers.0.weight``) among a port's results.
"""

import numpy as np

__all__ = ["mi_param", "torch_name", "torch_param", "torch_state"]


def torch_name(path):
    """The PyTorch state-dict name of mi-ref's parameter ``path``: "/" becomes ".", a dense or conv kernel
    ``W`` becomes ``weight`` and its bias ``b`` becomes ``bias`` (``layers/0/W`` -> ``layers.0.weight``). (The
    bilinear critic's ``W`` is a matrix of the formula, not a layer's weight: :func:`torch_param` takes
    ``layer=False`` for it.)"""
    parts = path.split("/")
    parts[-1] = {"W": "weight", "b": "bias"}.get(parts[-1], parts[-1])
    return ".".join(parts)


def _relayout(path, array, layer, conv_axes):
    """A dense kernel ``W`` transposed, a conv kernel ``W`` permuted by ``conv_axes``; anything else as is."""
    array = np.asarray(array)
    if layer and path.split("/")[-1] == "W":
        if array.ndim == 2:
            return array.T
        if array.ndim == 4:
            return array.transpose(conv_axes)
    return array


def torch_param(path, array, layer=True):
    """mi-ref's parameter ``array`` at ``path`` in PyTorch's layout (a numpy array): a dense kernel
    ``W (in, out)`` becomes ``Linear.weight (out, in)`` (``W.T``), a conv kernel ``(kh, kw, C_in, C_out)``
    becomes ``(C_out, C_in, kh, kw)``; biases, layer-norm scales and biases, and any parameter with
    ``layer=False`` (the bilinear critic's ``W``) stay as they are. :func:`mi_param` is the inverse."""
    return _relayout(path, array, layer, (3, 2, 0, 1))


def mi_param(path, array, layer=True):
    """The inverse of :func:`torch_param`: a PyTorch weight (or its gradient) back in mi-ref's layout."""
    return _relayout(path, array, layer, (2, 3, 1, 0))


def torch_state(params_flat, layers=True):
    """``{torch name: array}`` of mi-ref's flat ``{path: array}`` (e.g. the ``param/`` arrays of a golden file
    with the prefix removed), ready for ``module.load_state_dict({k: torch.tensor(v) ...})``."""
    return {torch_name(p): torch_param(p, a, layers) for p, a in params_flat.items()}
