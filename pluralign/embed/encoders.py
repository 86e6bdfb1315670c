"""Frozen text encoders: texts -> one float32 vector per text.

Every model in pluralign is a small head on frozen embeddings (docs/design/architecture.md); this
module is the frozen part. Two encoders share one surface (:class:`Encoder`):

* :class:`WordLlamaEncoder` — the static token-embedding model shipped *inside*
  the ``wordllama`` wheel (256-d, mean of token vectors). Needs no network and no
  GPU, so it is the default for offline demos and tests.
* :class:`TransformersEncoder` — any Hugging Face ``transformers`` model (causal LM
  or encoder, local path or hub id): hidden state of a chosen layer, pooled over
  the tokens (last non-pad token, or masked mean).

A text is a ``str`` or a ``(prompt, response)`` pair; a pair is embedded as one
conversation (chat template: user + assistant turns; plain: joined with
``pair_separator``), which is how prompt-conditioned response embeddings are made.

``load_encoder("wordllama")``, ``load_encoder("hf", model="gpt2", layer="penultimate")``
or ``load_encoder(TransformersEncoderConfig(...))`` build one from a name or config.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import itertools
import pathlib
from typing import Any, Callable, Sequence, Union

import numpy as np

# A text to embed: plain text, or a (prompt, response) conversation.
Text = Union[str, tuple[str, str]]


@dataclasses.dataclass
class WordLlamaEncoderConfig:
    """The offline static encoder (``encoder=wordllama``)."""

    name: str = "wordllama"
    config: str = "l2_supercat"   # the model the wheel ships
    dim: int = 256                # the shipped weights are 256-d
    trunc_dim: int | None = None  # Matryoshka truncation (64/128/...), None = full dim
    normalize: bool = False       # L2-normalise each vector
    batch_size: int = 128
    pair_separator: str = "\n\n"  # how a (prompt, response) pair is joined


@dataclasses.dataclass
class TransformersEncoderConfig:
    """A frozen Hugging Face model (``encoder=hf encoder.model=<path or hub id>``)."""

    name: str = "hf"
    model: str = "???"            # local directory or hub id
    layer: str = "last"           # "last", "penultimate", or an index into hidden_states
                                  # (0 = token embeddings, 1..L = blocks, negative from the end)
    pooling: str = "last"         # "last" (last non-pad token) or "mean" (masked mean)
    chat_template: bool = False   # format texts with the tokenizer's chat template
    max_length: int = 512         # tokens; longer texts are truncated on truncation_side
    truncation_side: str = "left" # "left" keeps the end of a text (the response)
    padding_side: str | None = None  # None = the tokenizer's own; pooling handles both
    batch_size: int = 16
    dtype: str = "auto"           # weights/activations: auto (bfloat16 on a GPU, float32 on CPU),
                                  # float32, bfloat16, float16
    device: str = "auto"          # "auto" (cuda if available, else cpu), "cpu", "cuda:0", ...
    normalize: bool = False       # L2-normalise each vector
    pair_separator: str = "\n\n"  # plain-text join of a (prompt, response) pair
    local_files_only: bool = False  # never reach the hub (set HF_HUB_OFFLINE=1 for the same)
    trust_remote_code: bool = False


class Encoder(abc.ABC):
    """A frozen text encoder. ``encode`` returns ``float32 [n, dim]``."""

    dim: int

    @abc.abstractmethod
    def describe(self) -> dict:
        """What ``meta.json``'s ``encoder`` records: model, layer, pooling, dim, dtype, ..."""

    @abc.abstractmethod
    def _encode_batch(self, texts: list[Text]) -> np.ndarray:
        """One batch -> float32 [len(texts), dim] (before normalisation)."""

    normalize: bool = False
    batch_size: int = 32

    def encode(self, texts: Sequence[Text], batch_size: int | None = None,
               on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Embeds ``texts`` (each a str or a (prompt, response) pair); float32 [n, dim].

        Texts are batched in order of length so that little compute goes into padding;
        the result is in the input order. ``on_batch(n)`` is called after each batch of
        ``n`` texts (progress bars).
        """
        texts = [check_text(t, i) for i, t in enumerate(texts)]
        batch_size = int(batch_size or self.batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(texts), self.dim), np.float32)
        order = np.argsort([_text_len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._encode_batch([texts[i] for i in rows])
            if on_batch is not None:
                on_batch(len(rows))
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def check_text(t: Any, i: int) -> Text:
    """Text ``i`` as the encoders take it (a str or a (prompt, response) pair), or a TypeError naming it."""
    if isinstance(t, str):
        return t
    if isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t):
        return (t[0], t[1])
    raise TypeError(f"text {i}: expected a str or a (prompt, response) pair of str, got {t!r:.80}")


def _text_len(t: Text) -> int:
    return len(t) if isinstance(t, str) else len(t[0]) + len(t[1])


def _join_pair(t: Text, separator: str) -> str:
    """Plain-text form of a text: a (prompt, response) pair joined with ``separator``."""
    return t if isinstance(t, str) else t[0] + separator + t[1]


# ----------------------------------------------------------------- wordllama

class WordLlamaEncoder(Encoder):
    """Mean of WordLlama's static token vectors (no attention, no GPU, ~µs per text)."""

    def __init__(self, config: WordLlamaEncoderConfig | None = None) -> None:
        import wordllama
        from wordllama import WordLlama

        self.config = config = config or WordLlamaEncoderConfig()
        # The wheel ships weights/ and tokenizers/ in its own package folder; wordllama's
        # default cache_dir lookup does not find them there, so point it at that folder.
        package_dir = pathlib.Path(wordllama.__file__).parent
        try:
            self._model = WordLlama.load(config=config.config, dim=config.dim,
                                         trunc_dim=config.trunc_dim, cache_dir=package_dir,
                                         disable_download=True)
        except (FileNotFoundError, ValueError, AttributeError) as e:
            raise ValueError(f"encoder=wordllama: cannot load config={config.config!r} "
                             f"dim={config.dim} trunc_dim={config.trunc_dim} from the files "
                             f"shipped in {package_dir}: {e}") from e
        self.dim = int(self._model.embedding.shape[1])
        self.normalize, self.batch_size = config.normalize, config.batch_size
        # A private, unpadded copy of its tokenizer: pooling below needs no padding.
        from tokenizers import Tokenizer
        self._tokenizer = Tokenizer.from_str(self._model.tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def describe(self) -> dict:
        import wordllama
        return {"kind": "wordllama", "model": f"wordllama/{self.config.config}",
                "version": getattr(wordllama, "__version__", None), "layer": "static",
                "pooling": "mean", "dim": self.dim, "dtype": "float32",
                "normalize": self.normalize, "pair_separator": self.config.pair_separator}

    def _encode_batch(self, texts: list[Text]) -> np.ndarray:
        # WordLlama's own embed() gathers a padded [B, T, D] block (1 GB for 512 long
        # texts); the same masked mean over the unpadded token stream is a reduceat.
        flat = [_join_pair(t, self.config.pair_separator) for t in texts]
        encodings = self._tokenizer.encode_batch(flat, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int64,
                          int(lengths.sum()))
        table = self._model.embedding                                   # [V, D] float32
        np.clip(ids, 0, table.shape[0] - 1, out=ids)  # as WordLlama does for unknown ids
        out = np.zeros((len(flat), self.dim), np.float32)
        nonempty = lengths > 0                                          # "" -> zero vector
        if nonempty.any():
            starts = np.cumsum(lengths) - lengths
            out[nonempty] = np.add.reduceat(table[ids], starts[nonempty], axis=0)
        return out / np.maximum(lengths, 1)[:, None].astype(np.float32)


# ----------------------------------------------------------------- transformers

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _parse_layer(layer: Any) -> int | str:
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        return int(layer)
    s = str(layer).strip()
    if s in ("last", "penultimate"):
        return s
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"encoder.layer={layer!r}: expected 'last', 'penultimate' or an "
                         "integer index into the hidden states") from None


class TransformersEncoder(Encoder):
    """Pooled hidden states of a frozen ``transformers`` model.

    ``hidden_states`` has L + 1 entries: index 0 is the token-embedding output and
    index i the output of block i, so "last" = L (= -1) and "penultimate" = L - 1
    (= -2). Note that many causal LMs (Llama, GPT-2) apply their final norm to the
    last entry only. Pooling uses the attention mask, so it is correct for left and
    right padding alike: "last" takes the last position whose mask is 1, "mean"
    averages the positions whose mask is 1.
    """

    def __init__(self, config: TransformersEncoderConfig) -> None:
        try:
            import torch
            from transformers import AutoConfig, AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"encoder=hf needs transformers and torch ({e}); install them "
                              "with: pip install \"pluralign[embed]\"") from e

        self.config = c = config
        if c.model in ("???", "", None):
            raise ValueError("encoder=hf needs encoder.model=<local path or hub id>")
        self.layer = _parse_layer(c.layer)
        self._hidden_index = {"last": -1, "penultimate": -2}.get(self.layer, self.layer)
        if c.pooling not in ("last", "mean"):
            raise ValueError(f"encoder.pooling={c.pooling!r}: expected 'last' or 'mean'")
        if c.dtype not in _DTYPES:
            raise ValueError(f"encoder.dtype={c.dtype!r}: expected one of {_DTYPES}")
        if c.truncation_side not in ("left", "right"):
            raise ValueError(f"encoder.truncation_side={c.truncation_side!r}: expected left/right")
        if c.padding_side not in (None, "left", "right"):
            raise ValueError(f"encoder.padding_side={c.padding_side!r}: expected left/right/null")
        if c.max_length < 1:
            raise ValueError(f"encoder.max_length must be >= 1, got {c.max_length}")
        device = c.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # bf16 halves a GPU's memory traffic and runs on its tensor cores; the pooled vectors are
        # returned as float32 either way. CPUs keep float32 (bf16 matmuls are slow on most).
        self.dtype = c.dtype if c.dtype != "auto" else ("bfloat16" if self.device.type == "cuda" else "float32")

        import transformers
        transformers.utils.logging.disable_progress_bar()  # one bar per weight load is noise
        hub = dict(local_files_only=c.local_files_only, trust_remote_code=c.trust_remote_code)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(c.model, **hub)
        except (OSError, ValueError) as e:
            where = "local directory" if pathlib.Path(c.model).is_dir() else "hub id or local path"
            raise ValueError(f"encoder.model={c.model!r}: cannot load a tokenizer from this "
                             f"{where} (offline? set encoder.model to a local directory): {e}") from e
        if self.tokenizer.pad_token is None:  # causal LMs often have none; the mask hides it
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise ValueError(f"tokenizer of {c.model} has no pad, eos or unk token to pad with")
            self.tokenizer.pad_token = fallback
        if c.padding_side is not None:
            self.tokenizer.padding_side = c.padding_side
        self.tokenizer.truncation_side = c.truncation_side
        if c.chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"encoder.chat_template=true but the tokenizer of {c.model} has "
                             "no chat template")

        model_config = AutoConfig.from_pretrained(c.model, **hub)
        if getattr(model_config, "is_encoder_decoder", False):
            raise ValueError(f"{c.model} is an encoder-decoder model; use a decoder-only "
                             "(causal LM) or encoder-only model")
        self.model = AutoModel.from_pretrained(c.model, dtype=getattr(torch, self.dtype), **hub)
        self.model.to(self.device).eval()
        # Models number positions 0..T-1 regardless of the mask, which shifts every
        # left-padded text; passing positions counted over real tokens makes a text's
        # vector independent of its padding (tested).
        self._takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters
        self.n_layers = int(getattr(model_config, "num_hidden_layers", 0)
                            or getattr(model_config, "n_layer", 0))
        if self.n_layers:
            if not -(self.n_layers + 1) <= self._hidden_index <= self.n_layers:
                raise ValueError(f"encoder.layer={c.layer!r} out of range for {c.model}: "
                                 f"hidden states are 0..{self.n_layers} (or -1..-{self.n_layers + 1})")
        self.dim = int(model_config.hidden_size)
        self.normalize, self.batch_size = c.normalize, c.batch_size
        self._torch = torch

    def describe(self) -> dict:
        import transformers
        c = self.config
        return {"kind": "transformers", "model": c.model,
                "revision": getattr(self.model.config, "_commit_hash", None),
                "transformers_version": transformers.__version__,
                "layer": self.layer, "n_layers": self.n_layers, "pooling": c.pooling,
                "dim": self.dim, "dtype": self.dtype, "chat_template": c.chat_template,
                "max_length": c.max_length, "truncation_side": c.truncation_side,
                "normalize": self.normalize,
                **({} if c.chat_template else {"pair_separator": c.pair_separator})}

    def _format(self, t: Text) -> str:
        c = self.config
        if not c.chat_template:
            return _join_pair(t, c.pair_separator)
        turns = ([{"role": "user", "content": t}] if isinstance(t, str) else
                 [{"role": "user", "content": t[0]}, {"role": "assistant", "content": t[1]}])
        return self.tokenizer.apply_chat_template(turns, tokenize=False)

    def _encode_batch(self, texts: list[Text]) -> np.ndarray:
        torch = self._torch
        c = self.config
        # A chat template already writes the special tokens (BOS etc.) into the text.
        batch = self.tokenizer([self._format(t) for t in texts], padding=True, truncation=True,
                               max_length=c.max_length, return_tensors="pt",
                               add_special_tokens=not c.chat_template).to(self.device)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self._takes_positions:
            inputs["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[self._hidden_index].float()     # [B, T, D]
        mask = batch["attention_mask"].to(hidden.dtype)            # [B, T]
        if c.pooling == "mean":
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        else:  # the last position with mask 1: right padding -> len-1, left padding -> T-1
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask * positions).argmax(dim=1)                # [B]
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return pooled.cpu().numpy().astype(np.float32, copy=False)


# ----------------------------------------------------------------- factory

_CONFIGS = {"wordllama": WordLlamaEncoderConfig, "hf": TransformersEncoderConfig,
            "transformers": TransformersEncoderConfig}


def load_encoder(name_or_config: str | Any, **options: Any) -> Encoder:
    """Builds an encoder from a name, a config dataclass or a dict with a ``name``.

    ``load_encoder("wordllama")``; ``load_encoder("hf", model="gpt2", layer=-2)``;
    any other string is taken as a transformers model path or hub id:
    ``load_encoder("/models/llama", pooling="mean")``. ``options`` override fields.
    """
    cfg = name_or_config
    if isinstance(cfg, Encoder):
        if options:
            raise ValueError("options cannot be applied to an already built encoder")
        return cfg
    if isinstance(cfg, dict) or hasattr(cfg, "items") and not isinstance(cfg, str):
        fields = dict(cfg.items())
        name = fields.pop("name", None)
        if name is None:
            raise ValueError(f"encoder config needs a 'name' ({sorted(_CONFIGS)}), got {fields}")
        return load_encoder(name, **{**fields, **options})
    if isinstance(cfg, str):
        if cfg in _CONFIGS:
            cls = _CONFIGS[cfg]
        else:
            cls, options = TransformersEncoderConfig, {"model": cfg, **options}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for encoder {cfg!r}; known: {sorted(known)}")
        cfg = cls(**options)
    elif dataclasses.is_dataclass(cfg):
        cfg = dataclasses.replace(cfg, **options) if options else cfg
    else:
        raise TypeError(f"cannot build an encoder from {type(cfg).__name__}")
    if isinstance(cfg, WordLlamaEncoderConfig):
        return WordLlamaEncoder(cfg)
    if isinstance(cfg, TransformersEncoderConfig):
        return TransformersEncoder(cfg)
    raise TypeError(f"unknown encoder config {type(cfg).__name__}")
