"""Registries: one per extension point of mi-ref (activations, estimators, critics, experiments).

A registry maps a name to an object and to optional metadata (a label for figures, a description). Every
consumer (models, experiments, plots, golden vectors, the CLI) reads the same registry, so adding an entry
is adding one line next to the new object; an unknown name is an error that lists the valid ones and never
falls through to a default.
"""


class Registry:
    """``name -> object`` (insertion order kept) with metadata; ``get`` raises ``ValueError`` for an
    unknown name, listing the known ones."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}
        self._meta = {}

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
