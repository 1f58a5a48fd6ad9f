"""The checkpointed loop every training loop of mi-ref runs in: its random streams, checkpoints and resumption.

One :class:`Loop` per (run, variant). It owns

* the variant's random streams (:data:`STREAMS`), all spawned from one ``SeedSequence([seed, variant])``, so
  that every variant can be resumed on its own and one seed fixes a run bit for bit;
* the batch iterators drawn from some of those streams;
* the checkpoint: written at every evaluation, it holds the named parameter trees, their Adam states, the
  position of every stream and iterator, the step and the wall time so far (one key scheme for every loop:
  ``params/NAME/PATH``, ``adam/NAME/...``, ``extra/NAME`` arrays and a JSON ``__meta__``);
* resumption: :meth:`Loop.resume` restores all of it and brings ``metrics.jsonl`` in line with the
  checkpoint, or starts the variant afresh; the arrays it returns are owned copies, so the loop may update
  them in place (:func:`mi_ref.accel.adam_update`);
* the end: :meth:`Loop.finish` keeps the state after the last step (if the run keeps its trained state,
  :attr:`mi_ref.results.RunDir.keep_state`) as ``final/VARIANT.npz``, in the checkpoints' format, with the
  training streams where the next step would take them, so that a longer run resumed from it continues
  exactly as a fresh run of that length (:mod:`mi_ref.extend`), and records the variant finished.

A loop with ``store=None`` runs in memory: nothing is saved and nothing is resumed.
"""

import time

import numpy as np

from . import faults
from .accel import adam_update, owned
from .batches import SHUFFLE_BUFFER, batch_stream
from .optim import state_from_arrays, state_to_arrays
from .checkpoints import rows_sha256
from .tree import tree_from_dict, tree_to_dict

STREAMS = ("init", "data", "noise", "eval", "bound_data", "bound_noise")


def variant_streams(seed, variant_index):
    """Independent generators for one (seed, variant), in the order of :data:`STREAMS`: the initial params,
    the training batch order, the training noise, the evaluation noise (probe and ``bound_test``), and the
    batch order and noise of the plotted bound. (SeedSequence children are fixed by their index, so a
    stream keeps its numbers whatever streams are added after it.)"""
    seqs = np.random.SeedSequence([int(seed), int(variant_index)]).spawn(len(STREAMS))
    return [np.random.default_rng(s) for s in seqs]


class Loop:
    """The resumable state of one variant's training loop (see the module docstring).

    ``store``: a :class:`mi_ref.results.RunDir` or None; ``variant``: its name in the run; ``seed`` and
    ``index`` choose the streams. ``rng[name]`` is the generator of stream ``name``.
    """

    def __init__(self, store, variant, seed, index):
        self.store, self.variant = store, variant
        self.rng = dict(zip(STREAMS, variant_streams(seed, index)))
        self.iterators = {}
        self.start, self.rows, self.extra = 0, [], {}
        self.meta, self.resumed, self.reevaluate = {}, False, False
        self._seconds, self._clock = 0.0, time.perf_counter()

    def iterator(self, stream, n, batch_size, batching="shuffle_buffer", buffer_size=SHUFFLE_BUFFER):
        """The endless index batches over ``n`` examples of :func:`mi_ref.batches.batch_stream` (``batching``:
        the paper's ``"shuffle_buffer"`` or ``"epoch_permutation"``), driven by stream ``stream`` (which it
        then owns; its position, the shuffle buffer included, is checkpointed with the iterator)."""
        it = batch_stream(batching, n, batch_size, self.rng[stream], buffer_size)
        self.iterators[stream] = it
        return it

    def seconds(self):
        """Wall time of this variant so far, summed over interrupted sessions."""
        return self._seconds + time.perf_counter() - self._clock

    def snapshot(self, *streams):
        """The current positions of ``streams`` (iterators and generators), to be saved by a later
        :meth:`checkpoint` in place of the positions they will have by then."""
        return {name: self._position(name) for name in streams}

    def _restore(self, name, position):
        if name in self.iterators:
            self.iterators[name].restore(position)
        else:
            self.rng[name].bit_generator.state = position

    def _position(self, name):
        if name in self.iterators:
            return self.iterators[name].state()
        return self.rng[name].bit_generator.state

    def resume(self, trees, states):
        """Start the variant: from its checkpoint if the store holds one, else afresh.

        ``trees``: ``{name: params tree}`` freshly initialized (the templates of the checkpoint's arrays);
        ``states``: ``{name: Adam state}`` of the trees that have an optimizer. Returns owned copies
        ``(trees, states)``; sets ``resumed``, ``start`` (the step to continue at), ``reevaluate`` (True if
        the row of step ``start`` must be evaluated again: it was lost, the evaluation streams are then at
        their positions before that evaluation; or, for a state saved after a step without a row, the final
        state of a shorter run, it is to be evaluated if the schedule has one there), ``rows`` (this
        variant's metric rows kept on disk),
        ``extra`` (the arrays saved with ``checkpoint(..., extra=...)``) and ``meta``. (Run
        :meth:`mi_ref.results.RunDir.audit` first: it checks the directory's files agree.)
        """
        ckpt = self.store.load_checkpoint(self.variant) if self.store is not None else None
        if ckpt is not None:
            fresh = {name: self._position(name) for name in list(self.iterators) + list(self.rng)}
            try:
                restored = self._restored(trees, states, *ckpt)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
                for name, position in fresh.items():     # every stream where a fresh start has it
                    self._restore(name, position)
                self.store.unusable_checkpoint(self.variant, f"{type(err).__name__}: {err}")   # raises unless repairing
                ckpt = None
        if ckpt is None:
            if self.store is not None:
                self.store.truncate_variant(self.variant, None)
        else:
            arrays, meta = ckpt
            trees, states = restored
            self.start, self._seconds = int(meta["step"]), float(meta["seconds"])
            self.extra = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
            self.meta = meta.get("loop", {})
            self.rows = self.store.truncate_variant(self.variant, self.start)
            self.resumed = True
            # the row of the checkpoint's own step lost (outside damage): evaluate again from the positions
            # the evaluation streams had before it, which gives the same row
            if meta.get("evaluated", True) and self.start not in [r["step"] for r in self.rows]:
                self.reevaluate = True
                for name, position in meta.get("before_eval", {}).items():
                    self._restore(name, position)
            elif not meta.get("evaluated", True):       # no row at this step: the loop evaluates it if it is due
                self.reevaluate = True
        self._clock = time.perf_counter()
        owned_trees, owned_states = {}, {}
        for name, tree in trees.items():
            if name in states:
                owned_trees[name], owned_states[name] = owned(tree, states[name])
            else:
                owned_trees[name] = owned(tree, {"step": 0, "m": {}, "v": {}})[0]
        return owned_trees, owned_states

    def _restored(self, trees, states, arrays, meta):
        """``(trees, states)`` from a checkpoint's arrays, with every stream and iterator set to the positions
        it saved; an error if they do not fit this loop's (it then leaves the positions half set)."""
        trees = {name: tree_from_dict(tree, arrays, f"params/{name}/") for name, tree in trees.items()}
        states = {name: state_from_arrays(trees[name], arrays, f"adam/{name}/") for name in states}
        unknown = sorted(set(meta["iterators"]) - set(self.iterators) | set(meta["streams"]) - set(self.rng))
        if unknown:
            raise ValueError(f"it holds the positions of streams this loop does not have: {unknown}")
        for name, position in list(meta["iterators"].items()) + list(meta["streams"].items()):
            self._restore(name, position)
        for name, position in meta.get("before_eval", {}).items():
            self._check_position(name, position)
        return trees, states

    def _check_position(self, name, position):
        """Raise if ``position`` could not be restored into stream ``name`` (the stream is left as it is)."""
        if name not in self.iterators and name not in self.rng:
            raise ValueError(f"it holds the position of a stream this loop does not have: {name!r}")
        now = self._position(name)
        try:
            self._restore(name, position)
        finally:
            self._restore(name, now)

    def evaluates(self, step, scheduled):
        """Whether the loop evaluates (records a row) at ``step``: the one resume condition of every loop.

        ``scheduled``: the step is on the variant's evaluation schedule. True when it is, except at the step
        a resumed variant continues at (:attr:`start`) when that step's row is already on disk; there it is
        True only if the row is to be evaluated again (:attr:`reevaluate`: it was lost, or the state is the
        final one of a shorter run, saved after a step without a row). Evaluating there gives the row an
        uninterrupted run has, because :meth:`resume` left the evaluation streams where they were before it.
        """
        if self.resumed and step == self.start:
            return bool(scheduled) and self.reevaluate
        return bool(scheduled)

    def record(self, row):
        """Append a metric row of this variant (to the store, and to :attr:`rows`)."""
        self.rows.append(row)
        if self.store is not None:
            self.store.append_metrics(row)

    def checkpoint(self, step, trees, states, snapshot=None, extra=None, before_eval=None, evaluated=True,
                   **meta):
        """Save everything needed to continue at ``step``: ``trees`` and their Adam ``states``, the
        positions of every stream and iterator (``snapshot`` overrides some, see :meth:`snapshot`), the wall
        time so far, the steps of the rows recorded so far and the SHA-256 of each, whether the variant's
        arrays file exists (it is then read back on resume), ``extra`` arrays and JSON-able ``meta`` (given
        back as ``self.meta`` on resume). ``before_eval``: the positions the evaluation streams had before
        the evaluation of ``step`` (a snapshot), so that a lost row of that step can be evaluated again;
        ``evaluated=False`` for a checkpoint whose step has no row."""
        if self.store is None:
            return
        self.store.save_checkpoint(self.variant, *self._state(step, trees, states, snapshot, extra, before_eval,
                                                              evaluated, meta))

    def _state(self, step, trees, states, snapshot, extra, before_eval, evaluated, meta):
        """``(arrays, metadata)`` of a checkpoint or a final state (see :meth:`checkpoint`)."""
        snapshot = snapshot or {}
        arrays = {}
        for name, tree in trees.items():
            arrays.update(tree_to_dict(tree, f"params/{name}/"))
        for name, state in states.items():
            arrays.update(state_to_arrays(state, f"adam/{name}/"))
        for name, value in (extra or {}).items():
            arrays[f"extra/{name}"] = np.asarray(value)
        owned_by_iterators = {it.rng for it in self.iterators.values()}
        positions = {
            "iterators": {n: snapshot.get(n, it.state()) for n, it in self.iterators.items()},
            "streams": {n: snapshot.get(n, g.bit_generator.state) for n, g in self.rng.items()
                        if g not in owned_by_iterators},
        }
        return arrays, dict(
            positions, step=int(step), seconds=self.seconds(), loop=meta, before_eval=before_eval or {},
            evaluated=evaluated, row_steps=[r["step"] for r in self.rows],
            row_sha256=[rows_sha256([r]) for r in self.rows], arrays=self.store.arrays_path(self.variant).exists())

    def update(self, adam, params, grads, state):
        """One Adam step, in place on the loop's own arrays (:func:`mi_ref.accel.adam_update`)."""
        faults.point("update")
        return adam_update(adam, params, grads, state, inplace=True)

    def finish(self, step, trees, states, snapshot=None, extra=None, evaluated=True, **meta):
        """The variant is finished after its last step ``step``: if the store keeps the trained state
        (:attr:`mi_ref.results.RunDir.keep_state`), save it as ``final/VARIANT.npz`` first, in the format of
        :meth:`checkpoint` (its arguments), then record the variant finished (:meth:`done`). ``snapshot``
        must hold the training streams' positions before anything drawn after the last step (e.g. the batch
        of an evaluation after it), so that a longer run continues with the batches a fresh run of that
        length draws; ``evaluated``: whether ``step`` has a row."""
        if self.store is not None and self.store.keep_state:
            self.store.save_final(self.variant, *self._state(step, trees, states, snapshot, extra, None,
                                                             evaluated, meta))
        self.done()

    def done(self):
        """The variant is finished: record it (and drop its checkpoint)."""
        if self.store is not None:
            self.store.mark_done(self.variant)
