"""`BatchSource`: the data of a recalibration, as a re-iterable source of input batches."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import keras

from keras_bn_tools._validation import check_positive_int

__all__ = ["BatchSource", "num_rows"]


def _is_tf_dataset(data: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "__getitem__") and len(x.shape) >= 1


def _inputs_of(element: Any) -> Any:
    """The model inputs in one batch: `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`.

    As in Keras's `fit`, a list batch is read like a tuple.
    """
    if isinstance(element, (tuple, list)):
        if not 1 <= len(element) <= 3:
            raise ValueError(
                "Each batch of `data` must be `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`; "
                f"got a {type(element).__name__} of length {len(element)}. For a model with "
                "several inputs, pass them as a dict or as the first item of a tuple."
            )
        return element[0]
    return element


def _is_input_list(x: Any, num_inputs: int | None) -> bool:
    """True if `x` is `[x1, ..., xk]` for a model with `k = num_inputs >= 2` inputs."""
    return (
        isinstance(x, list)
        and num_inputs is not None
        and num_inputs >= 2
        and len(x) == num_inputs
        and all(_is_array(item) for item in x)
    )


def _check_batch(batch: Any) -> None:
    leaves = keras.tree.flatten(batch)
    if not leaves or not all(_is_array(leaf) for leaf in leaves):
        raise TypeError(
            "Each batch of `data` must be an array or tensor with a batch axis (or a dict or "
            f"tuple of them); got {type(batch).__name__}: {batch!r:.80}."
        )


def num_rows(batch: Any) -> int:
    """Rows (samples) in one batch of model inputs."""
    leaves = keras.tree.flatten(batch)
    return int(leaves[0].shape[0]) if leaves else 0


class BatchSource:
    """A re-iterable source of input batches, at most `num_batches` of them.

    The forms of `data` (the same as `recalibrate_batchnorm`'s):

    - in-memory arrays, sliced into `batch_size` rows: an array `x`, a tuple
      `(x,)`, `(x, y)` or `(x, y, sample_weight)` (Keras's convention: only `x`
      is used), or a dict of input arrays;
    - a **list** is a list of batches (each `x` or `(x, y[, sample_weight])`),
      never `[x, y]`: pass a tuple for that. One exception, decided by the
      model's number of inputs: for a model with `k >= 2` inputs, a list of
      exactly `k` arrays is the inputs `[x1, ..., xk]`, sliced into batches,
      as `model.fit` reads it (a list of batches for such a model holds tuples,
      lists or dicts, never bare arrays, so the two cannot be confused);
    - a batched `tf.data.Dataset`, a `keras.utils.PyDataset` or any
      re-iterable of batches, read again on each pass;
    - a one-shot iterator or generator, cached in memory on the first pass.

    A source whose length is unknown (a generator, a `PyDataset` without
    `__len__`) and that is still yielding after `max_uncounted_batches`
    batches without `num_batches` is taken as endless: `ValueError` naming
    `num_batches`. An infinitely repeated `tf.data.Dataset` is refused at once.

    Args:
        data: see above.
        batch_size: rows per batch for in-memory arrays.
        num_batches: read at most this many batches per pass (None: all).
        num_inputs: the model's number of inputs, if known (None: a list is
            always a list of batches).

    Raises:
        ValueError: empty arrays, arrays of different lengths, or an endless
            source without `num_batches`.
        TypeError: `data` of an unsupported type.
    """

    #: Batches read from a source of unknown length, without `num_batches`,
    #: before it is taken as endless.
    max_uncounted_batches = 100_000

    def __init__(
        self,
        data: Any,
        batch_size: int = 32,
        num_batches: int | None = None,
        *,
        num_inputs: int | None = None,
    ):
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_batches = check_positive_int("num_batches", num_batches, allow_none=True)
        self._arrays = None
        self._iterable: Callable[[], Iterator[Any]] | None = None
        self._cache: list[Any] | None = None
        self._one_shot: Iterator[Any] | None = None
        self._counted = False  # the source's length is known
        self.is_tf_dataset = _is_tf_dataset(data)

        if isinstance(data, (str, bytes)):
            raise TypeError(f"`data` must be arrays or batches of arrays, got a string {data!r}.")
        if data is None or (hasattr(data, "shape") and len(data.shape) == 0):
            raise ValueError(f"`data` must hold a batch dimension; got {data!r}.")
        x = _inputs_of(data) if isinstance(data, tuple) else data
        leaves = keras.tree.flatten(x) if isinstance(x, (dict, tuple)) else [x]
        if _is_input_list(x, num_inputs):
            self._init_arrays(list(x), list(x))
        elif not isinstance(x, list) and leaves and all(_is_array(leaf) for leaf in leaves):
            self._init_arrays(x, leaves)
        elif isinstance(data, keras.utils.PyDataset):
            self._counted = getattr(data, "num_batches", None) is not None
            self._iterable = lambda: self._from_py_dataset(data)
        elif self.is_tf_dataset:
            self._init_tf_dataset(data)
        elif isinstance(data, (list, tuple)):
            self._counted = True
            self._iterable = lambda: (_inputs_of(element) for element in data)
        elif hasattr(data, "__iter__"):
            if iter(data) is data:  # a generator or another one-shot iterator
                self._one_shot = data
                self._cache = []
            else:
                self._counted = hasattr(data, "__len__")
                self._iterable = lambda: (_inputs_of(element) for element in data)
        else:
            raise TypeError(
                "`data` must be a NumPy array or tensor, a tuple `(x, y)`, a dict of arrays, a "
                "list of batches, a tf.data.Dataset, a keras.utils.PyDataset or an iterable of "
                f"batches; got {type(data).__name__}."
            )

    def _init_arrays(self, x: Any, leaves: list[Any]) -> None:
        for leaf in leaves:
            kind = getattr(getattr(leaf, "dtype", None), "kind", "f")
            if kind not in "biuf":
                raise TypeError(
                    f"`data` must hold numbers; got an array of dtype {leaf.dtype} "
                    f"(shape {tuple(leaf.shape)})."
                )
        sizes = {int(leaf.shape[0]) for leaf in leaves}
        if len(sizes) != 1:
            raise ValueError(
                f"All input arrays of `data` must have the same length; got {sorted(sizes)}."
            )
        self._arrays = x
        self._size = sizes.pop()
        self._counted = True
        if self._size == 0:
            raise ValueError("`data` is empty: the input arrays have 0 samples.")

    def _init_tf_dataset(self, data: Any) -> None:
        import tensorflow as tf

        cardinality = int(data.cardinality())
        if cardinality == int(tf.data.INFINITE_CARDINALITY) and self.num_batches is None:
            raise ValueError(
                "`data` is an endless tf.data.Dataset (`.repeat()` without a count): pass "
                "`num_batches` to say how many batches to use."
            )
        self._counted = cardinality >= 0
        self._iterable = lambda: (_inputs_of(element) for element in data)

    @staticmethod
    def _from_py_dataset(dataset: keras.utils.PyDataset) -> Iterator[Any]:
        count = getattr(dataset, "num_batches", None)
        indices = range(count) if count is not None else itertools.count()
        for index in indices:
            try:
                element = dataset[index]
            except IndexError:
                if count is not None:
                    raise
                return
            yield _inputs_of(element)

    def _raw(self) -> Iterator[Any]:
        if self._arrays is not None:
            for start in range(0, self._size, self.batch_size):
                stop = start + self.batch_size
                yield keras.tree.map_structure(
                    lambda a, start=start, stop=stop: a[start:stop], self._arrays
                )
        elif self._iterable is not None:
            yield from self._iterable()
        else:  # one-shot: replay the cache, then keep reading (and caching) the iterator
            yield from self._cache
            for element in self._one_shot:
                batch = _inputs_of(element)
                self._cache.append(batch)
                yield batch

    def __iter__(self) -> Iterator[Any]:
        limit = self.num_batches
        for index, batch in enumerate(self._raw()):
            if limit is not None and index >= limit:
                return
            if limit is None and not self._counted and index >= self.max_uncounted_batches:
                raise ValueError(
                    f"`data` has yielded {index} batches and has not ended: an endless "
                    "generator or dataset needs `num_batches` (how many batches to use)."
                )
            _check_batch(batch)
            yield batch
