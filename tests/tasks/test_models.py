"""Task models: shapes, padding invariance, save/load, and that a few training steps lower the loss."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sru_lm.tasks.classifier import SentenceClassifier, SentenceClassifierConfig
from sru_lm.tasks.encoders import CNNEncoder, RNNEncoder
from sru_lm.tasks.reader import DrQAReader, DrQAReaderConfig

ENCODERS = ["sru", "lstm", "cnn"]


def _pad_right(x: torch.Tensor, extra: int) -> torch.Tensor:
    """(B, L, ...) -> (B, L + extra, ...), filled with garbage (padding must be ignored, not just zero)."""
    fill = torch.full((x.shape[0], extra, *x.shape[2:]), 7, dtype=x.dtype)
    return torch.cat([x, fill], 1)


@pytest.mark.parametrize("rnn_type", ["sru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_rnn_encoder_ignores_padding(rnn_type, bidirectional):
    torch.manual_seed(0)
    enc = RNNEncoder(10, 6, num_layers=2, rnn_type=rnn_type, bidirectional=bidirectional, concat_layers=True).eval()
    x = torch.randn(3, 9, 10)
    lengths = torch.tensor([9, 4, 1])
    mask = torch.arange(9) < lengths.unsqueeze(1)
    out = enc(x, mask)
    assert out.shape == (3, 9, enc.output_size) and enc.output_size == 6 * (2 if bidirectional else 1) * 2
    assert out[~mask].abs().max() == 0
    for b, n in enumerate(lengths.tolist()):  # each sequence alone, unpadded
        alone = enc(x[b : b + 1, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out[b : b + 1, :n], alone, atol=1e-5, rtol=1e-5)
    longer = enc(_pad_right(x, 5), torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1))
    torch.testing.assert_close(longer[:, :9], out, atol=1e-5, rtol=1e-5)


def test_cnn_encoder_ignores_padding_and_handles_short_sentences():
    torch.manual_seed(0)
    enc = CNNEncoder(8, channels=5, kernel_sizes=(3, 5)).eval()
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]], dtype=torch.bool)  # the 2nd is shorter than both widths
    out = enc(x, mask)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    longer = enc(_pad_right(x, 4), torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1))
    torch.testing.assert_close(longer, out)
    torch.testing.assert_close(enc(x[1:, :2], mask[1:, :2]), out[1:])


def _classifier(encoder: str, **kw) -> SentenceClassifier:
    cfg = SentenceClassifierConfig(vocab_size=40, embed_dim=12, encoder=encoder, hidden_size=10, cnn_channels=8,
                                   dropout=0.1, **kw)
    return SentenceClassifier(cfg)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_classifier_padding_does_not_change_logits(encoder, pooling):
    torch.manual_seed(0)
    model = _classifier(encoder, pooling=pooling).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 0, 0, 0]])
    out = model(ids, ids.ne(0)).logits
    more = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], 1)
    torch.testing.assert_close(model(more, more.ne(0)).logits, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(ids[1:, :2], ids[1:, :2].ne(0)).logits, out[1:], atol=1e-5, rtol=1e-5)


def _toy_sentiment(n=64, L=8, seed=0):
    """Label = whether token 3 appears: learnable in a few steps by any of the encoders."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (n, L), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(0, L, (n,), generator=g)
    ids[labels == 1, pos[labels == 1]] = 3
    return ids, labels


@pytest.mark.parametrize("encoder", ENCODERS)
def test_classifier_training_steps_lower_the_loss(encoder):
    torch.manual_seed(0)
    model = _classifier(encoder)
    ids, labels = _toy_sentiment()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model(ids, ids.ne(0), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def _toy_qa(n=32, Lc=14, Lq=4, seed=0):
    """The answer is the single context token equal to the question's first token."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(4, 30, (n, Lc), generator=g)
    q = torch.randint(4, 30, (n, Lq), generator=g)
    pos = torch.randint(0, Lc - 3, (n,), generator=g)
    c[torch.arange(n), pos] = q[:, 0] + 30  # words 34..59 appear only as answers
    q[:, 0] += 30
    lengths = torch.randint(Lc - 3, Lc + 1, (n,), generator=g)
    lengths = torch.maximum(lengths, pos + 1)
    cm = torch.arange(Lc) < lengths.unsqueeze(1)
    c[~cm] = 0
    feats = torch.zeros(n, Lc, 3)
    feats[..., 0] = (c.unsqueeze(2) == q.unsqueeze(1)).any(-1).float()
    return dict(context_ids=c, context_mask=cm, context_features=feats, question_ids=q,
                question_mask=torch.ones(n, Lq, dtype=torch.bool), start_positions=pos, end_positions=pos)


def _reader(rnn_type: str) -> DrQAReader:
    return DrQAReader(DrQAReaderConfig(vocab_size=60, embed_dim=12, rnn_type=rnn_type, hidden_size=10,
                                       doc_layers=2, question_layers=1, dropout=0.0, tune_top_k=-1))


@pytest.mark.parametrize("rnn_type", ["sru", "lstm"])
def test_reader_training_steps_lower_the_loss(rnn_type):
    torch.manual_seed(0)
    model = _reader(rnn_type)
    batch = _toy_qa()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("rnn_type", ["sru", "lstm"])
def test_reader_padding_and_shapes(rnn_type):
    torch.manual_seed(0)
    model = _reader(rnn_type).eval()
    b = _toy_qa(n=3)
    del b["start_positions"], b["end_positions"]
    out = model(**b)
    assert out.start_logits.shape == out.end_logits.shape == b["context_ids"].shape
    assert (out.start_logits[~b["context_mask"]] < -1e30).all()
    padded = dict(b)
    for k in ("context_ids", "context_mask", "context_features"):
        padded[k] = torch.cat([b[k], torch.zeros_like(b[k][:, :5])], 1)
    for k in ("question_ids", "question_mask"):
        padded[k] = torch.cat([b[k], torch.zeros_like(b[k][:, :3])], 1)
    out2 = model(**padded)
    cm = b["context_mask"]
    torch.testing.assert_close(out2.start_logits[:, :14][cm], out.start_logits[cm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out2.end_logits[:, :14][cm], out.end_logits[cm], atol=1e-4, rtol=1e-4)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _assert_bf16_follows_fp32(model: torch.nn.Module, run, outputs: tuple[str, ...]) -> None:
    """``run()`` returns the model output; under CPU bf16 autocast (what ``--mixed-precision bf16`` turns on) the
    outputs follow fp32 to bf16 accuracy, the matmuls really run in bf16, and every gradient points the same way."""
    matmul_dtypes = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: matmul_dtypes.add(o.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ref = run()
    ref.loss.backward()
    g32 = _grads(model)
    assert matmul_dtypes == {torch.float32}
    matmul_dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run()
    out.loss.float().backward()
    g16 = _grads(model)
    for h in hooks:
        h.remove()
    assert matmul_dtypes == {torch.bfloat16}, "autocast did not reach the model's projections"
    # bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%); a few layers deep that is a few percent of the scale
    for name in outputs:
        a, b = getattr(out, name).float(), getattr(ref, name)
        finite = torch.isfinite(b) & (b > -1e30)  # masked positions stay masked in both
        assert torch.equal(finite, torch.isfinite(a) & (a > -1e30)), name
        scale = b[finite].abs().max()
        assert (a[finite] - b[finite]).abs().max() <= 0.03 * scale, name  # measured: 0.4-1.1%
        assert not torch.equal(a, b), f"{name}: bit-identical to fp32, so bf16 never ran"
    assert abs(out.loss.item() - ref.loss.item()) <= 0.02 * abs(ref.loss.item())
    assert g16.keys() == g32.keys()
    for name, g in g32.items():
        if g.norm() > 1e-6:
            cos = torch.nn.functional.cosine_similarity(g16[name].flatten(), g.flatten(), dim=0)
            assert cos > 0.995, (name, cos.item())  # measured: >= 0.9994


@pytest.mark.parametrize("rnn_type", ["sru", "lstm"])
def test_reader_under_bf16_autocast_follows_fp32(rnn_type):
    torch.manual_seed(0)
    model = _reader(rnn_type).eval()
    batch = _toy_qa(n=6)
    _assert_bf16_follows_fp32(model, lambda: model(**batch), ("start_logits", "end_logits"))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_classifier_under_bf16_autocast_follows_fp32(encoder):
    torch.manual_seed(0)
    model = _classifier(encoder).eval()
    ids, labels = _toy_sentiment(n=16)
    _assert_bf16_follows_fp32(model, lambda: model(ids, ids.ne(0), labels=labels), ("logits",))


def test_reader_partial_fine_tuning_keeps_rare_rows_fixed():
    torch.manual_seed(0)
    model = DrQAReader(DrQAReaderConfig(vocab_size=60, embed_dim=12, hidden_size=8, doc_layers=1,
                                        question_layers=1, tune_top_k=10))
    before = model.embed.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(**_toy_qa()).loss.backward()
    opt.step()
    after = model.embed.weight.detach()
    assert torch.equal(after[12:], before[12:]) and not torch.equal(after[2:12], before[2:12])
    assert model.embed.tuned.shape == (12, 12)


def test_save_and_load_round_trip(tmp_path):
    from sru_lm.tasks.text import Vocab

    torch.manual_seed(0)
    model = _classifier("sru").eval()
    vocab = Vocab(["a", "b"])
    model.save_pretrained(tmp_path, vocab)
    loaded, v2 = SentenceClassifier.from_pretrained(tmp_path)
    ids = torch.tensor([[2, 3, 5]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert v2.itos == vocab.itos and loaded.config == model.config
    with pytest.raises(ValueError, match="SentenceClassifier"):
        DrQAReader.from_pretrained(tmp_path)


def test_reader_scaled_scores_and_legacy_loading(tmp_path):
    import json

    torch.manual_seed(0)
    scaled = _reader("sru").eval()
    assert scaled.config.scaled_scores
    plain = DrQAReader(dataclasses.replace(scaled.config, scaled_scores=False)).eval()
    plain.load_state_dict(scaled.state_dict())
    b = _toy_qa(n=3)
    del b["start_positions"], b["end_positions"]
    d_doc = scaled.doc_rnn.output_size  # 2 layers x 2 directions x 10
    cm = b["context_mask"]
    torch.testing.assert_close(scaled(**b).start_logits[cm] * d_doc**0.5, plain(**b).start_logits[cm])
    torch.testing.assert_close(scaled(**b).end_logits[cm] * d_doc**0.5, plain(**b).end_logits[cm])

    # a reader saved before the option existed has no "scaled_scores" key: it must load unscaled
    plain.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["config"]["scaled_scores"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded, _ = DrQAReader.from_pretrained(tmp_path)
    assert not loaded.config.scaled_scores
    torch.testing.assert_close(loaded(**b).start_logits[cm], plain(**b).start_logits[cm])


@pytest.mark.parametrize("rnn_type", ["sru", "lstm"])
def test_reader_starts_near_uniform_at_full_size(rnn_type):
    """At the real size (768 concatenated features), in training mode (dropout 0.3) and with GloVe-like
    vectors (a shared mean of norm ~2.85, as GloVe 6B 50d has), the untrained reader's span loss must be
    near the uniform one, 2 log(Lc). The unscaled bilinear over the SRU's unit-scale outputs is ~1.1 above
    it here (on SQuAD batches it started at 14.8 against 9.8, logits of std ~3)."""
    torch.manual_seed(0)
    n, Lc = 8, 120
    mean = torch.randn(50)
    vectors = torch.randn(500, 50) * 0.5 + mean / mean.norm() * 2.85
    model = DrQAReader(DrQAReaderConfig(vocab_size=500, rnn_type=rnn_type, dropout=0.3), embeddings=vectors).train()
    b = _toy_qa(n=n, Lc=Lc, Lq=10)
    b["context_mask"] = torch.ones(n, Lc, dtype=torch.bool)
    b["context_ids"] = torch.randint(2, 500, (n, Lc))
    loss = model(**b).loss.item()
    assert abs(loss - 2 * math.log(Lc)) < 0.3, loss


def test_rescale_reaches_every_sru_layer_and_survives_saving(tmp_path):
    """``rescale`` (the official sru's default) scales each layer's highway term by sqrt(1 + 2 exp(b_r)); it
    must reach every SRU layer of both task models, change the output, and come back from a saved model."""
    from sru_lm.layers import SRUCell

    torch.manual_seed(0)
    reader = DrQAReader(DrQAReaderConfig(vocab_size=40, hidden_size=6, doc_layers=2, question_layers=2,
                                         rescale=True, highway_bias=-1.0)).eval()
    classifier = SentenceClassifier(SentenceClassifierConfig(vocab_size=40, embed_dim=8, hidden_size=6,
                                                             rescale=True)).eval()
    for model, bias in ((reader, -1.0), (classifier, 0.0)):
        cells = [m for m in model.modules() if isinstance(m, SRUCell)]
        assert len(cells) == (4 if model is reader else 2)
        for cell in cells:
            assert cell.rescale and cell.scale_x == pytest.approx(math.sqrt(1 + 2 * math.exp(bias)))

    plain = SentenceClassifier(dataclasses.replace(classifier.config, rescale=False)).eval()
    plain.load_state_dict(classifier.state_dict())
    ids = torch.randint(2, 40, (3, 9))
    assert not torch.allclose(plain(ids).logits, classifier(ids).logits, atol=1e-4)

    from sru_lm.tasks.text import Vocab

    classifier.save_pretrained(tmp_path, Vocab(["a"]))
    loaded, _ = SentenceClassifier.from_pretrained(tmp_path)
    assert loaded.config.rescale
    torch.testing.assert_close(loaded(ids).logits, classifier(ids).logits)
