"""Batches of example indices: the endless, seeded, checkpointable streams every training loop draws from.

:func:`batch_stream` makes one of the two batchings (:data:`BATCHINGS`), driven by an explicit
``numpy.random.Generator``, their position saved and restored exactly:

* ``"shuffle_buffer"`` (the paper's, :class:`ShuffleBufferIterator`): a shuffle buffer of
  :data:`SHUFFLE_BUFFER` = 1000 over the stored order, batches across epochs, nothing dropped;
* ``"epoch_permutation"`` (:class:`BatchIterator`): a fresh permutation per epoch, its remainder dropped.

Pure functions of integers and a generator: nothing here reads or writes a file (the checkpoints that hold
a stream's :meth:`~ShuffleBufferIterator.state` are written by :mod:`mi_ref.loop`).
"""

import copy

import numpy as np

from .checks import generator, positive_int


def _plain(value):
    """Numpy scalars/arrays inside a bit-generator state -> plain Python ints/lists (JSON-friendly)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value


BATCHINGS = ("shuffle_buffer", "epoch_permutation")
SHUFFLE_BUFFER = 1000           # the paper's notebook: dataset.shuffle(1000)


def batch_stream(batching, n, batch_size, rng, buffer_size=SHUFFLE_BUFFER):
    """The endless index batches of a training loop: ``batching`` is ``"shuffle_buffer"`` (the paper's
    stream, :class:`ShuffleBufferIterator`) or ``"epoch_permutation"`` (:class:`BatchIterator`)."""
    if batching == "shuffle_buffer":
        return ShuffleBufferIterator(n, batch_size, rng, buffer_size)
    if batching == "epoch_permutation":
        return BatchIterator(n, batch_size, rng)
    raise ValueError(f"unknown batching {batching!r}; expected one of {list(BATCHINGS)}")


def _check_batch_size(n, batch_size, what):
    positive_int(n, f"{what} n")
    positive_int(batch_size, f"{what} batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the number of examples {n}: use batch_size <= "
                         f"{n} (a batch would hold the same example twice, or none could be formed)")


class ShuffleBufferIterator:
    """Endless batches of example indices as the paper's input pipeline makes them: tf.data's
    ``dataset.shuffle(buffer_size).repeat().batch(batch_size, drop_remainder=True)`` over the examples in
    their stored order 0, 1, ..., n - 1.

    One pass over the data (an epoch) is a shuffle buffer: it starts holding examples 0 .. buffer_size - 1;
    each output picks a uniformly random slot j of the buffer, emits its example and refills the slot with
    the next example of the stored order; once the order is used up, the slot is filled with the buffer's
    last entry and the buffer shrinks, until it is empty. Then the next epoch starts a new pass (a new
    buffer, new random picks), and the examples run on without a break: ``repeat()`` comes before
    ``batch()``, so batches straddle epoch boundaries and no example is dropped (the "drop remainder" of an
    endless stream never applies). An example therefore moves at most ``buffer_size - 1`` places ahead of
    its stored position, and a batch sees a window of the stored order, not the whole dataset.

    Randomness: each batch draws ``rng.random(batch_size)``, one uniform u per output, and the slot is
    floor(u * buffer length). The iterator must be the only user of ``rng``. :meth:`state` stores the
    buffer, the position in the stored order, the epoch and the generator's state (plain JSON), so a
    restored iterator continues with exactly the batches the original would have produced.
    """

    KIND = "shuffle_buffer"

    def __init__(self, n, batch_size, rng, buffer_size=SHUFFLE_BUFFER):
        _check_batch_size(n, batch_size, "ShuffleBufferIterator")
        positive_int(buffer_size, "shuffle buffer size")
        generator(rng)
        self.n, self.batch_size, self.buffer_size = int(n), int(batch_size), int(buffer_size)
        self.rng = rng
        self.epoch = 0
        self._start_epoch()

    def _start_epoch(self):
        self._buffer = list(range(min(self.buffer_size, self.n)))
        self._next = len(self._buffer)           # the next example of the stored order to enter the buffer

    def _take(self, u):
        """One example: the buffer's slot floor(u * length), refilled from the stored order (or dropped)."""
        if not self._buffer:                     # this pass is used up: the next epoch begins
            self.epoch += 1
            self._start_epoch()
        buf = self._buffer
        j = min(int(u * len(buf)), len(buf) - 1)
        out = buf[j]
        if self._next < self.n:
            buf[j] = self._next
            self._next += 1
        else:
            buf[j] = buf[-1]
            buf.pop()
        return out

    def __iter__(self):
        return self

    def __next__(self):
        return np.array([self._take(u) for u in self.rng.random(self.batch_size)], dtype=np.int64)

    def state(self):
        """The position as plain JSON: kind, n, batch_size, buffer_size, epoch, buffer (the example indices
        in the buffer, in slot order), next (the next example of the stored order) and rng (the generator's
        ``bit_generator.state``)."""
        return {"kind": self.KIND, "n": self.n, "batch_size": self.batch_size, "buffer_size": self.buffer_size,
                "epoch": self.epoch, "buffer": list(self._buffer), "next": self._next,
                "rng": _plain(self.rng.bit_generator.state)}

    def restore(self, state):
        """Continue from a :meth:`state` (``ValueError`` naming what is wrong with a damaged one)."""
        expected = {"kind", "n", "batch_size", "buffer_size", "epoch", "buffer", "next", "rng"}
        if isinstance(state, dict) and state.get("kind", self.KIND) != self.KIND:
            raise ValueError(f"the saved batch stream is {state['kind']!r}, this run uses {self.KIND!r}")
        if not isinstance(state, dict) or expected - set(state):
            raise ValueError(f"a shuffle-buffer state needs the keys {sorted(expected)}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        for key in ("n", "batch_size", "buffer_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the saved batch stream has {key}={state[key]!r}, this run {getattr(self, key)}")
        buf, nxt, epoch = state["buffer"], state["next"], state["epoch"]
        ints = isinstance(buf, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in buf)
        if not (ints and isinstance(nxt, int) and isinstance(epoch, int) and epoch >= 0
                and len(buf) <= self.buffer_size and len(set(buf)) == len(buf)
                and all(0 <= i < nxt for i in buf) and len(buf) <= nxt <= self.n
                and (nxt == self.n or len(buf) == min(self.buffer_size, self.n))):
            raise ValueError(f"the saved shuffle buffer is not one this stream can be in (epoch {epoch!r}, next "
                             f"{nxt!r}, {len(buf) if isinstance(buf, list) else '?'} entries): the checkpoint was "
                             "edited or damaged")
        _restore_generator(self.rng, state["rng"], "ShuffleBufferIterator")
        self._buffer, self._next, self.epoch = list(buf), nxt, epoch
        return self


def _restore_generator(rng, saved, what):
    if not isinstance(saved, dict) or saved.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(f"{what} state was saved with bit generator "
                         f"{saved.get('bit_generator') if isinstance(saved, dict) else saved!r}, this one uses "
                         f"{type(rng.bit_generator).__name__!r}")
    try:
        rng.bit_generator.state = saved
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{what} state holds an unusable generator state ({err})") from None


class BatchIterator:
    """Endless batches of example indices: ``for idx in BatchIterator(n, 128, rng): x[idx] ...``.

    The ``"epoch_permutation"`` batching (not the paper's; see :class:`ShuffleBufferIterator`). Epoch e
    draws ``order = rng.permutation(n)`` and yields ``order[i * B:(i + 1) * B]`` for i = 0 .. n // B - 1
    (int64 index arrays; the last n mod B examples of each epoch are dropped); then epoch e + 1 draws a new
    permutation. The same generator state gives the same batches.

    The iterator must be the only user of ``rng`` (give it its own, e.g. ``default_rng(seed)``):
    :meth:`state` records the generator's state at the start of the current epoch plus the position
    in it, and :meth:`restore` / :meth:`from_state` redraw that epoch's permutation from it, so a restored
    iterator continues with exactly the batches the original would have produced.
    """

    KIND = "epoch_permutation"

    def __init__(self, n, batch_size, rng):
        _check_batch_size(n, batch_size, "BatchIterator")
        generator(rng)
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.rng = rng
        self.epoch = 0          # index of the current epoch
        self.position = 0       # index of the next batch within the current epoch
        self._epoch_state = _plain(rng.bit_generator.state)
        self._order = rng.permutation(self.n)

    @property
    def batches_per_epoch(self):
        """n // batch_size."""
        return self.n // self.batch_size

    def __iter__(self):
        return self

    def __next__(self):
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._epoch_state = _plain(self.rng.bit_generator.state)
            self._order = self.rng.permutation(self.n)
        start = self.position * self.batch_size
        self.position += 1
        return self._order[start:start + self.batch_size].astype(np.int64)

    def state(self):
        """The position as a small dict of plain ints and a plain dict (storable as JSON).

        Keys: n, batch_size, epoch, position (batches already taken from this epoch) and rng (the
        generator's ``bit_generator.state`` at the start of this epoch, before its permutation).
        """
        return {"kind": self.KIND, "n": self.n, "batch_size": self.batch_size, "epoch": self.epoch,
                "position": self.position, "rng": copy.deepcopy(self._epoch_state)}

    def restore(self, state):
        """Continue from a :meth:`state`: sets this iterator's position and its generator's state."""
        if not isinstance(state, dict):
            raise ValueError(f"BatchIterator state must be a dict, got {type(state).__name__}")
        if state.get("kind", self.KIND) != self.KIND:
            raise ValueError(f"the saved batch stream is {state['kind']!r}, this run uses {self.KIND!r}")
        missing = {"n", "batch_size", "epoch", "position", "rng"} - set(state)
        if missing:
            raise ValueError(f"BatchIterator state lacks the keys {sorted(missing)}; pass a dict returned by "
                             "BatchIterator.state()")
        if int(state["n"]) != self.n or int(state["batch_size"]) != self.batch_size:
            raise ValueError(f"BatchIterator state is for n={state['n']}, batch_size={state['batch_size']} "
                             f"but this iterator has n={self.n}, batch_size={self.batch_size}")
        position = int(state["position"])
        if not 0 <= position <= self.batches_per_epoch or int(state["epoch"]) < 0:
            raise ValueError(f"BatchIterator state has epoch={state['epoch']}, position={position}; expected "
                             f"epoch >= 0 and 0 <= position <= {self.batches_per_epoch}")
        if state["rng"].get("bit_generator") != type(self.rng.bit_generator).__name__:
            raise ValueError(f"BatchIterator state was saved with bit generator "
                             f"{state['rng'].get('bit_generator')!r}, this iterator uses "
                             f"{type(self.rng.bit_generator).__name__!r}")
        self.rng.bit_generator.state = state["rng"]
        self._epoch_state = _plain(self.rng.bit_generator.state)
        self._order = self.rng.permutation(self.n)
        self.epoch = int(state["epoch"])
        self.position = position
        return self

    @classmethod
    def from_state(cls, state):
        """A new iterator (with a new generator of the saved kind) that continues from ``state``."""
        try:
            bit_generator = getattr(np.random, state["rng"]["bit_generator"])
        except (KeyError, TypeError, AttributeError):
            raise ValueError("BatchIterator state must hold the rng state of a numpy bit generator under "
                             "'rng'; pass a dict returned by BatchIterator.state()") from None
        it = cls(int(state["n"]), int(state["batch_size"]), np.random.Generator(bit_generator()))
        return it.restore(state)
