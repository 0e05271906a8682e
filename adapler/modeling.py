"""AdapLeR: an encoder classifier that drops unimportant tokens layer by layer.

Spec: shared/spec/adapler-method.md. One Contribution Predictor (CP) per encoder layer scores
the tokens entering that layer; a token whose normalised score falls under eta_l / n (n = tokens
present) leaves the network for good. [CLS] always stays: the classifier reads it.

The forward takes ``removal``:
  "none"    the plain backbone (the Hugging Face model's own forward): stage 1 and baselines.
  "soft"    training (spec section 4): tokens fade through a soft mask that biases attention
            keys; nothing is dropped, every token costs.
  "masked"  hard removal by masking keys, as the authors' batched evaluation: same predictions
            as "packed", no saving.
  "packed"  real removal, the default in eval: the kept tokens of the whole batch live in one
            (N, H) tensor; dense layers run over those N tokens only, and attention per example
            over a re-padded (B, heads, T_kept, d) view of them.

The loop is family-agnostic: embeddings, each layer and the head come from the backbone's
family (:mod:`adapler.backbones`), which runs a layer over token rows described by a
:class:`~adapler.backbones.TokenRows` (below: the padded grid, packed rows, one example).

Shapes: B batch, T padded input length, H hidden, L layers, N kept tokens in the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from adapler.artifacts import ADAPLER_WEIGHTS, check_model_dir
from adapler.backbones import (
    BackboneFamily,
    TokenRows,
    UnsupportedBackbone,  # noqa: F401  (imported from here: callers, the CLI's error list)
    family_class,
    family_for,
)
from adapler.backbones.base import fuse_linears
from adapler.config import AdapLeRSettings
from adapler.operating_points import OperatingPoints, read_adapler_config

REMOVAL_MODES = ("none", "soft", "masked", "packed")
SOFT_FLOOR = -10000.0  # floor of the soft-removal function and of the attention bias (spec 4)
FIRST_STEP_TEMPERATURE = 1000.0  # lambda of the very first training step (spec 4)


@dataclass
class AdapLeROutput:
    logits: torch.Tensor  # (B, C)
    kept_lengths: torch.Tensor  # (B, L) int: tokens entering each layer ([CLS] counted, padding not)
    kept_mask: torch.Tensor  # (B, L, T) bool: token t of the input enters layer l
    # Soft removal only (training), one entry per layer:
    scores: list[torch.Tensor] | None = None  # i~_l (B, T), for the KL to saliency
    masks_before: list[torch.Tensor] | None = None  # m_{l-1} (B, T), soft mask entering layer l
    soft_lengths: torch.Tensor | None = None  # (B, L) n_l; grads reach the etas only


class ContributionPredictor(nn.Module):
    """Linear(H, c) -> GELU -> Linear(c, 1): one contribution logit per token.

    Initialised as the authors' (BERT's) linear layers: weights normal(0, init_std), biases 0;
    init_std is the backbone config's initializer_range.
    """

    def __init__(self, hidden: int, width: int, init_std: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, 1))
        for linear in (self.net[0], self.net[2]):
            nn.init.normal_(linear.weight, mean=0.0, std=init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (..., H) -> (...)


def soft_removal(x: torch.Tensor, delta: torch.Tensor, temperature: float, beta: float) -> torch.Tensor:
    """The spec's S(x): log of the factor that multiplies a token's soft mask.

    Steep (slope lambda/delta) under the threshold delta, nearly flat above it; clipped to
    [-10000, 0]. As lambda grows it approaches a hard cut.
    """
    lam = temperature
    below = (lam / delta) * (x - delta) - beta / lam
    above = -(beta / lam) * (1 - x) / (1 - delta).clamp_min(1e-6)
    return torch.where(x < delta, below, above).clamp(SOFT_FLOOR, 0.0)


def temperature_for_epoch(epoch: int, epochs: int) -> float:
    """lambda of the soft removal for a 0-based epoch (after the first step, which uses 1000).

    The authors' schedules: 10 * 10^e for 5 epochs, 10 * 3^e for 10, 50 * 50^e for 3. Each ends
    near 1e5 (a practically hard cut); for other run lengths we keep that shape: start at 10 and
    grow geometrically to 1e5 at the last epoch (a 1-epoch run stays at 10 after its first step).
    """
    table = {5: (10.0, 10.0), 10: (10.0, 3.0), 3: (50.0, 50.0)}
    if epochs in table:
        start, growth = table[epochs]
    else:
        start = 10.0
        growth = 10.0 ** (4.0 / max(epochs - 1, 1))
    return start * growth**epoch


def _soft_scores(z: torch.Tensor, mask: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """i~ = softmax(z) * m / sum(softmax(z) * m), the softmax over the non-padding tokens. (B, T).

    The sum is at least [CLS]'s softmax weight (its mask stays 1), but that can underflow to 0;
    if every other mask is 0 too, the floor (the dtype's smallest normal number, under any
    ordinary sum) makes the scores 0 instead of 0/0 = NaN.
    """
    weights = torch.softmax(z.masked_fill(~present, float("-inf")), dim=-1) * mask
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


def _check_right_padded(present: torch.Tensor) -> None:
    """Every position rule reads [CLS] at position 0 and padding on the right: each row of the
    (B, T) mask must start present and never turn on again once off (one vectorised check)."""
    if not bool(present[:, 0].all() & (present[:, 1:] <= present[:, :-1]).all()):
        raise ValueError(
            "adapler needs right padding ([CLS] first): got an attention_mask that is left-padded or misses position 0"
        )


def _check_eta_factors(factors: torch.Tensor, batch: int, removal: str) -> None:
    """eta_factors must be (B,), finite and > 0, and only where thresholds cut (hard removal)."""
    if removal not in ("masked", "packed"):
        raise ValueError(f"eta_factors apply to hard removal (masked, packed), not to removal={removal!r}")
    if factors.shape != (batch,) or not factors.is_floating_point():
        raise ValueError(
            f"eta_factors must be a float tensor of shape ({batch},), got {tuple(factors.shape)} {factors.dtype}"
        )
    if not bool((torch.isfinite(factors) & (factors > 0)).all()):
        raise ValueError(f"eta_factors must be finite and > 0, got {factors.tolist()}")


class AdapLeRForSequenceClassification(nn.Module):
    """A Hugging Face encoder classifier plus one CP and one eta per layer."""

    def __init__(self, backbone: nn.Module, settings: AdapLeRSettings | None = None, tokenizer=None):
        super().__init__()
        # Bound to the backbone's modules (a plain object, not a submodule: parameter names stay
        # the backbone's own, and a deepcopy copies it along with them).
        self.family: BackboneFamily = family_for(backbone)
        self.backbone = backbone  # e.g. BertForSequenceClassification, unchanged
        self.settings = settings or AdapLeRSettings()
        self.tokenizer = tokenizer  # kept with the model so that save/load carries it
        if tokenizer is not None:
            tokenizer.padding_side = "right"  # [CLS] at position 0 (see forward)
        config = backbone.config
        self.num_layers = self.family.num_layers
        self.predictors = nn.ModuleList(
            ContributionPredictor(self.family.hidden_size, self.settings.cp_hidden, config.initializer_range)
            for _ in range(self.num_layers)
        )
        self.etas = nn.Parameter(torch.full((self.num_layers,), float(self.settings.eta_init)))
        self._fused_qkv: dict[int, tuple] = {}  # inference cache of concatenated Q/K/V weights, per layer
        # Set by adapler.quantization: a (quantized) fused Q/K/V Linear per layer used instead of the cache.
        self.fused_qkv: nn.ModuleList | None = None
        self.quantized: str | None = None  # "int8" after adapler.quantization.quantize_int8
        # Named eta factors measured on dev (adapler.operating_points), saved in config.json.
        self.operating_points: OperatingPoints | None = None

    # ------------------------------------------------------------------ construction / io
    @classmethod
    def from_backbone(
        cls,
        name_or_dir: str,
        num_labels: int,
        label_names: list[str] | None = None,
        **settings,
    ) -> AdapLeRForSequenceClassification:
        """Build from a plain HF checkpoint (hub id or local dir); head and CPs start random."""
        family = family_class(AutoConfig.from_pretrained(name_or_dir))  # one line for an unsupported family
        # ignore_mismatched_sizes: a checkpoint with another head size gets a fresh head.
        kwargs = {
            "num_labels": num_labels,
            "attn_implementation": family.attn_implementation,
            "ignore_mismatched_sizes": True,
        }
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        backbone = AutoModelForSequenceClassification.from_pretrained(name_or_dir, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
        return cls(backbone, AdapLeRSettings(**settings), tokenizer)

    def save_pretrained(self, directory: str | Path) -> None:
        """HF-style directory: config.json (with the AdapLeR settings), model.safetensors (the
        backbone, loadable by plain transformers), adapler.safetensors (CPs, etas), tokenizer."""
        if self.quantized:
            raise ValueError(
                f"a {self.quantized} model is not saved: save the float model and quantize it again at load time"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.config.adapler = dataclasses.asdict(self.settings)
        if self.operating_points is not None:
            self.backbone.config.adapler["operating_points"] = self.operating_points.to_dict()
        self.backbone.save_pretrained(directory, safe_serialization=True)
        extra = {f"predictors.{k}": v.contiguous() for k, v in self.predictors.state_dict().items()}
        extra["etas"] = self.etas.detach().contiguous()
        save_file(extra, str(directory / ADAPLER_WEIGHTS))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, attn_implementation: str | None = None
    ) -> AdapLeRForSequenceClassification:
        """attn_implementation: the backbone's own forward's; None = its family's default."""
        directory = check_model_dir(directory)  # safetensors only, no pickle-format file
        settings, points = read_adapler_config(directory)
        if attn_implementation is None:
            attn_implementation = family_class(AutoConfig.from_pretrained(directory)).attn_implementation
        backbone = AutoModelForSequenceClassification.from_pretrained(
            directory, attn_implementation=attn_implementation
        )
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = cls(backbone, settings, tokenizer)
        extra = load_file(str(directory / ADAPLER_WEIGHTS))
        model.etas.data.copy_(extra.pop("etas"))
        model.predictors.load_state_dict({k.removeprefix("predictors."): v for k, v in extra.items()})
        model.operating_points = points
        return model.eval()

    # ------------------------------------------------------------------ pieces of the backbone
    @property
    def config(self):
        return self.backbone.config

    @property
    def base_model(self) -> nn.Module:
        """The backbone's base model (e.g. BertModel): embeddings, encoder layers, pooler."""
        return self.family.base_model

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by optimizer group, each parameter in exactly one: "backbone" (with the
        head), "predictors" (the CPs), "etas". Names as in named_parameters() of this module."""
        return {
            "backbone": list(self.backbone.named_parameters(prefix="backbone")),
            "predictors": list(self.predictors.named_parameters(prefix="predictors")),
            "etas": [("etas", self.etas)],
        }

    def clip_etas(self) -> None:
        with torch.no_grad():
            self.etas.clamp_(self.settings.eta_min, self.settings.eta_max)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        removal: str | None = None,
        temperature: float = FIRST_STEP_TEMPERATURE,
        eta_factors: torch.Tensor | None = None,
    ) -> AdapLeROutput:
        """input_ids, attention_mask, token_type_ids: (B, T), padded on the right ([CLS] at 0; a mask
        that is not raises ValueError). removal: see the module docstring;
        default "soft" in train mode, "packed" in eval. temperature: lambda, soft removal only.
        eta_factors: (B,) positive floats, hard removal only ("masked", "packed"): example b keeps
        token i at layer l iff its score >= eta_l * eta_factors[b] / n_b, so examples asking for
        different operating points (adapler.operating_points) share one batch; None = 1 for all."""
        removal = removal or ("soft" if self.training else "packed")
        if removal not in REMOVAL_MODES:
            raise ValueError(f"removal must be one of {REMOVAL_MODES}, got {removal!r}")
        if eta_factors is not None:
            _check_eta_factors(eta_factors, input_ids.shape[0], removal)
            eta_factors = eta_factors.to(device=self.etas.device, dtype=self.etas.dtype)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        else:
            _check_right_padded(attention_mask.bool())
        present = attention_mask.bool()  # (B, T)
        if removal == "none":
            logits = self.backbone(**self.family.hf_inputs(input_ids, attention_mask, token_type_ids)).logits
            kept_mask = present[:, None, :].expand(-1, self.num_layers, -1)
            return AdapLeROutput(logits, kept_mask.sum(-1), kept_mask)
        hidden = self.family.embed(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        if removal == "soft":
            return self._forward_soft(hidden, present, temperature)
        if removal == "masked":
            return self._forward_masked(hidden, present, eta_factors)
        return self._forward_packed(hidden, present, eta_factors)

    def forward_batches(self, calls: Sequence[dict]) -> list[AdapLeROutput]:
        """The forwards of several batches (each the keyword arguments of :meth:`forward`), in
        order, one after another: torch spreads each one's ops over its threads (the ONNX Runtime
        model runs small batches side by side instead, ``OnnxAdapLeR.forward_batches``)."""
        return [self(**call) for call in calls]

    def _layer(self, index: int, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        """Layer ``index`` of the backbone over token rows x (N, H), placed by ``rows``."""
        return self.family.layer(index, x, rows, lambda h: self._qkv(index, h))

    def _qkv(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Q, K, V projections of x (N, H) side by side: (N, 3H).

        Without autograd (inference) the family's Q/K/V weight matrices are concatenated once and
        cached (rebuilt if a weight changes); with autograd, the concatenation is part of the
        graph. An int8 model (adapler.quantization) brings its own fused, quantized projection.
        """
        if self.fused_qkv is not None:
            return self.fused_qkv[index](x)
        linears = self.family.qkv_linears(index)
        if torch.is_grad_enabled():
            return F.linear(x, *fuse_linears(linears))
        stamp = tuple(
            (m.weight.data_ptr(), m.weight._version, None if m.bias is None else m.bias._version) for m in linears
        )
        cached = self._fused_qkv.get(index)
        if cached is None or cached[0] != stamp or cached[1].device != x.device:
            with torch.no_grad():
                cached = (stamp, *fuse_linears(linears))
            self._fused_qkv[index] = cached
        return F.linear(x, cached[1], cached[2])

    def _forward_soft(self, hidden: torch.Tensor, present: torch.Tensor, temperature: float) -> AdapLeROutput:
        """Soft removal (spec 4). Three copies of the (cheap, (B, T)) mask recursion route the
        gradients as the spec asks, in one backward pass:
          live:   drives the attention bias, so CE reaches backbone, CPs and etas;
          kl:     etas detached, for the KL term (the etas get no gradient from it);
          length: CP scores detached, for n_l (the model gets no gradient from the length term).
        """
        batch, seq, width = hidden.shape
        is_cls = torch.zeros_like(present)
        is_cls[:, 0] = True
        frozen = ~present | is_cls  # S is 0 for [CLS] and padding
        beta = self.settings.beta
        key_bias = torch.where(present, 0.0, SOFT_FLOOR).to(hidden.dtype)  # (B, T)
        mask_live = mask_kl = mask_len = present.to(hidden.dtype)  # m_0: 1 for tokens, 0 for padding
        scores, masks_before, soft_lengths = [], [], []

        def step(z: torch.Tensor, eta: torch.Tensor, mask: torch.Tensor):
            x = _soft_scores(z, mask, present)  # (B, T)
            delta = eta / mask.sum(-1, keepdim=True)  # (B, 1): eta_l / n, n = 1 + sum m (non-CLS)
            s = soft_removal(x, delta, temperature, beta).masked_fill(frozen, 0.0)
            return x, s

        x = hidden.reshape(batch * seq, width)  # (B*T, H)
        for index, predictor in enumerate(self.predictors):
            z = predictor(x).view(batch, seq)  # (B, T) contribution logits of the tokens entering layer l
            eta = self.etas[index]
            _, s_live = step(z, eta, mask_live)
            mask_live = mask_live * torch.exp(s_live)
            key_bias = (key_bias + s_live).clamp_min(SOFT_FLOOR)

            score_kl, s_kl = step(z, eta.detach(), mask_kl)
            scores.append(score_kl)
            masks_before.append(mask_kl)
            mask_kl = mask_kl * torch.exp(s_kl)

            _, s_len = step(z.detach(), eta, mask_len)
            mask_len = mask_len * torch.exp(s_len)
            soft_lengths.append(mask_len.sum(-1))  # n_l = 1 + sum of m over non-[CLS] tokens

            rows = _GridRows(batch, seq, key_bias[:, None, None, :], mask_live)
            x = self._layer(index, x, rows)
        logits = self.family.classify(x, rows)
        kept_mask = present[:, None, :].expand(-1, self.num_layers, -1)  # soft: nothing leaves
        return AdapLeROutput(
            logits, kept_mask.sum(-1), kept_mask, scores, masks_before, torch.stack(soft_lengths, dim=1)
        )

    def _eta(self, index: int, factors: torch.Tensor | None) -> torch.Tensor:
        """eta_l, times each example's factor when given: () or (B,). The one place the per-example
        factor enters the threshold, so that the batched and the batch-1 cut round alike."""
        return self.etas[index] if factors is None else self.etas[index] * factors

    def _hard_keep(
        self, index: int, z: torch.Tensor, present: torch.Tensor, factors: torch.Tensor | None
    ) -> torch.Tensor:
        """Hard cut of layer l on padded scores: keep i iff i~_i >= eta_l * f_b / n, plus [CLS]. (B, T) bool."""
        scores = torch.softmax(z.masked_fill(~present, float("-inf")), dim=-1)  # (B, T)
        eta = self._eta(index, factors)
        threshold = (eta if factors is None else eta[:, None]) / present.sum(-1, keepdim=True)  # (B, 1)
        keep = (scores >= threshold) & present
        keep[:, 0] = True
        return keep

    def _forward_masked(
        self, hidden: torch.Tensor, present: torch.Tensor, factors: torch.Tensor | None
    ) -> AdapLeROutput:
        """Hard removal by masking: removed tokens are still computed, only hidden from attention."""
        batch, seq, width = hidden.shape
        x = hidden.reshape(batch * seq, width)
        kept = []
        for index, predictor in enumerate(self.predictors):
            present = self._hard_keep(index, predictor(x).view(batch, seq), present, factors)
            kept.append(present)
            key_bias = torch.where(present, 0.0, float("-inf")).to(x.dtype)[:, None, None, :]
            rows = _GridRows(batch, seq, key_bias, present.to(x.dtype))
            x = self._layer(index, x, rows)
        logits = self.family.classify(x, rows)
        kept_mask = torch.stack(kept, dim=1)  # (B, L, T)
        return AdapLeROutput(logits, kept_mask.sum(-1), kept_mask)

    def _forward_packed(
        self, hidden: torch.Tensor, present: torch.Tensor, factors: torch.Tensor | None
    ) -> AdapLeROutput:
        """Real removal: only kept tokens are computed."""
        batch, seq, width = hidden.shape
        device = hidden.device
        if batch == 1:
            return self._forward_single(hidden[0][present[0]], seq, factors)
        x = hidden[present]  # (N, H), example-major, positions ascending
        example = torch.arange(batch, device=device)[:, None].expand(batch, seq)[present]  # (N,)
        position = torch.arange(seq, device=device)[None, :].expand(batch, seq)[present]  # (N,) input position
        grid = _PackedGrid(example, batch)
        kept_mask = torch.zeros(batch, self.num_layers, seq, dtype=torch.bool, device=device)
        rows = None
        for index, predictor in enumerate(self.predictors):
            z = x.new_full((batch, grid.length), float("-inf"))  # (B, T_grid) scores on the padded grid
            z[example, grid.slot] = predictor(x)
            keep = self._hard_keep(index, z, grid.present, factors)[example, grid.slot]  # (N,)
            if rows is None or not bool(keep.all()):  # a layer that keeps every token keeps the layout
                x, example, position = x[keep], example[keep], position[keep]
                grid = _PackedGrid(example, batch)
                rows = _PackedRows(grid, position, x.dtype)
            kept_mask[example, index, position] = True
            x = self._layer(index, x, rows)
        logits = self.family.classify(x, rows)  # [CLS] is the first kept row of each example
        return AdapLeROutput(logits, kept_mask.sum(-1), kept_mask)

    def _forward_single(self, x: torch.Tensor, seq: int, factors: torch.Tensor | None) -> AdapLeROutput:
        """Packed removal for one example, x (n, H) without padding: no grid, no scatter, no mask.
        Batch size 1 is bound by reading the weights; this keeps the per-layer overhead small."""
        position = torch.arange(x.shape[0], device=x.device)  # (n,) input positions
        kept_mask = torch.zeros(1, self.num_layers, seq, dtype=torch.bool, device=x.device)
        rows = None
        for index, predictor in enumerate(self.predictors):
            scores = torch.softmax(predictor(x), dim=-1)  # (n,)
            keep = scores >= self._eta(index, factors) / x.shape[0]  # () or (1,): one example
            keep[0] = True  # [CLS]
            if rows is None or not bool(keep.all()):  # a layer that keeps every token keeps the layout
                x, position = x[keep], position[keep]
                rows = _SingleRows(position)
            kept_mask[0, index, position] = True
            x = self._layer(index, x, rows)
        logits = self.family.classify(x, rows)
        return AdapLeROutput(logits, kept_mask.sum(-1), kept_mask)


class _PackedGrid:
    """Where packed rows sit in a (B, T_grid) padded grid, T_grid the longest kept length."""

    def __init__(self, example: torch.Tensor, batch: int):
        lengths = torch.bincount(example, minlength=batch)  # (B,)
        self.length = int(lengths.max())
        self.starts = lengths.cumsum(0) - lengths  # (B,) first row of each example
        self.slot = torch.arange(example.shape[0], device=example.device) - self.starts[example]  # (N,)
        self.present = torch.arange(self.length, device=example.device)[None, :] < lengths[:, None]  # (B, T_grid)
        self.padded = not bool(self.present.all())  # no padding (e.g. batch size 1): no scatter, no mask
        self.scatter = example * self.length + self.slot if self.padded else None  # (N,) flat grid index

    def key_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        if not self.padded:
            return None
        return torch.where(self.present, 0.0, float("-inf")).to(dtype)[:, None, None, :]  # (B, 1, 1, T_grid)


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """SDPA with the rows' key mask plus the family's own score terms, (B, heads, T, d)."""
    mask = key_bias if bias is None else (bias if key_bias is None else key_bias + bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class _GridRows(TokenRows):
    """x is the whole padded grid, (B * T, H) rows example-major (soft and masked removal).
    key_bias (B, 1, 1, T) hides padding and removed keys; weight (B, T) the tokens' masks."""

    def __init__(self, batch: int, seq: int, key_bias: torch.Tensor, weight: torch.Tensor):
        self.batch, self.seq, self.key_bias, self.weight = batch, seq, key_bias, weight

    def to_grid(self, rows):
        return rows.view(self.batch, self.seq, -1)

    def from_grid(self, grid):
        return grid.reshape(self.batch * self.seq, grid.shape[-1])

    def attend(self, q, k, v, bias=None, scale=None):
        return _attention(q, k, v, self.key_bias, bias, scale)

    @property
    def positions(self):
        return torch.arange(self.seq, device=self.weight.device)[None, :].expand(self.batch, -1)

    @property
    def token_weight(self):
        return self.weight

    def first(self, x):
        return x.view(self.batch, self.seq, -1)[:, 0]


class _PackedRows(TokenRows):
    """x holds only the kept tokens, (N, H) example-major; attention runs on the (B, T_grid) grid
    of ``grid``; position (N,) the input position of each row."""

    def __init__(self, grid: _PackedGrid, position: torch.Tensor, dtype: torch.dtype):
        self.grid, self.position, self.dtype = grid, position, dtype
        self.key_bias = grid.key_bias(dtype)
        self.batch = grid.starts.shape[0]

    def to_grid(self, rows):
        if self.grid.scatter is None:
            return rows.view(self.batch, self.grid.length, -1)
        grid = rows.new_zeros(self.batch * self.grid.length, rows.shape[-1])
        grid[self.grid.scatter] = rows
        return grid.view(self.batch, self.grid.length, -1)

    def from_grid(self, grid):
        flat = grid.reshape(self.batch * self.grid.length, grid.shape[-1])
        return flat if self.grid.scatter is None else flat[self.grid.scatter]

    def attend(self, q, k, v, bias=None, scale=None):
        return _attention(q, k, v, self.key_bias, bias, scale)

    @property
    def positions(self):
        return self.to_grid(self.position[:, None])[..., 0]

    @property
    def token_weight(self):
        return self.grid.present.to(self.dtype)

    def first(self, x):
        return x[self.grid.starts]


class _SingleRows(TokenRows):
    """One example without padding: x (n, H) is its own grid (no scatter, no mask)."""

    def __init__(self, position: torch.Tensor):
        self.position = position  # (n,) input positions of the rows

    def to_grid(self, rows):
        return rows[None]

    def from_grid(self, grid):
        return grid.reshape(grid.shape[1], grid.shape[-1])

    def attend(self, q, k, v, bias=None, scale=None):
        return _attention(q, k, v, None, bias, scale)

    @property
    def positions(self):
        return self.position[None]

    @property
    def token_weight(self):
        return torch.ones(1, self.position.shape[0], device=self.position.device)

    def first(self, x):
        return x[:1]
