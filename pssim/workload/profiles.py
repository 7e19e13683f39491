"""Timing profiles: the tensor sizes and FLOPs that set simulated time and bytes.

A profile lists a model's gradient tensors in forward order with their bytes, forward
multiply-accumulates and output activation bytes per sample; backward order is the reverse. A layer is
dense (its gradient is a dense tensor) or sparse (an embedding table of `rows` rows whose gradient touches
only the rows a batch looks up). `Profile.stages(k)` cuts the layers into k pipeline stages of a
multi-GPU replica. By default the profile is the numerics
model's own (`profile=model`); a preset (resnet50, vgg16, bert_large) lets the small real model keep
the numerics while time and bytes follow the big one. Presets are generated from the architectures
themselves, so their totals can be checked against the published counts (REFERENCES.md, Presets):
ResNet-50 25,557,032 parameters and ~4.1 GMAC per image, VGG-16 138,357,544 and ~15.5 GMAC,
BERT-large ~335M.
"""

from __future__ import annotations

from dataclasses import dataclass

from pssim.registry import Registry

BYTES_PER_PARAM = 4  # fp32 gradients on the wire


LAYER_KINDS = ("dense", "sparse")


@dataclass(frozen=True)
class Layer:
    """One gradient tensor (weights with their bias / norm parameters), its forward cost and output.

    `activation_bytes` is the size of the layer's output activations for one sample (fp32): what a
    pipeline stage ending at this layer sends the next stage forward (and receives back as a gradient).
    A `sparse` layer is an embedding table of `rows` rows of `row_bytes` each; a batch's gradient
    touches only the rows it looked up (a dense layer has rows = 0).
    """

    name: str
    params: int
    macs: int  # forward multiply-accumulates per sample
    activation_bytes: int = 0  # output activations per sample, bytes (fp32)
    kind: str = "dense"
    rows: int = 0  # rows of a sparse layer (its embedding table); 0 for a dense layer

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name}: kind must be one of {LAYER_KINDS}, not {self.kind!r}")
        if self.kind == "sparse":
            if self.rows < 1 or self.params % self.rows:
                raise ValueError(f"sparse layer {self.name}: rows ({self.rows}) must be >= 1 and divide "
                                 f"its parameters ({self.params})")
        elif self.rows:
            raise ValueError(f"dense layer {self.name}: rows must be 0, not {self.rows}")

    @property
    def nbytes(self) -> int:
        return self.params * BYTES_PER_PARAM

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


def _conv(name: str, k: int, cin: int, cout: int, hw_out: int, norm: bool = True) -> Layer:
    """A k x k convolution (no bias) followed by batch norm (weight and bias), as in ResNet; its output
    is cout x hw_out x hw_out fp32 activations."""
    return Layer(name, k * k * cin * cout + (2 * cout if norm else 0), k * k * cin * cout * hw_out * hw_out,
                 cout * hw_out * hw_out * BYTES_PER_PARAM)


def resnet50() -> Profile:
    """torchvision's ResNet-50 (v1.5: stride on the 3x3), 224 x 224 input, 1000 classes."""
    layers = [_conv("conv1", 7, 3, 64, 112)]
    cin, hw = 64, 56
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 1) else 1
            out_hw = hw // stride
            p = f"layer{stage}.{b}"
            layers += [_conv(f"{p}.conv1", 1, cin, width, hw),
                       _conv(f"{p}.conv2", 3, width, width, out_hw),
                       _conv(f"{p}.conv3", 1, width, 4 * width, out_hw)]
            if b == 0:
                layers.append(_conv(f"{p}.downsample", 1, cin, 4 * width, out_hw))
            cin, hw = 4 * width, out_hw
    layers.append(Layer("fc", 2048 * 1000 + 1000, 2048 * 1000, 1000 * BYTES_PER_PARAM))
    return Profile("resnet50", tuple(layers))


def vgg16() -> Profile:
    """VGG-16 (configuration D), 224 x 224 input, convolutions with biases, three dense layers.

    A convolution's activations are its output at its own resolution (before any max-pooling)."""
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin, hw = [], 3, 224
    for item in plan:
        if item == "M":
            hw //= 2
            continue
        layers.append(Layer(f"conv{len(layers) + 1}", 9 * cin * item + item, 9 * cin * item * hw * hw,
                            item * hw * hw * BYTES_PER_PARAM))
        cin = item
    for name, fin, fout in [("fc6", 512 * 7 * 7, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]:
        layers.append(Layer(name, fin * fout + fout, fin * fout, fout * BYTES_PER_PARAM))
    return Profile("vgg16", tuple(layers))


def bert_large(seq: int = 128, masked: int = 20) -> Profile:
    """BERT-large (24 layers, hidden 1024, 16 heads, FFN 4096, vocab 30522), sequence length 128.

    MACs count the encoder's dense layers per token, attention's two L x L products, the pooler, and
    the masked-LM decoder (tied to the word embeddings) on the ~15% masked tokens.
    Activations: the embeddings and every encoder block output seq x hidden per sample; the pooler its
    one [CLS] vector (hidden); the masked-LM head its logits (masked x vocab). Every layer is dense (the
    word embeddings included: this preset pushes them whole).
    """
    h, ffn, vocab = 1024, 4096, 30522
    tokens = seq * h * BYTES_PER_PARAM
    layers = [Layer("embeddings", vocab * h + 512 * h + 2 * h + 2 * h, 0, tokens)]
    for i in range(24):
        layers += [
            Layer(f"encoder{i}.attention", 4 * (h * h + h) + 2 * h, seq * 4 * h * h + 2 * seq * seq * h, tokens),
            Layer(f"encoder{i}.ffn", h * ffn + ffn + ffn * h + h + 2 * h, seq * 2 * h * ffn, tokens),
        ]
    layers.append(Layer("pooler", h * h + h, h * h, h * BYTES_PER_PARAM))
    layers.append(Layer("mlm_head", h * h + h + 2 * h + vocab, masked * (h * h + h * vocab),
                        masked * vocab * BYTES_PER_PARAM))
    return Profile("bert_large", tuple(layers))


PROFILES = Registry("profile.name")
PROFILES.update(model=None, resnet50=resnet50, vgg16=vgg16, bert_large=bert_large)


def from_model(model) -> Profile:
    """The numerics model's own profile: each weight with its bias as one dense layer, whose activations
    are its fan_out outputs."""
    layers = []
    for w, b in zip(model.tensors[::2], model.tensors[1::2]):
        layers.append(Layer(w.name.rsplit(".", 1)[0], w.numel + b.numel, w.macs + b.macs,
                            w.shape[1] * BYTES_PER_PARAM))
    return Profile(model.name, tuple(layers))


def make_profile(name: str, model) -> Profile:
    return from_model(model) if name == "model" else PROFILES[name]()
