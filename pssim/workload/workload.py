"""A workload ties the model, the data and each worker's shard into gradients and evaluations.

Worker w reads only its own shard: a contiguous block of a seeded permutation of the training set,
visited in a fresh seeded order every epoch. `batch_indices(w, step)` is a pure function of
(seed, workers, batch size, w, step), so tests can rebuild exactly the samples a worker used.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from pssim.seeding import Streams
from pssim.workload.data import DATASETS
from pssim.workload import conv, language  # noqa: F401  (register the cnn and bag_of_words models)
from pssim.workload.models import Model, build_model
from pssim.workload.profiles import make_profile

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Workload:
    """Real gradients of a real model on generated data, plus the sizes and FLOPs timing needs."""

    def __init__(self, cfg, workers: int, batch_size: int, streams: Streams, profile: str = "model",
                 numerics: bool = True):
        """With numerics=False (timing only) no data is generated and there are no shards."""
        self.dtype = DTYPES[cfg.dtype]
        self.model = build_model(cfg)
        self.profile = make_profile(profile, self.model)
        self.profile_is_model = profile == "model"  # timing follows the numerics model itself
        self.workers = workers
        self.batch_size = batch_size
        self._streams = streams
        self.data, self.shards, self.batches_per_epoch = None, [], 0
        self._epoch_order = lru_cache(maxsize=4 * workers)(self._epoch_order_uncached)
        self._init_seed = streams.torch_seed("model/init")
        self._batched_grad = None  # torch.func's batched gradient of the dense Model, built on first use
        self._batch_ok: dict[tuple[int, int], bool] = {}  # (requests, rows): batched bits == one at a time
        if numerics:
            self._generate(cfg)

    def _generate(self, cfg) -> None:
        """The data set, and each worker's shard of it."""
        self.data = DATASETS.lookup(cfg.dataset)(
            self._streams.generator("data/generate"), cfg.features, cfg.classes, cfg.train_samples,
            cfg.eval_samples, self.dtype, separation=cfg.separation, density=cfg.density, context=cfg.context,
            zipf=cfg.zipf)
        shard = cfg.train_samples // self.workers
        order = self._streams.generator("data/partition").permutation(cfg.train_samples)
        self.shards = [order[w * shard:(w + 1) * shard] for w in range(self.workers)]
        self.batches_per_epoch = shard // self.batch_size

    # -- sizes and costs ----------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.model.n_params

    @property
    def nbytes(self) -> int:
        """Bytes of the whole model (or of one full gradient) on the wire, as the timing profile says."""
        return self.profile.nbytes

    def batch_flops(self) -> float:
        """Training FLOPs of one worker's batch, as the timing profile says."""
        return self.profile.train_flops_per_sample * self.batch_size

    def touched_rows(self, layer: int, workers, step: int, parts: int = 1) -> tuple[float, ...]:
        """Distinct rows of sparse profile layer `layer` that the `step`-th batches of `workers` look up
        together (a machine's GPUs merging their duplicate rows), in each of `parts` partitions (row id
        mod parts, `language.partition_of`). Counted on the real batches when the layer is the numerics
        model's own table and the data exist; otherwise the Zipf law's expectation
        (`language.expected_distinct`) for the layer's lookups per sample and its sampled rows per batch
        (each worker samples its own)."""
        spec = self.profile.layers[layer]
        if self.data is not None and self.profile_is_model and getattr(self.model, "vocabulary", None) == spec.rows:
            ids = np.concatenate([self.data.x_train[torch.as_tensor(self.batch_indices(w, step))].numpy().ravel()
                                  for w in workers])
            return language.distinct_per_part(ids, parts)
        return language.expected_distinct(spec.rows, spec.zipf, len(workers) * spec.lookups * self.batch_size,
                                          parts, spec.batch_lookups, len(workers))

    def wire_bytes(self, lo: int, hi: int) -> float:
        """Wire bytes of the numerics parameters [lo, hi): their share of the profile's bytes."""
        return self.nbytes * (hi - lo) / self.n_params

    # -- numerics -----------------------------------------------------------------------------------
    def init_params(self) -> torch.Tensor:
        return self.model.init(torch.Generator().manual_seed(self._init_seed), self.dtype)

    def batch_indices(self, worker: int, step: int) -> np.ndarray:
        """The training-set rows worker `worker` uses for its `step`-th gradient."""
        epoch, i = divmod(step, self.batches_per_epoch)
        order = self._epoch_order(worker, epoch)
        return order[i * self.batch_size:(i + 1) * self.batch_size]

    def _epoch_order_uncached(self, worker: int, epoch: int) -> np.ndarray:
        rng = self._streams.generator(f"data/order/{worker}/{epoch}")
        return self.shards[worker][rng.permutation(len(self.shards[worker]))]

    def loss(self, params: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(rows)
        return F.cross_entropy(self.model.forward(params, self.data.x_train[idx]), self.data.y_train[idx])

    def gradient(self, params: torch.Tensor, worker: int, step: int) -> torch.Tensor:
        """The mean cross-entropy gradient of worker's `step`-th batch at exactly `params`.

        A dense `Model` differentiates with respect to each tensor as a leaf of its own (views of
        `params`, so no copy in) and concatenates their gradients: the same kernels, so the same bits,
        as differentiating through views of one flat leaf, without the backward of every slice (a zero
        flat vector and a copy per tensor). Other models go through `loss` on a flat leaf."""
        rows = self.batch_indices(worker, step)
        model = self.model
        if self._dense:
            leaves = [v.detach().requires_grad_(True) for v in model.views(params)]
            idx = torch.as_tensor(rows)
            loss = F.cross_entropy(model.forward_tensors(leaves, self.data.x_train[idx]), self.data.y_train[idx])
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])
        p = params.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(p, rows), p)
        return grad

    @property
    def _dense(self) -> bool:
        """A dense `Model` with its own forward: its tensors can be leaves of their own (`gradient`) and
        its gradient can be batched (`gradients`)."""
        return isinstance(self.model, Model) and type(self.model).forward is Model.forward

    @property
    def batches_gradients(self) -> bool:
        """Whether `gradients` takes several batches in one call (`_dense`)."""
        return self._dense

    def gradients(self, params: torch.Tensor, requests: list[tuple[int, int]]) -> list[torch.Tensor]:
        """The gradients of several (worker, step) batches at the same `params`, in order: exactly the
        bits of `gradient` one at a time, in fewer calls where that is so.

        For a dense `Model` and batches of one size, one call: `torch.func.vmap` of the gradient over
        the stacked batches, with the parameters shared (16 default-MLP batches: about half the cost). The
        batched kernels give the same bits as one batch alone for some shapes and not for others (a
        batch of one row, say), so the first call of each shape (requests x rows) computes both ways
        and batches that shape from then on only if every gradient was bit-identical
        (tests/test_workloads.py). Otherwise, and for other models, one `gradient` at a time.
        """
        singles = lambda: [self.gradient(params, w, s) for w, s in requests]  # noqa: E731
        if len(requests) < 2 or not self.batches_gradients:
            return singles()
        rows = [self.batch_indices(w, s) for w, s in requests]
        shape = (len(rows), len(rows[0]))
        if any(len(r) != shape[1] for r in rows) or self._batch_ok.get(shape) is False:
            return singles()
        if self._batched_grad is None:
            from torch.func import grad, vmap  # noqa: PLC0415 - only runs that batch gradients pay for it

            model = self.model

            def loss(tensors, x, y):
                return F.cross_entropy(model.forward_tensors(tensors, x), y)

            self._batched_grad = vmap(grad(loss), in_dims=(None, 0, 0))
        idx = torch.as_tensor(np.stack(rows))
        grads = self._batched_grad(self.model.views(params.detach()), self.data.x_train[idx], self.data.y_train[idx])
        batched = list(torch.cat([g.reshape(shape[0], -1) for g in grads], dim=1).unbind(0))
        if shape not in self._batch_ok:  # the first call of this shape: check it bit for bit
            one_by_one = singles()
            self._batch_ok[shape] = all(torch.equal(a, b) for a, b in zip(batched, one_by_one))
            return one_by_one
        return batched

    @torch.no_grad()
    def evaluate(self, params: torch.Tensor) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the held-out set."""
        logits = self.model.forward(params, self.data.x_eval)
        loss = F.cross_entropy(logits, self.data.y_eval).item()
        accuracy = (logits.argmax(dim=1) == self.data.y_eval).double().mean().item()
        return loss, accuracy
