"""Encoders: layer selection, pooling under left/right padding, chat template, offline wordllama."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pluralign.embed import Encoder, WordLlamaEncoder, load_encoder

# Skipped without torch and transformers, which are imported by the tests that use them, not at
# collection: every pytest-xdist worker collects every module, and torch takes ~2 s to import.
pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")),
                                reason="needs torch and transformers (pip install '.[embed]')")

TEXTS = ["the cat sat on the mat", "dog", ("what do you like", "a red dog runs fast"),
         "tell me a story about a blue cat please", "good"]


def _hf(path, **options):
    return load_encoder("hf", model=str(path), local_files_only=True, device="cpu", **options)


def _reference_hidden(encoder, text: str):
    """Hidden states of one unpadded text, straight from the model: [L + 1, T, D]."""
    import torch

    ids = encoder.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = encoder.model(input_ids=ids, output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0].numpy(), ids[0]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_matches_unpadded_reference(tiny_llama, padding_side, pooling):
    enc = _hf(tiny_llama, padding_side=padding_side, pooling=pooling)
    texts = [t for t in TEXTS if isinstance(t, str)]
    got = enc.encode(texts, batch_size=len(texts))  # one padded batch of unequal lengths
    for text, row in zip(texts, got):
        hidden, _ = _reference_hidden(enc, text)
        last_layer = hidden[-1]  # [T, D]
        want = last_layer[-1] if pooling == "last" else last_layer.mean(0)
        np.testing.assert_allclose(row, want, atol=1e-5, err_msg=f"{padding_side} {pooling}")
    assert enc.tokenizer.padding_side == padding_side


def test_left_padding_needs_mask_positions(tiny_gpt2):
    """GPT-2 numbers positions by index; without mask-based position ids a left-padded
    short text would get a different vector than alone."""
    enc = _hf(tiny_gpt2, padding_side="left", pooling="last")
    batch = enc.encode(["dog", "tell me a story about a blue cat please"], batch_size=2)
    alone = enc.encode(["dog"], batch_size=1)
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    enc._takes_positions = False  # the bug this guards against is real on this model
    assert np.abs(enc.encode(["dog", "tell me a story"], batch_size=2)[0] - alone[0]).max() > 1e-3


def test_layer_selection(tiny_gpt2):
    text = "the cat sat on the mat"
    encoders = {layer: _hf(tiny_gpt2, layer=layer, pooling="mean")
                for layer in ("last", "penultimate", "0", "1", "2", "-3")}
    hidden, ids = _reference_hidden(encoders["last"], text)
    vec = {layer: e.encode([text])[0] for layer, e in encoders.items()}
    for index in range(3):
        np.testing.assert_allclose(vec[str(index)], hidden[index].mean(0), atol=1e-5)
    np.testing.assert_allclose(vec["last"], vec["2"], atol=1e-6)
    np.testing.assert_allclose(vec["penultimate"], vec["1"], atol=1e-6)
    np.testing.assert_allclose(vec["-3"], vec["0"], atol=1e-6)
    # Layer 0 is the token + position embedding, computed here by hand.
    m = encoders["0"].model
    by_hand = (m.wte.weight[ids] + m.wpe.weight[: len(ids)]).detach().numpy().mean(0)
    np.testing.assert_allclose(vec["0"], by_hand, atol=1e-5)
    assert not np.allclose(vec["last"], vec["penultimate"])
    assert encoders["penultimate"].describe()["layer"] == "penultimate"
    with pytest.raises(ValueError, match="out of range"):
        _hf(tiny_gpt2, layer="5")
    with pytest.raises(ValueError, match="encoder.layer"):
        _hf(tiny_gpt2, layer="middle")


def test_chat_template_and_pairs(tiny_llama):
    plain = _hf(tiny_llama)
    chat = _hf(tiny_llama, chat_template=True)
    pair = ("what do you like", "a red dog runs fast")
    assert chat._format(pair) == "<user> what do you like </s> <assistant> a red dog runs fast </s> "
    v_plain, v_chat = plain.encode([pair])[0], chat.encode([pair])[0]
    assert not np.allclose(v_plain, v_chat)
    # A plain pair is the prompt and response joined by pair_separator.
    np.testing.assert_allclose(v_plain, plain.encode([pair[0] + "\n\n" + pair[1]])[0], atol=1e-6)
    d = chat.describe()
    assert d["chat_template"] is True and d["dim"] == 32 and d["model"] == str(tiny_llama)


def test_auto_dtype_is_float32_on_cpu_and_recorded(tiny_llama):
    enc = _hf(tiny_llama)  # encoder.dtype defaults to auto: bfloat16 on a GPU, float32 on CPU
    assert enc.config.dtype == "auto" and enc.describe()["dtype"] == "float32"
    assert str(next(enc.model.parameters()).dtype) == "torch.float32"


def test_half_precision_is_close_to_float32(tiny_llama):
    texts = [t for t in TEXTS if isinstance(t, str)]
    full = _hf(tiny_llama).encode(texts)
    half = _hf(tiny_llama, dtype="bfloat16")
    got = half.encode(texts)
    assert got.dtype == np.float32 and half.describe()["dtype"] == "bfloat16"
    assert np.abs(got - full).max() < 0.05 * np.abs(full).max() and not np.array_equal(got, full)


def test_truncation_keeps_the_end_by_default(tiny_llama):
    enc = _hf(tiny_llama, max_length=3, pooling="mean")
    long = "the cat sat on the mat"
    np.testing.assert_allclose(enc.encode([long])[0], enc.encode(["on the mat"])[0], atol=1e-5)


def test_bad_options_are_named(tiny_llama):
    for bad, match in [({"pooling": "max"}, "encoder.pooling"), ({"dtype": "int8"}, "encoder.dtype"),
                       ({"nonsense": 1}, "unknown option")]:
        with pytest.raises(ValueError, match=match):
            _hf(tiny_llama, **bad)
    with pytest.raises(ValueError, match="encoder.model"):
        load_encoder("hf")
    with pytest.raises(TypeError, match="text 1"):
        _hf(tiny_llama).encode(["ok", 3])


def test_wordllama_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder("wordllama")
    assert isinstance(enc, WordLlamaEncoder) and isinstance(enc, Encoder) and enc.dim == 256
    x = enc.encode(["a cat sat on the mat", "a kitten sat on the rug", "stock prices fell sharply"])
    assert x.shape == (3, 256) and x.dtype == np.float32 and np.isfinite(x).all()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    assert cos[0, 1] > cos[0, 2]  # a pretrained encoder, not random vectors
    # Batching and ordering do not change a text's vector.
    np.testing.assert_allclose(enc.encode(["stock prices fell sharply", "a cat sat on the mat"],
                                          batch_size=1), x[[2, 0]], atol=1e-6)
    # The same vectors as WordLlama's own (padded) embed(), empty text included.
    texts = ["a cat sat on the mat", "", "x " * 300, ("a prompt", "its response")]
    own = enc._model.embed(["a cat sat on the mat", "", "x " * 300, "a prompt\n\nits response"])
    np.testing.assert_allclose(enc.encode(texts, batch_size=3), own, atol=1e-5)
    normed = load_encoder("wordllama", normalize=True).encode(["a cat sat on the mat"])
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    assert enc.describe()["model"] == "wordllama/l2_supercat"
