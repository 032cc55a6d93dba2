"""Streaming evaluation with the whole cache carried (``carry="cache"``): windows of any size and any batch
composition give what one forward over each whole stream gives, for full and sliding-window attention."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sru_lm.training.cli import add_model_args, lm_model_kwargs
from sru_lm.training.lm import evaluate_streaming
from sru_lm.training.pipeline import build_sru_lm, save_lm


def hybrid(tokenizer, attention_window=None, seed=0):
    torch.manual_seed(seed)
    model = build_sru_lm(tokenizer, hidden_size=32, num_layers=2, attention_every=1,
                         attention_window=attention_window)
    with torch.no_grad():  # alpha starts at 0 (attention off); switch attention on so that it matters
        for layer in model.model.layers:
            layer.alpha.fill_(1.0)
    return model.eval()


def whole_nll(model, streams) -> float:
    """Each stream in one forward: the reference the chunked evaluation must reproduce."""
    total = 0.0
    with torch.no_grad():
        for s in streams:
            x = torch.tensor(s, dtype=torch.long)[None]
            total += float(F.cross_entropy(model(input_ids=x[:, :-1]).logits[0], x[0, 1:], reduction="sum"))
    return total


@pytest.fixture
def streams(lm_data):
    # unequal lengths, so rows leave the batch at different windows; one not a multiple of any window
    return [lm_data.streams["test"][0][:61], lm_data.streams["validation"][0][:30], lm_data.streams["train"][0][:45]]


@pytest.mark.parametrize("attention_window", [None, 5])
def test_cache_streaming_equals_one_forward_over_each_stream(lm_data, streams, attention_window):
    model = hybrid(lm_data.tokenizer, attention_window)
    whole = whole_nll(model, streams)
    n = sum(len(s) - 1 for s in streams)
    for window, batch_size in [(7, 3), (7, 1), (7, 2), (16, 2), (1, 3), (100, 3)]:
        score = evaluate_streaming(model, streams, 1000, window=window, batch_size=batch_size, carry="cache")
        assert score.tokens == n
        assert score.nll == pytest.approx(whole, rel=1e-5), (window, batch_size)
    # carrying only the SRU state restarts attention every window: a different, worse-informed score
    state = evaluate_streaming(model, streams, 1000, window=7, batch_size=3, carry="state")
    assert abs(state.nll - whole) > 1e-2


def test_the_window_limits_what_attention_sees(lm_data, streams):
    """A sliding-window model differs from the full one only once a stream is longer than the window."""
    full, windowed = hybrid(lm_data.tokenizer), hybrid(lm_data.tokenizer, attention_window=5)
    x = torch.tensor(streams[0][:12], dtype=torch.long)[None]
    with torch.no_grad():
        a, b = full(input_ids=x).logits, windowed(input_ids=x).logits
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-4
    cached_full = evaluate_streaming(full, streams, 1000, window=7, carry="cache")
    cached_windowed = evaluate_streaming(windowed, streams, 1000, window=7, carry="cache")
    assert abs(cached_full.nll - cached_windowed.nll) > 1e-3


def test_carry_spellings_and_errors(lm_data, streams):
    model = hybrid(lm_data.tokenizer)
    kw = dict(window=7, batch_size=2)
    assert evaluate_streaming(model, streams, 1, carry=True, **kw).nll == evaluate_streaming(
        model, streams, 1, carry="state", **kw).nll
    assert evaluate_streaming(model, streams, 1, carry=False, **kw).nll == evaluate_streaming(
        model, streams, 1, carry="none", **kw).nll
    with pytest.raises(ValueError, match="carry"):
        evaluate_streaming(model, streams, 1, carry="kv", **kw)
    with pytest.raises(ValueError, match="window"):
        evaluate_streaming(model, streams, 1, window=0, carry="cache")

    class Stateless(nn.Module):  # a causal LM without a cache this package carries
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(len(lm_data.tokenizer), 8)

        def forward(self, input_ids):
            return argparse.Namespace(logits=self.emb(input_ids))

    with pytest.raises(ValueError, match="carry='cache'"):
        evaluate_streaming(Stateless(), streams, 1, carry="cache", **kw)


def test_attention_window_flag_reaches_the_saved_config(lm_data, tmp_path):
    from transformers import AutoConfig

    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(["--hidden-size", "32", "--layers", "2", "--attention-every", "1", "--attention-window", "6"])
    model = build_sru_lm(lm_data.tokenizer, **lm_model_kwargs(args))
    assert model.config.attention_window == 6
    save_lm(model, lm_data.tokenizer, tmp_path / "m")
    assert AutoConfig.from_pretrained(tmp_path / "m").attention_window == 6
    assert lm_model_kwargs(p.parse_args([]))["attention_window"] is None
