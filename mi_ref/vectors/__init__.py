"""Golden vectors: exact float64 numbers for every component of mi-ref, to check other implementations.

``generate(out_dir, seed)`` (CLI: ``mi-ref vectors --out DIR [--seed S]``) writes one ``COMPONENT.npz`` per
component plus ``manifest.json``. A porter loads a component's inputs and parameters into their own
implementation (PyTorch, JAX, TensorFlow, ...), computes the outputs and the gradients, and checks them
with :func:`mi_ref.verify.compare` (CLI: ``mi-ref verify DIR RESULTS.npz``).

Arrays inside a component file (plain ``.npy`` members, readable with ``numpy.load(allow_pickle=False)``):

* ``input/NAME``      a differentiable input (float64), e.g. ``input/x``, ``input/scores``;
* ``const/NAME``      fixed, non-differentiable structure (int64), e.g. ``const/perms``, ``const/step``;
* ``param/PATH``      a trainable parameter (float64); PATH joins the keys of mi-ref's nested params with
                      "/" (``param/layers/0/W``), listed in mi-ref's canonical flattening order
                      (:mod:`mi_ref.tree`: sorted dict keys, list index order, depth first);
* ``output/NAME``     a value of the component (what it returns);
* ``cotangent/NAME``  a fixed random array with the shape of ``output/NAME`` (exactly 1.0 for a scalar
                      output such as a bound or a loss);
* ``aux/NAME``        an intermediate value (e.g. the codes u, v and the scores inside a training step), to
                      locate a discrepancy; not part of the scalar L below and optional when comparing;
* ``grad/NAME``       dL / d ``input/NAME``;  ``grad/param/PATH``: dL / d ``param/PATH``, where

      L = sum over the outputs k of sum(output_k * cotangent_k)    (elementwise product, summed).

  This is the vector-Jacobian product every framework offers: ``torch.autograd.grad(outputs, inputs,
  grad_outputs=cotangents)``, ``jax.vjp(f, *primals)[1](cotangents)``, ``tf.GradientTape.gradient(outputs,
  sources, output_gradients=cotangents)``. For a scalar output with cotangent 1.0 the stored gradient is
  simply the gradient of that output (of the bound, of the training loss).

Components (:func:`component_names`; sizes are small, the formulas are the paper's):

* bounds: ``bound_infonce``, ``bound_nwj``, ``bound_tuba`` on 6 x 6 scores, their ``*_large`` variants with
  scores of magnitude ~1e3 (for I_NWJ and TUBA with off-diagonal entries <= 700, so the value stays finite
  in float64), ``bound_tuba_baseline`` (TUBA with a log-baseline per column);
* critics: ``critic_inner_product``, ``critic_bilinear``, ``critic_separable``, ``critic_concat``;
* layers and encoders: ``dense``, ``mlp``, ``mlp_residual``, ``conv2d_odd`` and ``conv2d_even`` (stride 2,
  'same' padding), ``layer_norm``, ``convnet_4x8`` (small channels) and ``convnet_14x28`` (the paper's
  ConvNet exactly);
* flows: ``realnvp_block_shift``, ``realnvp_block_affine``, ``realnvp_chain`` (3 blocks with their
  permutations): forward, log-det and inverse;
* ``jacobian_mlp_residual``, ``jacobian_realnvp``: per-example Jacobians, singular values, log condition
  numbers (and their percentiles), the values of :mod:`mi_ref.jacobian` as the speed wing computes them
  (:mod:`mi_ref.accel.jacobians`, :mod:`mi_ref.accel.linalg`); their gradients by autograd through an
  op-by-op formulation of the model (second derivatives; mi-ref's fast primitives are first order only);
* ``adam_step``: one Adam update (values only: no framework differentiates through its optimizer);
* ``train_invertible``, ``train_conditioning``, ``train_critics_infonce``, ``train_critics_nwj``: one training
  step (loss and every gradient, i.e. ``value_and_grad`` of :func:`mi_ref.objectives.mi_loss`) of those
  experiments at a small size.

Every input, parameter and cotangent is drawn in float64 and rounded to float32, so a float32
implementation starts from exactly the same numbers; all outputs and gradients are computed in float64.
Parameters are random draws of moderate size (kernels ~ N(0, 1 / fan_in), biases ~ N(0, 0.25), layer-norm
scales ~ 1 + N(0, 1 / 16)), not the experiments' initializers, so that every term of every formula
matters (a zero bias or a near-identity flow would hide a bug).

Determinism: every component draws from its own stream, ``SeedSequence([seed, crc32(name), ...])``, so the
numbers of one component do not depend on which other components exist; the zip members carry a fixed
timestamp, so two generations with the same seed (and the same numpy/BLAS) are byte-identical.
The conventions a porter needs (weight layouts, padding, permutations, score axes, the layer norm, both
forms of Adam) are written once in :mod:`mi_ref.vectors.conventions` and go into ``manifest.json`` as text
(``conventions``) and as values a program can read (``settings``).

Layout of this package: :mod:`~mi_ref.vectors.conventions` (the conventions), :mod:`~mi_ref.vectors.components`
(the components, declared as data), :mod:`~mi_ref.vectors.builders` (how each kind of component is built)
and :mod:`~mi_ref.vectors.files` (the files and the tolerances); this module generates and recomputes them.
"""

import hashlib
import json
import warnings
import zlib
from pathlib import Path

import autograd.numpy as np
import numpy as onp
from autograd import grad

from .. import __version__
from ..checks import positive_int
from ..files import write_bytes, write_text
from ..tree import tree_flatten, tree_map, tree_unflatten
from .builders import BUILDERS, draw_params, normal
from .components import COMPONENTS, Component
from .conventions import CONVENTIONS, FORMAT, FORMAT_VERSION, MANIFEST, SETTINGS
from .files import TOLERANCES, ZIP_DATE_TIME, load_component, load_manifest, manifest_integrity, npz_bytes

CATEGORIES = ("input", "const", "param", "cotangent", "output", "aux", "grad")
_BY_NAME = {c.name: c for c in COMPONENTS}

__all__ = ["CATEGORIES", "COMPONENTS", "CONVENTIONS", "Component", "FORMAT", "FORMAT_VERSION", "MANIFEST",
           "SETTINGS", "TOLERANCES", "ZIP_DATE_TIME", "build", "component_names", "generate", "load_component",
           "load_manifest", "make_component", "npz_bytes", "recompute"]


def component_names():
    """The names of all components, in generation order."""
    return [c.name for c in COMPONENTS]


def build(name, config):
    """The :class:`mi_ref.vectors.builders.Built` of component ``name`` for ``config`` (its manifest entry's
    config: models, input drawing, the forward computation and the arrays' meanings)."""
    return BUILDERS[_get_component(name).kind](config)


def _evaluate(built, inputs, params, cotangents):
    """``(outputs, aux, grads)``: the component's values and dL/d(inputs, params) (see the module docstring)."""
    outputs, aux = built.forward(inputs, params)
    outputs = {k: onp.asarray(v, dtype=onp.float64) for k, v in outputs.items()}
    aux = {k: onp.asarray(v, dtype=onp.float64) for k, v in aux.items()}
    grads = {}
    if built.differentiable:
        traced = built.traced or (lambda i, p: built.forward(i, p)[0])
        names = list(outputs)

        def scalar(pair):
            outs = traced(*pair)
            total = 0.0
            for k in names:
                total = total + np.sum(outs[k] * cotangents[k])
            return total

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Output seems independent of input")
            g_inputs, g_params = grad(scalar)((inputs, params))
        for k in inputs:
            grads[k] = onp.asarray(g_inputs[k], dtype=onp.float64)
        for p, v in tree_flatten(g_params):
            grads[f"param/{p}"] = onp.asarray(v, dtype=onp.float64)
    return outputs, aux, grads


def _streams(seed, name):
    """(structure_seed, rng) of one component: independent of every other component's draws."""
    key = zlib.crc32(name.encode("utf-8"))
    structure_seed = int(onp.random.SeedSequence([seed, key, 0]).generate_state(1)[0])
    return structure_seed, onp.random.default_rng(onp.random.SeedSequence([seed, key, 1]))


def make_component(name, seed=0):
    """Generate one component in memory: ``(arrays, entry)``.

    ``arrays``: ``{name: array}`` in file order (inputs, consts, params, cotangents, outputs, aux, grads);
    ``entry``: its manifest entry (file, summary, functions, config, scalar, float64_only, arrays).
    """
    seed = positive_int(seed, "seed", minimum=0)
    comp = _get_component(name)
    structure_seed, rng = _streams(seed, name)
    config = dict(comp.config, structure_seed=structure_seed)
    built = build(name, config)
    inputs = built.draw_inputs(rng)
    if built.draw_params is not None:
        params = built.draw_params(rng)
    elif built.param_scale is not None:
        params = tree_map(lambda leaf: normal(rng, onp.shape(leaf), built.param_scale), built.template)
    else:
        params = draw_params(built.template, rng)
    outputs, _ = built.forward(inputs, params)
    cotangents = {}
    if built.differentiable:
        for k, v in outputs.items():
            shape = onp.shape(v)
            cotangents[k] = onp.array(1.0) if shape == () else normal(rng, shape)
    outputs, aux, grads = _evaluate(built, inputs, params, cotangents)

    arrays = {}
    arrays.update({f"input/{k}": v for k, v in inputs.items()})
    arrays.update({f"const/{k}": v for k, v in built.consts.items()})
    arrays.update({f"param/{p}": onp.asarray(v) for p, v in tree_flatten(params)})
    arrays.update({f"cotangent/{k}": v for k, v in cotangents.items()})
    arrays.update({f"output/{k}": v for k, v in outputs.items()})
    arrays.update({f"aux/{k}": v for k, v in aux.items()})
    arrays.update({f"grad/{k}": v for k, v in grads.items()})
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not onp.isfinite(value).all():
            raise RuntimeError(f"golden vector {name}/{key} is not finite; the component's inputs are wrong")
    return arrays, _entry(comp, config, built, arrays, cotangents)


def _scalar_text(built, cotangents):
    if not built.differentiable:
        return None
    terms = []
    for k, c in cotangents.items():
        terms.append(f"output/{k} * cotangent/{k}" if onp.shape(c) == () else f"sum(output/{k} * cotangent/{k})")
    text = "L = " + " + ".join(terms)
    if len(cotangents) == 1 and onp.shape(next(iter(cotangents.values()))) == ():
        k = next(iter(cotangents))
        text += f" = output/{k} (its cotangent is 1.0)"
    return text


def _describe_param(path, shape, notes):
    """Where the parameter sits (encoder, block, layer) and what it is (``notes`` may say the latter)."""
    names = {"g1": "encoder g1 (view 1)", "g2": "encoder g2 (view 2)", "critic": "critic",
             "net": "conditioner MLP",
             "f": "MLP f (applied to u)", "h": "MLP h (applied to v)", "conv1": "first convolution",
             "conv2": "second convolution", "norm": "layer norm", "out": "final dense layer"}
    parts = path.split("/")
    where, i = [], 0
    while i < len(parts) - 1:
        if parts[i] in ("layers", "blocks") and parts[i + 1].isdigit() and i + 1 < len(parts) - 1:
            where.append(("layer " if parts[i] == "layers" else "coupling block ") + parts[i + 1])
            i += 2
        else:
            where.append(names.get(parts[i], parts[i]))
            i += 1
    leaf = parts[-1]
    if path in notes:
        what = notes[path]
    elif leaf == "W" and len(shape) == 2:
        what = f"dense kernel W (in={shape[0]}, out={shape[1]}): y = x W + b; torch Linear.weight = W.T"
    elif leaf == "W" and len(shape) == 4:
        what = f"conv kernel W (kh, kw, C_in, C_out) = {tuple(shape)}; torch weight = W.permute(3, 2, 0, 1)"
    elif leaf == "b":
        what = f"bias b ({shape[0]},)"
    elif leaf == "scale":
        what = f"layer-norm scale, one per channel ({shape[0]},)"
    elif leaf == "bias":
        what = f"layer-norm bias, one per channel ({shape[0]},)"
    else:
        what = f"parameter {leaf} {tuple(shape)}"
    return (", ".join(where) + ": " if where else "") + what


def _entry(comp, config, built, arrays, cotangents):
    scalar = _scalar_text(built, cotangents)
    described = []
    for key, value in arrays.items():
        category, _, rest = key.partition("/")
        if category in ("input", "const", "output", "aux"):
            meaning = built.meanings[key]
        elif category == "param":
            meaning = _describe_param(rest, value.shape, built.param_notes)
        elif category == "cotangent":
            meaning = ("1.0: the scalar L is output/" + rest if value.shape == ()
                       else f"fixed random cotangent for output/{rest} (same shape); part of L")
        else:
            target = f"param/{rest[6:]}" if rest.startswith("param/") else f"input/{rest}"
            meaning = f"dL/d {target} (L: this component's 'scalar')"
        described.append({"name": key, "shape": list(value.shape), "dtype": str(value.dtype), "meaning": meaning})
    return {"file": f"{comp.name}.npz", "summary": comp.summary, "functions": list(comp.functions),
            "config": config, "scalar": scalar, "float64_only": comp.float64_only, "arrays": described}


def _manifest_header(seed):
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mi_ref_version": __version__, "seed": seed,
            "generated_with": {"numpy": onp.__version__, "autograd": version("autograd")},
            "conventions": CONVENTIONS, "settings": SETTINGS,
            "tolerances": {k: dict(v) for k, v in TOLERANCES.items()}}


def generate(out_dir, seed=0, names=None):
    """Write every component (or those in ``names``) to ``out_dir/NAME.npz`` plus ``manifest.json``.

    Returns the manifest (a dict). Files are written atomically; the same seed gives byte-identical files.
    """
    seed = positive_int(seed, "seed", minimum=0)
    names = component_names() if names is None else [_get_component(n).name for n in names]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    manifest = _manifest_header(seed)
    manifest["components"] = {}
    for name in names:
        arrays, entry = make_component(name, seed)
        data = npz_bytes(arrays)
        write_bytes(out / entry["file"], data)
        manifest["components"][name] = dict(entry, sha256=hashlib.sha256(data).hexdigest())
    manifest["integrity"] = {"sha256": manifest_integrity(manifest["components"]),
                             "covers": "the names of the components in order and, for each, its file, the file's "
                                       "SHA-256 and every array's name, shape and dtype"}
    # insertion order (not sorted keys): components in generation order, arrays in file order
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _get_component(name):
    if name not in _BY_NAME:
        raise ValueError(f"unknown component {name!r}; expected one of {component_names()}")
    return _BY_NAME[name]


def recompute(vectors_dir, name):
    """Recompute a stored component's outputs, aux values and gradients with this mi-ref.

    Rebuilds the models from the manifest's config (the structure seed reproduces the permutations, which
    must equal the stored ``const/`` arrays), takes inputs, params and cotangents from the file and returns
    ``{"output/...": ..., "aux/...": ..., "grad/...": ...}`` named as in the file.
    """
    manifest = load_manifest(vectors_dir)
    arrays = load_component(vectors_dir, name, manifest)
    built = build(name, manifest["components"][name]["config"])
    for k, v in built.consts.items():
        stored = arrays.get(f"const/{k}")
        if stored is None or not onp.array_equal(stored, v):
            raise ValueError(f"{name}: const/{k} in the file differs from the one its config rebuilds")
    inputs = {k[len("input/"):]: v for k, v in arrays.items() if k.startswith("input/")}
    cotangents = {k[len("cotangent/"):]: v for k, v in arrays.items() if k.startswith("cotangent/")}
    flat = tree_flatten(built.template)
    params = tree_unflatten(built.template, [arrays[f"param/{p}"] for p, _ in flat]) if flat else built.template
    outputs, aux, grads = _evaluate(built, inputs, params, cotangents)
    result = {f"output/{k}": v for k, v in outputs.items()}
    result.update({f"aux/{k}": v for k, v in aux.items()})
    result.update({f"grad/{k}": v for k, v in grads.items()})
    return result
