"""The training stream as a mixture of per-source streams read through per-source cursors.

Why not megatron's ``BlendedDataset``: its index maps global sample *i* to (source, sample)
for one fixed set of weights, so a resumed run with other weights (a new stage, or a
changed ``data.weights``) indexes a different blend with the old ``consumed_samples``:
each source's position jumps, some samples are read twice and others never
(tests/pretrain/data/test_mixture_resume.py measured 51 of 360 repeats).

Here each source is its own stream (:class:`SourceStream`): megatron's one-epoch
``GPTDataset`` (documents shuffled by ``train.seed``, packed into sequences), then epoch
after epoch in a fresh seeded permutation, so sample *k* of a source is fixed whatever the
weights, the run length or the stage. The global stream is a list of :class:`Segment`\\ s:
from global sample ``start`` on, sources are drawn with ``weights`` (megatron's
deterministic greedy blending, prefix-stable: the first *n* draws do not depend on how
many are built) and source *s* continues from ``cursors[s]``, the number of its samples
read before ``start``. A weight change starts a new segment at the current position with
the cursors reached there, so no source repeats or skips a sample within an epoch, and the
segments (a few numbers each) are all a checkpoint needs to resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_BIG = 2 ** 62  # len() of the stream: it never ends (sources cycle through epochs)


class SourceStream:
    """One source's samples in its own fixed order: epoch 0 is megatron's shuffled one-epoch
    ``GPTDataset``; epoch e > 0 permutes it again with a generator seeded by
    (seed, source index, e), so every epoch reads every sample exactly once."""

    def __init__(self, dataset: Any, seed: int, source_index: int) -> None:
        self.dataset, self.seed, self.source_index = dataset, seed, source_index
        self.epoch_size = len(dataset)
        if self.epoch_size == 0:
            raise ValueError(f"source {source_index} has no complete sequence")
        self._permutations: dict[int, np.ndarray] = {}

    def index(self, k: int) -> int:
        """The one-epoch dataset index sample ``k`` of this stream reads."""
        epoch, j = divmod(k, self.epoch_size)
        if epoch == 0:
            return j
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.seed, self.source_index, epoch])
            self._permutations[epoch] = rng.permutation(self.epoch_size)
        return int(self._permutations[epoch][j])

    def __getitem__(self, k: int) -> dict:
        return self.dataset[self.index(k)]


@dataclass
class Segment:
    """From global sample ``start`` on: draw sources by ``weights`` (normalised, one per
    source, 0 allowed), source s continuing at its ``cursors[s]``-th sample."""

    start: int
    weights: list[float]
    cursors: list[int]
    _sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16), repr=False)
    _offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    def draws(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, sample index within the segment's draws of that source) for the first
        ``count`` draws; built by doubling (the greedy draws are prefix-stable)."""
        if len(self._sources) < count:
            from megatron.core.datasets import helpers

            size = max(count, 2 * len(self._sources), 1024)
            # only sources with a positive weight: the greedy rule breaks ties towards the
            # first source, so a weight-0 one would otherwise be drawn now and then
            active = np.flatnonzero(np.asarray(self.weights) > 0)
            sources = np.zeros(size, dtype=np.int16)
            offsets = np.zeros(size, dtype=np.int64)
            helpers.build_blending_indices(sources, offsets,
                                           np.asarray(self.weights, dtype=np.float64)[active],
                                           len(active), size, False)
            self._sources, self._offsets = active[sources].astype(np.int16), offsets
        return self._sources[:count], self._offsets[:count]

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "weights": list(self.weights), "cursors": list(self.cursors)}


def normalise(weights: list[float]) -> list[float]:
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
    return [float(w) / total for w in weights]


class MixtureStream:
    """Global sample i -> (source, that source's sample k) through the segments; a dataset
    (``stream[i]`` is a GPTDataset sample) the microbatch order indexes by ``consumed_samples``."""

    def __init__(self, sources: dict[str, SourceStream], weights: dict[str, float], seq_length: int = 0) -> None:
        self.seq_length = seq_length  # a cursor counts samples of this length
        self.names = sorted(sources)
        self.sources = [sources[name] for name in self.names]
        self.source_ids = {name: i for i, name in enumerate(self.names)}
        self.segments = [Segment(0, self.weight_vector(weights), [0] * len(self.names))]

    def weight_vector(self, weights: dict[str, float]) -> list[float]:
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ValueError(f"mixture weights name unknown sources {sorted(unknown)}; known: {self.names}")
        return normalise([float(weights.get(name, 0.0)) for name in self.names])

    def __len__(self) -> int:
        return _BIG

    def _segment(self, index: int) -> Segment:
        for segment in reversed(self.segments):
            if segment.start <= index:
                return segment
        raise IndexError(index)

    def locate(self, index: int) -> tuple[str, int]:
        """(source name, k): global sample ``index`` is sample k of that source's stream."""
        segment = self._segment(index)
        offset = index - segment.start
        sources, offsets = segment.draws(offset + 1)
        source = int(sources[offset])
        return self.names[source], segment.cursors[source] + int(offsets[offset])

    def __getitem__(self, index: int) -> dict:
        name, k = self.locate(index)
        return self.sources[self.source_ids[name]][k]

    def cursors(self, at: int) -> list[int]:
        """Per source, how many of its samples global samples ``[0, at)`` read."""
        segment = self._segment(at)
        sources, _ = segment.draws(at - segment.start)
        counts = np.bincount(sources.astype(np.int64), minlength=len(self.names))
        return [c + int(n) for c, n in zip(segment.cursors, counts)]

    def weights_at(self, index: int) -> dict[str, float]:
        return dict(zip(self.names, self._segment(index).weights))

    def set_weights(self, at: int, weights: dict[str, float]) -> bool:
        """From global sample ``at`` on, draw with ``weights``; segments after ``at`` (a future
        not yet read: after a rollback) are dropped. Each source continues at its cursor.
        Returns whether a new segment started (False: those weights are already in effect)."""
        self.segments = [s for s in self.segments if s.start <= at]
        vector = self.weight_vector(weights)
        if np.allclose(self._segment(at).weights, vector, rtol=0, atol=1e-12):
            return False
        cursors = self.cursors(at)
        self.segments = [s for s in self.segments if s.start < at]
        self.segments.append(Segment(at, vector, cursors))
        return True

    def state_dict(self, at: int) -> dict[str, Any]:
        """What a checkpoint at ``consumed_samples = at`` keeps: the segments up to ``at`` and
        the cursors reached at ``at`` (enough to continue if the set of sources changes)."""
        return {"sources": list(self.names), "seq_length": self.seq_length, "at": at, "cursors_at": self.cursors(at),
                "segments": [s.as_dict() for s in self.segments if s.start <= at]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """The segments a checkpoint recorded (the realised schedule up to its position).

        With other sources than the checkpoint's (one added or removed), the history cannot
        be replayed: one segment starts at the checkpoint's position, each kept source at the
        cursor it had reached, a new one at 0, weights uniform until the config's are set."""
        if not state:
            return
        if int(state.get("seq_length", self.seq_length)) != self.seq_length:
            # Another sequence length (a long-context stage from a short-context checkpoint):
            # the per-source streams are other sample sequences (samples are shuffled windows of
            # the same document order), so a cursor in old samples means nothing here. Every
            # source starts its new stream at 0 from the checkpoint's position.
            self.segments = [Segment(int(state["at"]), list(self.segments[0].weights), [0] * len(self.names))]
            return
        if list(state["sources"]) == self.names:
            self.segments = [Segment(int(s["start"]), [float(w) for w in s["weights"]],
                                     [int(c) for c in s["cursors"]]) for s in state["segments"]]
            return
        reached = dict(zip(state["sources"], state["cursors_at"]))
        self.segments = [Segment(int(state["at"]), [1.0 / len(self.names)] * len(self.names),
                                 [int(reached.get(name, 0)) for name in self.names])]
