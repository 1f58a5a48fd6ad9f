"""Registries: one per extension point of mi-ref (activations, estimators, critics, encoders, experiments,
metric-learning losses, datasets).

A registry maps a name to an object and to optional metadata (a label for figures, a description). Every
consumer (models, experiments, plots, golden vectors, the CLI) reads the same registry, so adding an entry
is adding one line next to the new object; an unknown name is an error that lists the valid ones and never
falls through to a default.

The other parts of the package describe a registered kind in tables of their own, keyed by the registry
name, beside their code (the speed wing its twins, the golden vectors their specs, the PyTorch port its
ports, the findings the critics' roles). Such a table may say :data:`NONE` for a kind on purpose; a kind
it does not mention at all is an error (:func:`declared`), never a guess. ``tests/test_registry.py``
walks every registry (:data:`REGISTRIES`) and names what each kind lacks.
"""

# every Registry made, by its kind ("critic", "estimator", ...): what the declaration walk visits
REGISTRIES = {}

# a declaration that says on purpose that a kind has no such thing (no twin, no port, ...); the table's
# comment says why
NONE = "none"


class MissingDeclaration(ValueError):
    """A registered kind lacks a declaration that the caller needs (raised by :func:`declared`)."""


def declared(table, name, kind, what, where):
    """``table[name]``, or :class:`MissingDeclaration` naming the ``kind`` ``name``, the declaration
    ``what`` it lacks and the file ``where`` to add it (an entry there, or ``NONE`` to say it has none)."""
    if name not in table:
        raise MissingDeclaration(f"{kind} {name!r} has no {what}: add an entry for {name!r} to {where} "
                                 f"(or {NONE!r} if it has none)")
    return table[name]


class Registry:
    """``name -> object`` (insertion order kept) with metadata; ``get`` raises ``ValueError`` for an
    unknown name, listing the known ones."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}
        self._meta = {}
        REGISTRIES[kind] = self

    def unregister(self, name):
        """Remove entry ``name`` (a plugin's test that registered a kind for its own use)."""
        self.get(name)
        del self._entries[name], self._meta[name]

    def register(self, name, obj=None, **meta):
        """Register ``obj`` under ``name`` (also usable as a decorator: ``@REG.register("name", label=...)``).
        A name can be registered once."""
        def add(o):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered already")
            self._entries[name] = o
            self._meta[name] = dict(meta)
            return o
        return add if obj is None else add(obj)

    def get(self, name):
        """The object registered as ``name``; ``ValueError`` listing the valid names otherwise."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {self.names()}")
        return self._entries[name]

    def meta(self, name, key, default=None):
        """Metadata ``key`` of entry ``name`` (``default`` if it has none)."""
        self.get(name)
        return self._meta[name].get(key, default)

    def check(self, names, what=None):
        """Raise ``ValueError`` unless every name of ``names`` is registered (e.g. a config's tuple)."""
        unknown = [n for n in names if n not in self._entries]
        if unknown:
            raise ValueError(f"unknown {what or self.kind + 's'} {unknown}; expected names from {self.names()}")
        return tuple(names)

    def names(self):
        return list(self._entries)

    def items(self):
        return list(self._entries.items())

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)
