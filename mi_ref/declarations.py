"""What each registered kind must declare, and a walk that names what a kind lacks.

Every registry of mi-ref (:data:`mi_ref.registry.REGISTRIES`: critics, estimators, encoders, activations,
experiments, metric-learning losses, datasets) maps a name to the formula (a dataset: to its loader). The
other parts of the package describe the kind in tables of their own, keyed by that name and kept beside the
code that reads them; a table may say "none" on purpose. This module only reads them (the math modules
never import it, nor the tables):

==================  =====================================  =====================================================
registry            declaration                            where
==================  =====================================  =====================================================
critic              accel twin, or none                    ``TWINS`` (by model type) or ``CRITICS_WITHOUT_TWIN``
                                                           in mi_ref/accel/twins.py
critic              golden-vector spec, or none            a 'critic' component in ``COMPONENTS`` or
                                                           ``WITHOUT_GOLDEN_SPEC`` in mi_ref/vectors/components.py
critic              golden-vector param notes (with a      ``CRITIC_NOTES`` and ``TRAIN_CRITIC_NOTES`` in
                    spec)                                  mi_ref/vectors/builders.py
critic              PyTorch port, or none                  ``CRITIC_PORTS`` in mi_ref/porting/pytorch.py
critic              findings role, or none                 ``CRITIC_ROLES`` in mi_ref/findings.py
encoder             accel twin, or none                    ``TWINS`` (by model type) or ``ENCODERS_WITHOUT_TWIN``
                                                           in mi_ref/accel/twins.py
encoder             fast Jacobian, or none                 ``JACOBIANS`` (by model type) or
                                                           ``ENCODERS_WITHOUT_FAST_JACOBIAN`` in
                                                           mi_ref/accel/jacobians.py
encoder             golden-vector spec, or none            a component of its name's kind in ``COMPONENTS`` or
                                                           ``WITHOUT_GOLDEN_SPEC`` in mi_ref/vectors/components.py
encoder             PyTorch port, or none                  ``ENCODER_PORTS`` in mi_ref/porting/pytorch.py
estimator           golden-vector spec, or none            a 'bound' component in ``COMPONENTS`` or
                                                           ``WITHOUT_GOLDEN_SPEC`` in mi_ref/vectors/components.py
estimator           golden-vector symbol (with a spec)     ``ESTIMATOR_SYMBOLS`` in mi_ref/vectors/builders.py
estimator           PyTorch port, or none                  ``BOUNDS`` in mi_ref/porting/pytorch.py
activation          derivative (twins, fast Jacobians),    ``ACTIVATION_DERIVATIVES`` in
                    or none                                mi_ref/accel/activations.py
experiment          figure                                 ``PLOTTERS`` in mi_ref/plots.py
dataset             probe refit sd, or none                ``PROBE_REFIT_SD`` in mi_ref/effects.py
==================  =====================================  =====================================================

A metric-learning loss needs no declaration elsewhere. ``tests/test_registry.py`` runs :func:`missing` and
fails with :func:`report`'s lines; ``mi-ref vectors`` uses :func:`golden_gaps` to say which registered
critics, estimators and encoders (a plugin's) its vectors do not cover.
"""

from dataclasses import dataclass

from .registry import REGISTRIES


@dataclass(frozen=True)
class Missing:
    """Kind ``name`` of registry ``registry`` lacks ``declaration``; add it (or "none") ``where``."""

    registry: str
    name: str
    declaration: str
    where: str

    def __str__(self):
        return f"{self.registry} {self.name!r} lacks its {self.declaration}: declare it in {self.where}"


def _critic_twin(name):
    from . import critics
    from .accel import CRITICS_WITHOUT_TWIN, TWINS
    if name in CRITICS_WITHOUT_TWIN:
        return True
    try:
        model = critics.build(name, 4, 4)
    except Exception:                      # a factory that needs options cannot be built blind: declare it
        return False
    return type(model) in TWINS


def _has_spec(kind):
    def check(name):
        from .vectors.components import WITHOUT_GOLDEN_SPEC, golden_specs
        return name in WITHOUT_GOLDEN_SPEC[kind] or bool(golden_specs(kind, name))
    return check


def _in_builder_table(table_name, kind):
    """True if the name has no golden spec (nothing to build) or is in the builders' table ``table_name``."""
    def check(name):
        from .vectors import builders
        from .vectors.components import golden_specs
        return not golden_specs(kind, name) or name in getattr(builders, table_name)
    return check


def _in_port(table_name):
    def check(name):
        from .porting import pytorch
        return name in getattr(pytorch, table_name)
    return check


def _critic_role(name):
    from .findings import CRITIC_ROLES
    return name in CRITIC_ROLES


def _encoder(name):
    """The encoder ``name`` built for the encoders experiment's quick preset (None if its factory fails)."""
    from .experiments import encoders, get
    try:
        return encoders.ENCODERS.get(name)(get("encoders").presets["quick"], (14, 28))
    except Exception:                      # a factory that cannot be built blind: declare it
        return None


def _encoder_twin(name):
    from .accel import ENCODERS_WITHOUT_TWIN, TWINS
    return name in ENCODERS_WITHOUT_TWIN or type(_encoder(name)) in TWINS


def _encoder_fast_jacobian(name):
    from .accel.jacobians import ENCODERS_WITHOUT_FAST_JACOBIAN, has_fast_jacobian
    from .registry import MissingDeclaration
    try:
        return name in ENCODERS_WITHOUT_FAST_JACOBIAN or has_fast_jacobian(_encoder(name))
    except MissingDeclaration:             # its activation lacks a derivative: reported under "activation"
        return True


def _activation_derivative(name):
    from .accel.activations import ACTIVATION_DERIVATIVES
    return name in ACTIVATION_DERIVATIVES


def _figure(name):
    from .plots import PLOTTERS
    return name in PLOTTERS


def _probe_refit_sd(name):
    from .effects import PROBE_REFIT_SD
    return name in PROBE_REFIT_SD


TWIN = "TWINS (by model type) or CRITICS_WITHOUT_TWIN in mi_ref/accel/twins.py"
SPEC = "COMPONENTS (a '{0}' component) or WITHOUT_GOLDEN_SPEC['{1}'] in mi_ref/vectors/components.py"

# registry kind -> [(declaration, where to add it, check(name) -> declared)]
NEEDS = {
    "critic": [
        ("accel twin", TWIN, _critic_twin),
        ("golden-vector spec", SPEC.format("critic", "critic"), _has_spec("critic")),
        ("golden-vector param notes", "CRITIC_NOTES in mi_ref/vectors/builders.py",
         _in_builder_table("CRITIC_NOTES", "critic")),
        ("golden-vector param notes of a training step", "TRAIN_CRITIC_NOTES in mi_ref/vectors/builders.py",
         _in_builder_table("TRAIN_CRITIC_NOTES", "critic")),
        ("PyTorch port", "CRITIC_PORTS in mi_ref/porting/pytorch.py", _in_port("CRITIC_PORTS")),
        ("findings role", "CRITIC_ROLES in mi_ref/findings.py", _critic_role),
    ],
    "estimator": [
        ("golden-vector spec", SPEC.format("bound", "estimator"), _has_spec("estimator")),
        ("golden-vector symbol", "ESTIMATOR_SYMBOLS in mi_ref/vectors/builders.py",
         _in_builder_table("ESTIMATOR_SYMBOLS", "estimator")),
        ("PyTorch port", "BOUNDS in mi_ref/porting/pytorch.py", _in_port("BOUNDS")),
    ],
    "encoder": [
        ("accel twin", "TWINS (by model type) or ENCODERS_WITHOUT_TWIN in mi_ref/accel/twins.py", _encoder_twin),
        ("fast Jacobian", "JACOBIANS (by model type) or ENCODERS_WITHOUT_FAST_JACOBIAN in mi_ref/accel/jacobians.py",
         _encoder_fast_jacobian),
        ("golden-vector spec", "COMPONENTS (a component of the kind of its name) or WITHOUT_GOLDEN_SPEC['encoder'] "
                               "in mi_ref/vectors/components.py", _has_spec("encoder")),
        ("PyTorch port", "ENCODER_PORTS in mi_ref/porting/pytorch.py", _in_port("ENCODER_PORTS")),
    ],
    "activation": [
        ("derivative (for the twins and the fast Jacobians)", "ACTIVATION_DERIVATIVES in mi_ref/accel/activations.py",
         _activation_derivative),
    ],
    "experiment": [
        ("figure", "PLOTTERS in mi_ref/plots.py (plot_generic draws the bound and the accuracy)", _figure),
    ],
    "metric-learning loss": [],
    "dataset": [
        ("probe refit sd (the findings' SE of a paired difference)", "PROBE_REFIT_SD in mi_ref/effects.py",
         _probe_refit_sd),
    ],
}


def load_all():
    """Import every module that holds a registry, so that :data:`mi_ref.registry.REGISTRIES` is complete."""
    from . import bounds, critics, datasets, experiments, metric_learning, nn  # noqa: F401
    experiments.names()                                   # loads every experiment module
    return REGISTRIES


def missing(registry=None, name=None):
    """Every :class:`Missing` declaration of every registered kind (or of registry ``registry``, kind
    ``name``), in registry order. A registry this module has no list for is itself reported."""
    out = []
    for kind, reg in load_all().items():
        if registry is not None and kind != registry:
            continue
        if kind not in NEEDS:
            out.append(Missing(kind, "*", "list of needed declarations", "NEEDS in mi_ref/declarations.py"))
            continue
        for entry in reg.names():
            if name is not None and entry != name:
                continue
            out.extend(Missing(kind, entry, what, where) for what, where, check in NEEDS[kind] if not check(entry))
    return out


def report(gaps):
    """The lines a reader acts on: one per missing declaration."""
    return "\n".join(str(g) for g in gaps)


def golden_gaps():
    """``[(kind, name)]``: the registered critics, estimators and encoders that no golden-vector component
    checks and that are not declared "none" in :data:`mi_ref.vectors.components.WITHOUT_GOLDEN_SPEC`."""
    from .vectors.components import WITHOUT_GOLDEN_SPEC, golden_specs
    load_all()
    return [(kind, name) for kind in WITHOUT_GOLDEN_SPEC for name in REGISTRIES[kind].names()
            if name not in WITHOUT_GOLDEN_SPEC[kind] and not golden_specs(kind, name)]


__all__ = ["Missing", "NEEDS", "golden_gaps", "load_all", "missing", "report"]
