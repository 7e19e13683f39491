"""A sparse workload: a bag-of-words classifier over a vocabulary, whose embedding table is a sparse
layer, and the row counts that size its gradients on the wire.

The model (`BagOfWords`, a `FlatModel`) reads a sample of `context` token ids, averages their rows of the embedding
table (vocabulary x width), and classifies the average with a ReLU layer and a softmax layer. Only the
rows a batch looks up get a gradient, so a batch's sparse gradient is (row ids, rows): what
parameter servers push and pull (Parallax, TF-PS) and all-reduce systems all-gather (Horovod). The
data (`zipf_topics`) draw tokens with Zipf popularity, so a step touches a realistic fraction of rows.

`expected_distinct` is the Zipf law for a batch's distinct rows when no real batch is at hand (timing
only, or a timing profile bigger than the numerics model: the LM of Parallax's paper).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from pssim.workload.models import MODELS, FlatModel, TensorSpec
from pssim.workload.profiles import BYTES_PER_PARAM, Layer, Profile


class BagOfWords(FlatModel):
    """Embedding table (sparse), then dense ReLU and softmax layers, as one flat vector (`FlatModel`),
    with its own timing profile.

    Widths: `hidden` = [embedding width, hidden width]; `features` is the vocabulary, `classes` the
    labels, `context` the tokens of a sample.
    """

    def __init__(self, vocabulary: int, classes: int, hidden: list[int], context: int):
        if len(hidden) != 2:
            raise ValueError(f"workload.hidden must be [embedding width, hidden width] for bag_of_words, not {hidden}")
        width, units = hidden
        self.vocabulary, self.context = vocabulary, context
        super().__init__("bag_of_words", [
            TensorSpec("embedding.weight", (vocabulary, width), 0),
            TensorSpec("hidden.weight", (width, units), width * units),
            TensorSpec("hidden.bias", (units,), units),
            TensorSpec("output.weight", (units, classes), units * classes),
            TensorSpec("output.bias", (classes,), classes),
        ])

    def forward_tensors(self, params: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Logits for `tokens` (samples x context token ids): the mean of their embedding rows, then
        ReLU(. W_h + b_h) W_o + b_o. Indexing the table makes autograd's gradient nonzero only on the
        rows looked up."""
        embedding, wh, bh, wo, bo = params
        bag = embedding[tokens].mean(dim=1)
        return torch.relu(bag @ wh + bh) @ wo + bo

    def init_tensor(self, t: TensorSpec, generator: torch.Generator) -> torch.Tensor:
        """Embedding rows N(0, 1); the dense layers as `FlatModel` initialises them."""
        if t.name == "embedding.weight":
            return torch.randn(t.shape, generator=generator, dtype=torch.float64)
        return super().init_tensor(t, generator)

    def timing_profile(self) -> Profile:
        """Its own timing profile: the table as a sparse layer (one row per token, `context` lookups per
        sample), the hidden and output layers as dense GEMMs."""
        (emb, wh, bh, wo, bo) = self.tensors
        width, units, classes = wh.shape[0], wh.shape[1], wo.shape[1]
        return Profile(self.name, (
            Layer("embedding", emb.numel, 0, width * BYTES_PER_PARAM, kind="sparse", rows=self.vocabulary,
                  op="embedding", elementwise=self.context * width, lookups=self.context),
            Layer("hidden", wh.numel + bh.numel, wh.macs + bh.macs, units * BYTES_PER_PARAM, elementwise=units),
            Layer("output", wo.numel + bo.numel, wo.macs + bo.macs, classes * BYTES_PER_PARAM, elementwise=classes),
        ))


def bag_of_words(features: int, classes: int, hidden: list[int], context: int = 8) -> BagOfWords:
    return BagOfWords(features, classes, hidden, context)


MODELS["bag_of_words"] = bag_of_words


def zipf_popularity(rows: int, exponent: float) -> np.ndarray:
    """Row i's probability of being looked up, proportional to 1 / (i + 1)^exponent (row 0 the most
    frequent token, as vocabularies sorted by frequency are)."""
    weights = np.arange(1, rows + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


@lru_cache(maxsize=256)
def expected_distinct(rows: int, exponent: float, lookups: int, parts: int = 1, sampled: int = 0,
                      samplers: int = 1) -> tuple[float, ...]:
    """Expected distinct rows that `lookups` independent Zipf draws over `rows` rows, together with
    `samplers` samples of `sampled` distinct rows each (the sampled softmax's negatives of that many
    GPUs, each drawn from the same law without replacement), touch in each of `parts` partitions
    (`partition_of`).

    Row i is missed by the lookups with probability (1 - p_i)^lookups. A sample without replacement is
    taken as m draws with replacement, m such that they give `sampled` distinct rows in expectation (row
    i is in it with probability 1 - (1 - p_i)^m); a row is touched unless every draw misses it.
    """
    p = zipf_popularity(rows, exponent)
    log_miss = np.log1p(-p)
    draws = samplers * _draws_for(rows, exponent, min(sampled, rows)) if sampled else 0.0
    touched = -np.expm1((lookups + draws) * log_miss)
    return tuple(float(x) for x in np.bincount(np.arange(rows) % parts, weights=touched, minlength=parts))


@lru_cache(maxsize=64)
def _draws_for(rows: int, exponent: float, distinct: int) -> float:
    """Draws with replacement that give `distinct` distinct rows in expectation (bisection)."""
    log_miss = np.log1p(-zipf_popularity(rows, exponent))
    lo, hi = float(distinct), float(distinct)
    while -np.expm1(hi * log_miss).sum() < distinct and hi < 1e15:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if -np.expm1(mid * log_miss).sum() < distinct else (lo, mid)
    return hi


def partition_of(ids: np.ndarray, parts: int) -> np.ndarray:
    """The partition holding each row id: id mod parts (TensorFlow's embedding_lookup with its default
    partition_strategy="mod", which Parallax and TF-PS use: the frequent rows spread over every part)."""
    return ids % parts


def distinct_per_part(ids: np.ndarray, parts: int = 1) -> tuple[int, ...]:
    """Distinct row ids of a real batch in each of `parts` partitions."""
    return tuple(int(c) for c in np.bincount(partition_of(np.unique(ids), parts), minlength=parts))
