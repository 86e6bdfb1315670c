"""A tiny, randomly initialised transformers model + tokenizer saved to disk (no download)."""

from __future__ import annotations

import pathlib

import pytest

WORDS = ("the a cat dog sat on mat runs fast slow red blue green good bad is was "
         "what why how do you like it yes no please tell me about story").split()
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> "
                 "{% endfor %}")


def save_tiny_model(root: pathlib.Path, family: str = "llama", seed: int = 0) -> pathlib.Path:
    """A 2-layer, hidden-32 model of ``family`` (llama | gpt2 | bert) and a word-level
    tokenizer with a chat template, saved to ``root``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "</s>", "<user>", "<assistant>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # No pad token on purpose (like most causal LMs): the encoder must pick a fallback.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>",
                                   **({"pad_token": "<pad>"} if family == "bert" else {}))
    fast.chat_template = CHAT_TEMPLATE
    n = len(vocab)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaModel(LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=128))
    elif family == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=4, n_positions=128))
    else:
        model = BertModel(BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=128))
    path = root / f"tiny-{family}"
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> pathlib.Path:
    return save_tiny_model(tmp_path_factory.mktemp("models"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> pathlib.Path:
    return save_tiny_model(tmp_path_factory.mktemp("models"), "gpt2")
