"""Auto registration, save_pretrained/from_pretrained, loading as remote code without sru_lm, pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import VOCAB, randomize, tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerFast,
    pipeline,
)

from sru_lm import (
    SRULMConfig,
    SRULMForCausalLM,
    SRULMForQuestionAnswering,
    SRULMForSequenceClassification,
    SRULMModel,
)


@pytest.mark.parametrize(
    "auto, cls",
    [
        (AutoModel, SRULMModel),
        (AutoModelForCausalLM, SRULMForCausalLM),
        (AutoModelForSequenceClassification, SRULMForSequenceClassification),
        (AutoModelForQuestionAnswering, SRULMForQuestionAnswering),
    ],
)
def test_auto_classes_are_registered(auto, cls):
    assert isinstance(AutoConfig.for_model("sru_lm"), SRULMConfig)
    assert type(auto.from_config(tiny_config())) is cls


def _comparable(config: SRULMConfig) -> dict:
    skip = {"architectures", "_name_or_path", "transformers_version", "dtype"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


@pytest.mark.parametrize("cls", [SRULMForCausalLM, SRULMForSequenceClassification, SRULMForQuestionAnswering])
def test_save_and_load_round_trip_exactly(tmp_path, cls):
    torch.manual_seed(0)
    model = randomize(cls(tiny_config(position_embedding_type="rotary", num_labels=3)))
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "modeling_sru_lm.py", "configuration_sru_lm.py"} <= files
    # the modeling file's sibling imports travel with it
    assert {"cache.py", "drafting.py", "sru_backend.py", "sru_init.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "sru_lm" and "auto_map" in config
    for auto in (AutoModelForCausalLM, cls):  # through the Auto registry too
        if auto is AutoModelForCausalLM and cls is not SRULMForCausalLM:
            continue
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is cls
        want, got = model.state_dict(), loaded.state_dict()
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(want[k], got[k]), k
        assert _comparable(loaded.config) == _comparable(model.config)
        ids = torch.randint(1, VOCAB, (2, 7))
        with torch.no_grad():
            a, b = model(ids), loaded(ids)
        for key in a.keys():
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
    if cls is SRULMForCausalLM:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


WITHOUT_SRU_LM = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoSruLm(importlib.abc.MetaPathFinder):
        # this process plays a machine where sru_lm is not installed (here it is installed in editable mode)
        def find_spec(self, name, path=None, target=None):
            if name == "sru_lm" or name.startswith("sru_lm."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoSruLm())
    """
)


def _run_without_sru_lm(tmp_path, script: str, model_dir, ids: torch.Tensor) -> dict:
    """Run ``script`` (after :data:`WITHOUT_SRU_LM`) in a fresh process as ``script model_dir out_file``, where
    ``out_file`` holds ``{"ids": ids}``; return what it saved there."""
    out_file = tmp_path / "out.pt"
    torch.save({"ids": ids}, out_file)
    path = tmp_path / "remote_script.py"
    path.write_text(WITHOUT_SRU_LM + script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, str(path), str(model_dir), str(out_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out_file)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForCausalLM

    model_dir, out_file = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    ids = torch.load(out_file)["ids"]
    with torch.no_grad():
        logits = model(ids).logits
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    # the copied cache rolls back too: prompt lookup drafts from the prompt and crops what is rejected
    lookup = model.generate(ids[:1], max_new_tokens=5, do_sample=False, prompt_lookup_num_tokens=2)
    # ... and the copied draft generator drafts with the model itself (every draft accepted)
    model.generation_config.num_assistant_tokens = 2
    assisted = model.generate(ids[:1], max_new_tokens=5, do_sample=False, assistant_model=model)
    backend = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".sru_backend"]
    torch.save({
        "logits": logits, "generated": generated, "lookup": lookup, "assisted": assisted,
        "module": type(model).__module__, "fast_path": backend.FAST_PATH,
        "sru_lm_modules": [m for m in sys.modules if m == "sru_lm" or m.startswith("sru_lm.")],
    }, out_file)
    """
)


def test_causal_checkpoint_loads_as_bidirectional_with_units_kept(tmp_path):
    """from_pretrained(causal, bidirectional=True): forward direction = the causal layer's first d/2 units,
    backward direction = its other units run over the reversed sequence (one SRU layer, no attention, so
    both are exact); loading the tensors as they are would scramble the gates and fail this."""
    torch.manual_seed(0)
    causal = randomize(SRULMForCausalLM(tiny_config(num_hidden_layers=1, attention_every_n_layers=0)))
    causal.save_pretrained(tmp_path)
    bi = SRULMForQuestionAnswering.from_pretrained(tmp_path, bidirectional=True)
    assert bi.config.bidirectional and not bi.config.use_cache and not bi.training
    assert bi.model.layers[0].weight_c.shape == (2, 2, 12)
    ids = torch.randint(1, VOCAB, (2, 9))

    def layer_output(model, ids):  # (B, L, d): the SRU layer's own output, before the final norm
        seen = []
        hook = model.model.layers[0].register_forward_hook(lambda mod, args, out: seen.append(out))
        with torch.no_grad():
            model.model(ids)
        hook.remove()
        return seen[0]

    h_bi, h_fwd = layer_output(bi, ids), layer_output(causal, ids)
    h_rev = layer_output(causal, ids.flip(1)).flip(1)
    torch.testing.assert_close(h_bi[..., :12], h_fwd[..., :12], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_bi[..., 12:], h_rev[..., 12:], atol=1e-5, rtol=1e-5)
    # everything outside the SRU layout is the causal checkpoint's own
    torch.testing.assert_close(bi.model.embed_tokens.weight, causal.model.embed_tokens.weight)
    torch.testing.assert_close(bi.model.layers[0].in_proj.weight, causal.model.layers[0].in_proj.weight)
    # a bidirectional checkpoint loads as it is
    bi.save_pretrained(tmp_path / "bi")
    again = SRULMForQuestionAnswering.from_pretrained(tmp_path / "bi", bidirectional=True)
    torch.testing.assert_close(again.model.layers[0].out_proj.weight, bi.model.layers[0].out_proj.weight)


@pytest.mark.parametrize("options", [{}, {"attention_window": 3, "position_embedding_type": "rotary"}])
def test_trust_remote_code_load_in_a_process_without_sru_lm(tmp_path, options):
    """The copied files alone run the model, its cache (sliding window included) and its rollback."""
    torch.manual_seed(0)
    model = randomize(SRULMForCausalLM(tiny_config(**options)))
    model.generation_config.eos_token_id = None
    model_dir = tmp_path / "sru-tiny"
    model.save_pretrained(model_dir)
    ids = torch.tensor([[5, 9, 13, 5, 9, 13], [1, 2, 3, 4, 5, 6]])
    result = _run_without_sru_lm(tmp_path, REMOTE_SCRIPT, model_dir, ids)
    assert result["sru_lm_modules"] == []  # sru_lm was never imported
    assert result["module"].startswith("transformers_modules.")  # the copied modeling file ran
    assert result["fast_path"] is False  # ... with its pure-torch recurrence
    with torch.no_grad():
        want = model(ids).logits
    torch.testing.assert_close(result["logits"], want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(result["generated"], model.generate(ids, max_new_tokens=5, do_sample=False))
    torch.testing.assert_close(result["lookup"], result["generated"][:1], rtol=0, atol=0)
    torch.testing.assert_close(result["assisted"], result["generated"][:1], rtol=0, atol=0)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = ["the quick brown fox jumps over the lazy dog", "a simple recurrent unit runs fast", "hello world"] * 5
    tok.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_text_generation_pipeline():
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = randomize(SRULMForCausalLM(config))
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    out = generator("hello world", max_new_tokens=6, do_sample=False)
    assert out[0]["generated_text"].startswith("hello world")
    tokenizer.padding_side = "left"
    batch = generator(["the quick", "a simple recurrent unit"], max_new_tokens=4, do_sample=False, batch_size=2)
    assert [b[0]["generated_text"][:9] for b in batch] == ["the quick", "a simple "]


def test_sru_backend_is_saved_overridable_at_load_and_reaches_the_recurrence(tmp_path, monkeypatch):
    from sru_lm.models import modeling_sru_lm

    seen = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            seen.append(kwargs.get("backend"))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(modeling_sru_lm, "sru_recurrence", spy(modeling_sru_lm.sru_recurrence))
    monkeypatch.setattr(modeling_sru_lm, "sru_step", spy(modeling_sru_lm.sru_step))
    torch.manual_seed(0)
    model = randomize(SRULMForCausalLM(tiny_config(sru_backend="reference")))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["sru_backend"] == "reference"
    loaded = SRULMForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.sru_backend == "reference"
    ids = torch.randint(1, VOCAB, (2, 5))
    with torch.no_grad():
        out = loaded(ids, use_cache=True)
        loaded(ids[:, :1], cache=out.cache)  # one decoding step: sru_step
    assert seen == ["reference"] * 2 * loaded.config.num_hidden_layers
    seen.clear()
    default = AutoModelForCausalLM.from_pretrained(tmp_path, sru_backend=None)
    assert default.config.sru_backend is None
    with torch.no_grad():
        torch.testing.assert_close(default(ids).logits, out.logits, atol=2e-5, rtol=1e-4)
    assert seen == [None] * loaded.config.num_hidden_layers
    # an unknown name reaches the ops layer, which refuses it
    bad = SRULMForCausalLM.from_pretrained(tmp_path, sru_backend="no-such-backend")
    assert bad.config.sru_backend == "no-such-backend"
    with pytest.raises(ValueError, match="no-such-backend"):
        bad(ids)


REMOTE_HEADS_SCRIPT = textwrap.dedent(
    """
    import torch
    import transformers

    model_dir, out_file = sys.argv[1], sys.argv[2]
    ids = torch.load(out_file)["ids"]
    result = {}
    for auto in ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                 "AutoModelForQuestionAnswering"):
        model = getattr(transformers, auto).from_pretrained(model_dir, trust_remote_code=True).eval()
        base = getattr(model, "model", model)
        with torch.no_grad():
            hidden = base(ids).last_hidden_state
        result[auto] = (type(model).__name__, type(model).__module__, hidden)
    result["sru_lm_modules"] = [m for m in sys.modules if m == "sru_lm" or m.startswith("sru_lm.")]
    torch.save(result, out_file)
    """
)


def test_auto_map_names_every_head_and_remote_code_loads_each(tmp_path):
    torch.manual_seed(0)
    model = randomize(SRULMForCausalLM(tiny_config()))
    model_dir = tmp_path / "sru-tiny"
    model.save_pretrained(model_dir)
    auto_map = json.loads((model_dir / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_sru_lm.SRULMConfig",
        "AutoModel": "modeling_sru_lm.SRULMModel",
        "AutoModelForCausalLM": "modeling_sru_lm.SRULMForCausalLM",
        "AutoModelForSequenceClassification": "modeling_sru_lm.SRULMForSequenceClassification",
        "AutoModelForQuestionAnswering": "modeling_sru_lm.SRULMForQuestionAnswering",
    }
    ids = torch.randint(1, VOCAB, (2, 6))
    result = _run_without_sru_lm(tmp_path, REMOTE_HEADS_SCRIPT, model_dir, ids)
    assert result.pop("sru_lm_modules") == []
    with torch.no_grad():
        want = model.model(ids).last_hidden_state
    names = {
        "AutoModel": "SRULMModel", "AutoModelForCausalLM": "SRULMForCausalLM",
        "AutoModelForSequenceClassification": "SRULMForSequenceClassification",
        "AutoModelForQuestionAnswering": "SRULMForQuestionAnswering",
    }
    assert set(result) == set(names)
    for auto, (name, module, hidden) in result.items():
        assert name == names[auto] and module.startswith("transformers_modules."), (auto, name, module)
        torch.testing.assert_close(hidden, want, atol=2e-5, rtol=1e-4, msg=auto)  # the saved weights were loaded


def test_a_bidirectional_model_maps_no_causal_lm_head(tmp_path):
    SRULMForQuestionAnswering(tiny_config(bidirectional=True)).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert "AutoModelForCausalLM" not in auto_map
    assert {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification", "AutoModelForQuestionAnswering"} <= set(
        auto_map
    )
