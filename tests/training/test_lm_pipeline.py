"""The LM pipeline end to end at tiny scale on a local corpus: tokenizer, training with carried SRU
state, exact resume, evaluation against a direct computation, saving for the Auto classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from sru_lm.training import TrainConfig, latest_checkpoint
from sru_lm.training.baselines import count_parameters
from sru_lm.training.compare import size_matched_peers, time_to_reach
from sru_lm.training.lm import LMStep, SRULMAdapter, adapter_for, evaluate_sliding, evaluate_streaming
from sru_lm.training.pipeline import build_sru_lm, head_of_streams, save_lm, train_language_model


def tiny(tokenizer, attention_every=2, seed=0):
    torch.manual_seed(seed)
    return build_sru_lm(tokenizer, hidden_size=32, num_layers=2, attention_every=attention_every)


def train(lm_data, tmp_path, model=None, callbacks=(), **overrides):
    settings = dict(output_dir=str(tmp_path), lr=1e-2, warmup_steps=2, max_steps=8, checkpoint_every=3,
                    checkpoint_every_minutes=None, eval_every_minutes=None, progress_bar=False)
    settings.update(overrides)
    model = model or tiny(lm_data.tokenizer)
    return train_language_model(model, lm_data, TrainConfig(**settings), batch_size=4, seq_len=16,
                                val_tokens_per_book=64, callbacks=callbacks)


def test_corpus_split_and_tokenizer_round_trip(lm_data, corpus_dir, tmp_path):
    assert sorted(lm_data.names["train"] + lm_data.names["validation"] + lm_data.names["test"]) == [
        f"book-{i}" for i in range(5)
    ]
    tok = lm_data.tokenizer
    for split in ("train", "test"):
        for name, stream in zip(lm_data.names[split], lm_data.streams[split], strict=True):
            text = (corpus_dir / f"{name}.txt").read_text(encoding="utf-8")
            assert stream[0] == tok.bos_token_id and stream[-1] == tok.eos_token_id
            assert tok.decode(stream[1:-1].tolist()) == text
    assert lm_data.num_bytes["test"] == sum(
        len((corpus_dir / f"{n}.txt").read_bytes()) for n in lm_data.names["test"]
    )
    save_lm(tiny(tok), tok, tmp_path / "m")
    again = AutoTokenizer.from_pretrained(tmp_path / "m")
    s = "The naïve whale wrote a letter — café? ☕"
    assert again.decode(again(s, add_special_tokens=False)["input_ids"]) == s


def test_a_few_steps_lower_the_loss(lm_data, tmp_path):
    model = tiny(lm_data.tokenizer)
    val, nbytes = head_of_streams(lm_data.streams["validation"], lm_data.tokenizer, 256)
    before = evaluate_streaming(model, val, nbytes, window=16).loss
    trainer, result = train(lm_data, tmp_path, model=model, max_steps=40, checkpoint_every=0)
    after = evaluate_streaming(trainer.unwrapped_model, val, nbytes, window=16).loss
    assert before > math.log(len(lm_data.tokenizer)) - 0.5
    assert after < before - 1.0
    curve = [h["loss"] for h in result.history["train"]]
    assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 1.0
    assert result.history["eval"] and "val_bits_per_byte" in result.history["eval"][-1]


def test_killed_lm_run_resumes_with_the_same_losses(lm_data, tmp_path):
    _, full = train(lm_data, tmp_path / "full")

    def kill_at_7(trainer):
        if trainer.step == 7:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(lm_data, tmp_path / "killed", callbacks=[kill_at_7])
    assert latest_checkpoint(tmp_path / "killed").name == "step-0000006"
    trainer, resumed = train(lm_data, tmp_path / "killed")
    assert trainer.step_fn.carry_state and trainer.step_fn.state is not None  # SRU state was carried
    a = [h["loss"] for h in full.history["train"]]
    b = [h["loss"] for h in resumed.history["train"]]
    assert len(b) == 8
    assert b == pytest.approx(a, abs=1e-6, rel=0)


def test_carried_state_reaches_the_next_segment(lm_data):
    """LMStep feeds each row's state forward, and zeroes it where a new stream starts."""
    model = tiny(lm_data.tokenizer, attention_every=0).eval()
    x = torch.tensor(lm_data.streams["train"][0][:33], dtype=torch.long).view(1, 33)
    step = LMStep(SRULMAdapter(), carry_state=True)
    with torch.no_grad():
        first = {"input_ids": x[:, :16], "targets": x[:, 1:17], "reset": torch.tensor([True])}
        second = {"input_ids": x[:, 16:32], "targets": x[:, 17:33], "reset": torch.tensor([False])}
        step(model, first)
        carried = step(model, second).loss
        whole = F.cross_entropy(model(input_ids=x[:, :32]).logits[0, 16:], x[0, 17:33])
        assert float(carried) == pytest.approx(float(whole), abs=1e-5)
        step(model, first)
        reset = step(model, {**second, "reset": torch.tensor([True])}).loss
        fresh = F.cross_entropy(model(input_ids=x[:, 16:32]).logits[0], x[0, 17:33])
        assert float(reset) == pytest.approx(float(fresh), abs=1e-5)
        assert abs(float(reset) - float(carried)) > 1e-4


def direct_sliding_nll(model, stream, context, stride):
    """Every target j scored alone: run the model on exactly the window that scores j, read one logit."""
    n = len(stream) - 1
    total = 0.0
    for j in range(n):
        k = 0
        while min(k * stride + context, n) <= j:  # the first window whose end passes j scores it
            k += 1
        a = k * stride
        x = torch.tensor(stream[a : j + 1], dtype=torch.long)[None]
        logp = torch.log_softmax(model(input_ids=x).logits[0, -1].double(), -1)
        total -= float(logp[int(stream[j + 1])])
    return total


def test_evaluation_agrees_with_direct_computation(lm_data):
    tok = lm_data.tokenizer
    model = tiny(tok, attention_every=1).eval()
    streams = [lm_data.streams["test"][0][:41], lm_data.streams["validation"][0][:30]]
    nbytes = 1234
    with torch.no_grad():
        score = evaluate_sliding(model, streams, nbytes, context=12, stride=5, batch_size=3)
        direct = sum(direct_sliding_nll(model, s, 12, 5) for s in streams)
    assert score.tokens == 40 + 29
    assert score.nll == pytest.approx(direct, rel=1e-5)
    assert score.bits_per_byte == pytest.approx(direct / (math.log(2) * nbytes), rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(direct / 69), rel=1e-5)

    # an SRU-only model carrying its state across windows equals one pass over the whole stream
    sru = tiny(tok, attention_every=0).eval()
    with torch.no_grad():
        streaming = evaluate_streaming(sru, streams, nbytes, window=7, batch_size=2)
        windows = evaluate_streaming(sru, streams, nbytes, window=7, batch_size=2, carry=False)
        whole = 0.0
        for s in streams:
            x = torch.tensor(s, dtype=torch.long)[None]
            whole += float(F.cross_entropy(sru(input_ids=x[:, :-1]).logits[0], x[0, 1:], reduction="sum"))
    assert streaming.tokens == 69
    assert streaming.nll == pytest.approx(whole, rel=1e-5)
    assert abs(windows.nll - whole) > 1e-2  # resetting the state at every window changes the scores


def test_saved_model_loads_with_auto_classes(lm_data, tmp_path):
    model = tiny(lm_data.tokenizer).eval()
    save_lm(model, lm_data.tokenizer, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    x = torch.tensor(lm_data.streams["test"][0][:20], dtype=torch.long)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits)
    assert isinstance(adapter_for(loaded), SRULMAdapter)


def test_peers_are_size_matched_and_time_to_reach():
    peers = size_matched_peers(2_500_000, 8192, 128)
    for model, _ in peers.values():
        assert abs(count_parameters(model) - 2_500_000) / 2_500_000 < 0.05
    evals = [{"seconds": 10.0, "m": 3.0}, {"seconds": 20.0, "m": 2.0}, {"seconds": 30.0, "m": 1.0}]
    assert time_to_reach(evals, 2.5, key="m") == pytest.approx(15.0)
    assert time_to_reach(evals, 3.5, key="m") == pytest.approx(10.0)
    assert time_to_reach(evals, 0.5, key="m") is None


def test_accelerate_launch_two_cpu_processes(corpus_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without CUDA: two gloo processes train
    on disjoint shards, with one step count and twice the tokens of one process."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(root / "scripts" / "train_lm.py"), "--text-files", str(corpus_dir), "--vocab-size", "300",
           "--cache-dir", str(tmp_path / "cache"), "--hidden-size", "32", "--layers", "2", "--batch-size", "2",
           "--seq-len", "16", "--max-steps", "4", "--eval-every", "4", "--val-tokens-per-book", "64",
           "--no-progress", "--output-dir", str(tmp_path / "out"), "--threads", "1"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["processes"] == 2 and result["step"] == 4
    assert result["tokens"] == 4 * 2 * 16 * 2  # steps x rows x tokens x processes
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()
    # every backward returns gradients laid out like their parameters, so DDP copies none into its buckets
    assert "Grad strides do not match bucket view" not in run.stderr, run.stderr[-3000:]


def test_word_level_pipeline_trains_and_caches_its_tokenizer(corpus_dir, tmp_path):
    from sru_lm.data.lm import load_lm_corpus
    from sru_lm.tasks.text import tokenize
    from sru_lm.training.pipeline import prepare_lm_data

    data = prepare_lm_data(paths=[str(corpus_dir)], vocab_size=20, cache=tmp_path, tokenizer_type="word",
                           extra_words=["Zebra"])
    tok = data.tokenizer
    vocab = tok.get_vocab()
    assert len(vocab) == 2 + 20 + 1 and vocab["zebra"] == 22  # specials, the 20 commonest words, the extra
    # a stream is bos + the book's lower-cased words (unknown ones as <unk>) + eos
    book = load_lm_corpus(paths=[str(corpus_dir)])["train"]["text"][0]
    words = [w.lower() for w in tokenize(book)[0]]
    stream = data.streams["train"][0]
    assert stream[0] == tok.bos_token_id and stream[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(stream[1:-1].tolist()) == [w if w in vocab else "<unk>" for w in words]
    again = prepare_lm_data(paths=[str(corpus_dir)], vocab_size=20, cache=tmp_path, tokenizer_type="word",
                            extra_words=["Zebra"])
    assert again.tokenizer.get_vocab() == vocab
    other = prepare_lm_data(paths=[str(corpus_dir)], vocab_size=20, cache=tmp_path, tokenizer_type="word")
    assert "zebra" not in other.tokenizer.get_vocab()  # the extra words are part of the cache key
    with pytest.raises(ValueError, match="tokenizer_type"):
        prepare_lm_data(paths=[str(corpus_dir)], cache=None, tokenizer_type="char")
    with pytest.raises(ValueError, match="extra_words"):
        prepare_lm_data(paths=[str(corpus_dir)], cache=None, extra_words=["zebra"])


def test_word_level_lm_from_vectors_untied_loads_as_a_bidirectional_classifier(corpus_dir, tmp_path):
    from sru_lm.models import SRULMForSequenceClassification
    from sru_lm.tasks.vectors import init_embeddings_from_vectors
    from sru_lm.training.pipeline import prepare_lm_data

    data = prepare_lm_data(paths=[str(corpus_dir)], vocab_size=40, cache=tmp_path / "cache", tokenizer_type="word")
    tok = data.tokenizer
    words = [w for w in tok.get_vocab() if w.isalpha()]
    matrix = np.random.default_rng(0).normal(size=(len(words), 8)).astype(np.float32)
    torch.manual_seed(0)
    model = build_sru_lm(tok, hidden_size=32, num_layers=2, attention_every=1, tie_word_embeddings=False)
    hits = init_embeddings_from_vectors(model.get_input_embeddings(), tok, (words, matrix), std=0.5)
    assert hits == len(words)
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    before = model.get_input_embeddings().weight.detach().clone()
    train(data, tmp_path / "run", model=model, max_steps=3)
    emb = model.get_input_embeddings().weight.detach()
    assert not torch.equal(emb, before)  # trained, from the vector rows
    save_lm(model, tok, tmp_path / "lm")
    clf = SRULMForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=2, bidirectional=True,
                                                         use_cache=False)
    torch.testing.assert_close(clf.get_input_embeddings().weight, emb)
    enc = AutoTokenizer.from_pretrained(tmp_path / "lm")(["The old king saw a whale!"], return_tensors="pt")
    assert int((enc["input_ids"] == tok.unk_token_id).sum()) == 0
    out = clf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=torch.tensor([1]))
    assert out.logits.shape == (1, 2) and torch.isfinite(out.loss)
