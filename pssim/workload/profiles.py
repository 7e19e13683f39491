"""Timing profiles: the tensor sizes and FLOPs that set simulated time and bytes.

A profile lists a model's gradient tensors in forward order with their bytes, forward
multiply-accumulates and output activation bytes per sample; backward order is the reverse. A layer is
dense (its gradient is a dense tensor) or sparse (an embedding table of `rows` rows whose gradient touches
only the rows a batch looks up). Each layer names the op type of its multiply-accumulates (`op`:
conv3x3, conv, gemm, attention, embedding; a layer mixing types lists the others in `other_ops`) and the
elements its memory-bound kernels (norms, activations, softmax, dropout, residual adds, embedding
gathers) produce (`elementwise`): what pssim/cluster/compute.py times. `Profile.stages(k)` cuts the
layers into k pipeline stages of a multi-GPU replica. By default the profile is the numerics
model's own (`profile=model`); a preset (resnet50, vgg16, resnet152, vgg19, bert_large, lm_sparse) lets
the small real model keep the numerics while time and bytes follow the big one. Presets are generated
from the architectures themselves, so their totals can be checked against the published counts
(REFERENCES.md, Presets): ResNet-50 25,557,032 parameters and ~4.1 GMAC per image, VGG-16 138,357,544
and ~15.5 GMAC, ResNet-152 60,192,808 and ~11.6 GMAC, VGG-19 143,667,240 and ~19.6 GMAC, BERT-large
~335M, Parallax's LM 9.4M dense and 813.3M sparse.
"""

from __future__ import annotations

from dataclasses import dataclass

from pssim.registry import Registry

BYTES_PER_PARAM = 4  # fp32 gradients on the wire


LAYER_KINDS = ("dense", "sparse")
# Op types of a layer's multiply-accumulates, each with its own kernel efficiency (pssim/cluster/compute.py):
# 3x3 convolutions (Winograd-eligible), other convolutions (1x1, 7x7), dense matrix products, attention's
# two L x L products, and embedding lookups (no MACs: their cost is their memory traffic).
OP_TYPES = ("conv3x3", "conv", "gemm", "attention", "embedding")


@dataclass(frozen=True)
class Layer:
    """One gradient tensor (weights with their bias / norm parameters), its forward cost and output.

    `activation_bytes` is the size of the layer's output activations for one sample (fp32): what a
    pipeline stage ending at this layer sends the next stage forward (and receives back as a gradient).
    A `sparse` layer is an embedding table of `rows` rows of `row_bytes` each; a batch's gradient
    touches only the rows it looked up (a dense layer has rows = 0).

    `op` is the op type (OP_TYPES) of the layer's MACs; a layer whose MACs mix types lists the others
    as (op type, MACs) pairs in `other_ops`, the rest being `op` (`macs_by_op` gives the split; `macs`
    stays the total). `elementwise` counts, per sample, the output elements of the layer's memory-bound
    forward kernels, each kernel counted once (batch norm and ReLU on a convolution's output: twice its
    output). Embedding lookups have no MACs.
    """

    name: str
    params: int
    macs: int  # forward multiply-accumulates per sample
    activation_bytes: int = 0  # output activations per sample, bytes (fp32)
    kind: str = "dense"
    rows: int = 0  # rows of a sparse layer (its embedding table); 0 for a dense layer
    op: str = "gemm"  # op type of the MACs not listed in other_ops
    other_ops: tuple[tuple[str, int], ...] = ()  # (op type, MACs per sample) of the layer's other MACs
    elementwise: int = 0  # per sample: output elements of the memory-bound kernels, summed over kernels
    # Sparse layers: rows looked up per sample and per batch (a sampled softmax's shared negatives), and
    # the Zipf exponent of the rows' popularity (row i looked up with probability ~ 1/(i+1)^zipf): what
    # sizes a batch's sparse gradient when no real batch is at hand (pssim.workload.language).
    lookups: int = 0
    batch_lookups: int = 0
    zipf: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name}: kind must be one of {LAYER_KINDS}, not {self.kind!r}")
        for op in (self.op, *(o for o, _ in self.other_ops)):
            if op not in OP_TYPES:
                raise ValueError(f"layer {self.name}: op must be one of {OP_TYPES}, not {op!r}")
        if any(m < 0 for _, m in self.other_ops) or sum(m for _, m in self.other_ops) > self.macs:
            raise ValueError(f"layer {self.name}: other_ops' MACs must be >= 0 and sum to at most its "
                             f"{self.macs} MACs")
        if self.macs_by_op.get("embedding", 0):
            raise ValueError(f"layer {self.name}: embedding lookups have no MACs")
        if self.elementwise < 0:
            raise ValueError(f"layer {self.name}: elementwise must be >= 0, not {self.elementwise}")
        if self.kind == "sparse":
            if self.rows < 1 or self.params % self.rows:
                raise ValueError(f"sparse layer {self.name}: rows ({self.rows}) must be >= 1 and divide "
                                 f"its parameters ({self.params})")
            if self.lookups < 0 or self.batch_lookups < 0:
                raise ValueError(f"sparse layer {self.name}: lookups and batch_lookups must be >= 0")
            if not self.zipf >= 0:
                raise ValueError(f"sparse layer {self.name}: zipf must be >= 0, not {self.zipf}")
        elif self.rows or self.lookups or self.batch_lookups:
            raise ValueError(f"dense layer {self.name}: rows, lookups and batch_lookups must be 0")

    @property
    def nbytes(self) -> int:
        return self.params * BYTES_PER_PARAM

    @property
    def macs_by_op(self) -> dict[str, int]:
        """Forward MACs per sample by op type (types with no MACs left out); they sum to `macs`."""
        out = {self.op: self.macs - sum(m for _, m in self.other_ops)}
        for op, m in self.other_ops:
            out[op] = out.get(op, 0) + m
        return {op: m for op, m in out.items() if m}

    @property
    def sparse(self) -> bool:
        return self.kind == "sparse"

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of a sparse layer (ValueError for a dense layer)."""
        if not self.sparse:
            raise ValueError(f"dense layer {self.name} has no rows")
        return self.nbytes // self.rows


@dataclass(frozen=True)
class Profile:
    name: str
    layers: tuple[Layer, ...]

    @property
    def params(self) -> int:
        return sum(l.params for l in self.layers)

    @property
    def nbytes(self) -> int:
        return sum(l.nbytes for l in self.layers)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def macs_by_op(self) -> dict[str, int]:
        """Forward MACs per sample by op type, over every layer."""
        out: dict[str, int] = {}
        for layer in self.layers:
            for op, m in layer.macs_by_op.items():
                out[op] = out.get(op, 0) + m
        return out

    @property
    def elementwise(self) -> int:
        """Output elements of the memory-bound kernels per sample, over every layer."""
        return sum(l.elementwise for l in self.layers)

    @property
    def train_flops_per_sample(self) -> float:
        """2 FLOPs per MAC forward, backward twice the forward: 6 FLOPs per MAC."""
        return 6.0 * self.macs

    def backward_ready(self) -> list[tuple[int, float]]:
        """(layer index, fraction of the step elapsed when its gradient is ready), in backward order.

        Forward takes a third of the step; each layer's backward takes twice its forward share.
        """
        total = 3.0 * self.macs
        elapsed = float(self.macs)
        out = []
        for i in reversed(range(len(self.layers))):
            elapsed += 2.0 * self.layers[i].macs
            out.append((i, elapsed / total if total else 1.0))
        return out

    def stages(self, k: int) -> tuple[range, ...]:
        """Cut the layers into k consecutive, non-empty stages balanced by forward MACs.

        The rule: with P(c) the MACs of layers [0, c) and T the total, cut j (j = 1 .. k-1) goes before
        the layer c_j that brings P(c_j) nearest to j*T/k, searched over c_{j-1} < c_j <= n - (k - j)
        (every stage keeps at least one layer), ties to the earlier cut. The comparison is exact
        (|k*P(c) - j*T| in integers), so the split is deterministic. Returns the stages' layer-index
        ranges; k must be in [1, number of layers].
        """
        n = len(self.layers)
        if not 1 <= k <= n:
            raise ValueError(f"cannot cut {n} layers into {k} non-empty stages")
        prefix = [0]
        for layer in self.layers:
            prefix.append(prefix[-1] + layer.macs)
        total = prefix[-1]
        cuts = [0]
        for j in range(1, k):
            cuts.append(min(range(cuts[-1] + 1, n - (k - j) + 1), key=lambda c: abs(k * prefix[c] - j * total)))
        cuts.append(n)
        return tuple(range(a, b) for a, b in zip(cuts, cuts[1:]))


def _conv(name: str, k: int, cin: int, cout: int, hw_out: int, kernels: int = 2) -> Layer:
    """A k x k convolution (no bias) followed by batch norm (weight and bias), as in ResNet; its output
    is cout x hw_out x hw_out fp32 activations, on which `kernels` memory-bound kernels run (batch norm
    and ReLU: 2; batch norm, residual add and ReLU: 3; batch norm alone: 1). Pooling is not counted."""
    out = cout * hw_out * hw_out
    return Layer(name, k * k * cin * cout + 2 * cout, k * k * cin * cout * hw_out * hw_out,
                 out * BYTES_PER_PARAM, op="conv3x3" if k == 3 else "conv", elementwise=kernels * out)


def resnet(name: str, blocks: list[int]) -> Profile:
    """torchvision's bottleneck ResNet (v1.5: stride on the 3x3) with `blocks` per stage, 224 x 224 input,
    1000 classes."""
    layers = [_conv("conv1", 7, 3, 64, 112)]
    cin, hw = 64, 56
    for stage, (width, count) in enumerate(zip([64, 128, 256, 512], blocks), start=1):
        for b in range(count):
            stride = 2 if (b == 0 and stage > 1) else 1
            out_hw = hw // stride
            p = f"layer{stage}.{b}"
            layers += [_conv(f"{p}.conv1", 1, cin, width, hw),
                       _conv(f"{p}.conv2", 3, width, width, out_hw),
                       _conv(f"{p}.conv3", 1, width, 4 * width, out_hw, kernels=3)]
            if b == 0:
                layers.append(_conv(f"{p}.downsample", 1, cin, 4 * width, out_hw, kernels=1))
            cin, hw = 4 * width, out_hw
    layers.append(Layer("fc", 2048 * 1000 + 1000, 2048 * 1000, 1000 * BYTES_PER_PARAM,
                        elementwise=1000))  # softmax cross-entropy on the logits
    return Profile(name, tuple(layers))


def resnet50() -> Profile:
    """ResNet-50: bottleneck blocks 3, 4, 6, 3."""
    return resnet("resnet50", [3, 4, 6, 3])


def resnet152() -> Profile:
    """ResNet-152 (HetPipe's model): bottleneck blocks 3, 8, 36, 3; 60,192,808 parameters, 11.5 GMAC."""
    return resnet("resnet152", [3, 8, 36, 3])


def vgg(name: str, plan: list) -> Profile:
    """A VGG network: 3x3 convolutions with biases of `plan`'s widths ("M": 2x2 max-pooling), 224 x 224
    input, three dense layers.

    A convolution's activations are its output at its own resolution (before any max-pooling).
    Memory-bound kernels: ReLU after each convolution, ReLU and dropout after fc6 and fc7, softmax
    cross-entropy after fc8 (pooling not counted)."""
    layers, cin, hw = [], 3, 224
    for item in plan:
        if item == "M":
            hw //= 2
            continue
        layers.append(Layer(f"conv{len(layers) + 1}", 9 * cin * item + item, 9 * cin * item * hw * hw,
                            item * hw * hw * BYTES_PER_PARAM, op="conv3x3", elementwise=item * hw * hw))
        cin = item
    for fc, fin, fout, kernels in [("fc6", 512 * 7 * 7, 4096, 2), ("fc7", 4096, 4096, 2), ("fc8", 4096, 1000, 1)]:
        layers.append(Layer(fc, fin * fout + fout, fin * fout, fout * BYTES_PER_PARAM, elementwise=kernels * fout))
    return Profile(name, tuple(layers))


def vgg16() -> Profile:
    """VGG-16 (configuration D)."""
    return vgg("vgg16", [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"])


def vgg19() -> Profile:
    """VGG-19 (configuration E, HetPipe's model): 143,667,240 parameters, 19.6 GMAC."""
    return vgg("vgg19", [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                         512, 512, 512, 512, "M"])


def bert_large(seq: int = 128, masked: int = 20) -> Profile:
    """BERT-large (24 layers, hidden 1024, 16 heads, FFN 4096, vocab 30522), sequence length 128.

    MACs count the encoder's dense layers per token, attention's two L x L products, the pooler, and
    the masked-LM decoder (tied to the word embeddings) on the ~15% masked tokens.
    Activations: the embeddings and every encoder block output seq x hidden per sample; the pooler its
    one [CLS] vector (hidden); the masked-LM head its logits (masked x vocab). Every layer is dense (the
    word embeddings included: this preset pushes them whole).
    Op types: the embeddings are lookups; an attention block's four projections are GEMMs and its two
    L x L products (2 seq^2 h MACs) `attention`; the rest GEMMs. Memory-bound kernels per sample: the
    embeddings' sum, layer norm and dropout (3 x seq h); per attention block softmax and dropout on the
    16 heads' scores (2 x 16 seq^2) and dropout, residual add and layer norm (3 x seq h); per FFN GELU
    on seq x ffn and dropout, residual add, layer norm (3 x seq h); the pooler's tanh; the masked-LM
    head's GELU and layer norm (2 x masked h) and softmax cross-entropy on its logits (masked x vocab).
    """
    h, ffn, vocab, heads = 1024, 4096, 30522, 16
    tokens = seq * h * BYTES_PER_PARAM
    layers = [Layer("embeddings", vocab * h + 512 * h + 2 * h + 2 * h, 0, tokens, op="embedding",
                    elementwise=3 * seq * h)]
    for i in range(24):
        layers += [
            Layer(f"encoder{i}.attention", 4 * (h * h + h) + 2 * h, seq * 4 * h * h + 2 * seq * seq * h, tokens,
                  other_ops=(("attention", 2 * seq * seq * h),), elementwise=2 * heads * seq * seq + 3 * seq * h),
            Layer(f"encoder{i}.ffn", h * ffn + ffn + ffn * h + h + 2 * h, seq * 2 * h * ffn, tokens,
                  elementwise=seq * ffn + 3 * seq * h),
        ]
    layers.append(Layer("pooler", h * h + h, h * h, h * BYTES_PER_PARAM, elementwise=h))
    layers.append(Layer("mlm_head", h * h + h + 2 * h + vocab, masked * (h * h + h * vocab),
                        masked * vocab * BYTES_PER_PARAM, elementwise=2 * masked * h + masked * vocab))
    return Profile("bert_large", tuple(layers))


def lm_sparse(vocabulary: int = 793_471, width: int = 512, cell: int = 2048, steps: int = 20,
              sampled: int = 8192) -> Profile:
    """The LM of Parallax's paper (Kim et al., EuroSys'19; Jozefowicz et al.'s LSTM-2048-512 on the One
    Billion Word benchmark): a word embedding table, one LSTM layer of 2,048 cells projected to 512, and
    a sampled softmax over the vocabulary. A sample is a sequence of `steps` words.

    Sparse: the embedding (vocabulary x width; each word of the sequence looks up a row) and the softmax
    weights with their bias (vocabulary x (width + 1); each target word's row plus the `sampled`
    negatives drawn once per batch, log-uniform, i.e. Zipf(1) like the words). Dense: the LSTM (input and
    recurrent weights, 4 gates, bias) and its projection: 9,445,376 parameters (the paper's 9.4M); the
    sparse ones 813,307,775 (the paper's 813.3M).
    MACs per sample: the LSTM's and projection's per word, and the sampled logits ((sampled + 1) x width
    per word); embedding lookups have none. Activations: steps x width per sample after the embedding
    and the LSTM; the logits after the softmax. Memory-bound kernels: the lookups' gathered rows, the
    LSTM's gate nonlinearities and cell updates (about 10 x cell per word), the softmax on the logits.
    """
    lstm = (width + width) * 4 * cell + 4 * cell + cell * width
    words = steps * width * BYTES_PER_PARAM
    return Profile("lm_sparse", (
        Layer("embedding", vocabulary * width, 0, words, kind="sparse", rows=vocabulary, op="embedding",
              elementwise=steps * width, lookups=steps),
        Layer("lstm", lstm, steps * ((width + width) * 4 * cell + cell * width), words, elementwise=10 * steps * cell),
        Layer("softmax", vocabulary * (width + 1), steps * (sampled + 1) * width,
              steps * (sampled + 1) * BYTES_PER_PARAM, kind="sparse", rows=vocabulary,
              elementwise=steps * (sampled + 1), lookups=steps, batch_lookups=sampled),
    ))


def transformer_1p35b(seq: int = 512) -> Profile:
    """A GPT-style decoder standing in for Fairring's 1.37B-parameter Transformer (facebookresearch/fairring
    README; its exact shape is not published): 24 layers, width 2048, FFN 8192, wikitext-2's 33,278 words,
    an untied output layer, sequences of 512: 1.35B parameters.

    MACs per sample: each layer's attention projections (4 h^2 per token) and its two L x L products
    (2 seq^2 h, op type `attention`), the FFN's two GEMMs, the output layer's logits (h x vocab per
    token); the embeddings are lookups. Activations: seq x h per sample after every layer, the logits
    after the output layer. Memory-bound kernels: the embeddings' sum and dropout; per attention block
    softmax, mask and dropout on the scores (32 seq^2 over its heads) and residual, layer norm, dropout
    (3 seq h); per FFN its activation on seq x ffn and 3 seq h; the softmax on the logits.
    """
    h, ffn, vocab = 2048, 8192, 33_278
    tokens = seq * h * BYTES_PER_PARAM
    layers = [Layer("embeddings", vocab * h + seq * h, 0, tokens, op="embedding", elementwise=2 * seq * h)]
    for i in range(24):
        layers += [Layer(f"layer{i}.attention", 4 * (h * h + h) + 2 * h, seq * 4 * h * h + 2 * seq * seq * h, tokens,
                         other_ops=(("attention", 2 * seq * seq * h),), elementwise=32 * seq * seq + 3 * seq * h),
                   Layer(f"layer{i}.ffn", 2 * h * ffn + ffn + h + 2 * h, seq * 2 * h * ffn, tokens,
                         elementwise=seq * ffn + 3 * seq * h)]
    layers.append(Layer("decoder", h * vocab + vocab + 2 * h, seq * h * vocab, seq * vocab * BYTES_PER_PARAM,
                        elementwise=seq * vocab))
    return Profile("transformer_1p35b", tuple(layers))


PROFILES = Registry("profile.name")
PROFILES.update(model=None, resnet50=resnet50, vgg16=vgg16, resnet152=resnet152, vgg19=vgg19, bert_large=bert_large,
                lm_sparse=lm_sparse, transformer_1p35b=transformer_1p35b)


def from_model(model) -> Profile:
    """The numerics model's own profile: each weight with its bias as one dense layer (a GEMM), whose
    activations are its fan_out outputs, with one memory-bound kernel on them (ReLU, or the last layer's
    softmax cross-entropy)."""
    layers = []
    for w, b in zip(model.tensors[::2], model.tensors[1::2]):
        layers.append(Layer(w.name.rsplit(".", 1)[0], w.numel + b.numel, w.macs + b.macs,
                            w.shape[1] * BYTES_PER_PARAM, op="gemm", elementwise=w.shape[1]))
    return Profile(model.name, tuple(layers))


def make_profile(name: str, model) -> Profile:
    """The timing profile called `name`; `model`: the numerics model's own (its `timing_profile()` if it
    has one, else each weight with its bias as a dense layer)."""
    if name != "model":
        return PROFILES[name]()
    return model.timing_profile() if hasattr(model, "timing_profile") else from_model(model)
