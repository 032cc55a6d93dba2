"""Decoding under torch.compile on CPU: the static SRULMCache makes generate() compile the decode step
(``compile_config._compile_all_devices`` lets it do so without a GPU), and compiled decoding gives the tokens of
eager decoding; the decode step traces with fullgraph=True and never recompiles from one token to the next. Over a
static cache each decode step writes the SRU state in place (``sru_step_`` on the cache's own ``c``)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from conftest import VOCAB, left_pad, randomize, tiny_config
from transformers import CompileConfig
from transformers.generation.streamers import BaseStreamer

from sru_lm import SRULMCache, SRULMForCausalLM
from sru_lm.models import modeling_sru_lm

PROMPTS = [[5, 9, 13, 2, 7, 30], [41, 3], [17, 18, 19, 20]]


@pytest.fixture(scope="module")
def model() -> SRULMForCausalLM:
    torch.manual_seed(0)
    m = randomize(SRULMForCausalLM(tiny_config(num_hidden_layers=4, attention_every_n_layers=2)))
    m.generation_config.pad_token_id = 0
    m.generation_config.eos_token_id = None
    return m


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _compile_config(backend: str = "aot_eager", **kw) -> CompileConfig:
    """aot_eager traces like inductor (dynamo + functionalised in-place cache writes) without its C++ build
    time; one test below runs inductor itself."""
    config = CompileConfig(backend=backend, **kw)
    config._compile_all_devices = True  # compile on CPU too
    return config


def _generate(model, ids, mask=None, compiled=False, seed=None, **kw):
    kw.setdefault("max_new_tokens", 8)
    kw.setdefault("do_sample", False)
    if compiled:
        kw.setdefault("compile_config", _compile_config())
    if seed is not None:
        torch.manual_seed(seed)
    return model.generate(ids, attention_mask=mask, **kw)


class _Counter:
    """Counts generate's compiled decode calls (``get_compiled_call``) and dynamo's compilations."""

    def __init__(self, model, monkeypatch):
        self.calls = 0
        original = model.get_compiled_call

        def get_compiled_call(config):
            compiled = original(config)

            def call(*args, **kwargs):
                self.calls += 1
                return compiled(*args, **kwargs)

            return call

        monkeypatch.setattr(model, "get_compiled_call", get_compiled_call)


class _StepSpy:
    """Wraps the layers' two decode steps: the addresses of the states ``sru_step_`` updated in place, and how
    many times ``sru_step`` (a new state, copied into the cache) ran."""

    def __init__(self, monkeypatch):
        self.in_place, self.copied = [], 0
        step_, step = modeling_sru_lm.sru_step_, modeling_sru_lm.sru_step

        def sru_step_(U, x, v, b, c, *args, **kwargs):
            self.in_place.append(c.data_ptr())
            return step_(U, x, v, b, c, *args, **kwargs)

        def sru_step(*args, **kwargs):
            self.copied += 1
            return step(*args, **kwargs)

        monkeypatch.setattr(modeling_sru_lm, "sru_step_", sru_step_)
        monkeypatch.setattr(modeling_sru_lm, "sru_step", sru_step)


@pytest.mark.parametrize("case", ["greedy", "left_padded", "sampling"])
def test_static_decoding_steps_the_cache_state_in_place(model, monkeypatch, case):
    """Eager decoding over a static cache runs the in-place step on each layer's own ``c`` (the copying step never
    runs) and gives the tokens of the dynamic cache, whose steps return a new state."""
    ids, mask = (torch.tensor([PROMPTS[0]]), None) if case == "greedy" else left_pad(PROMPTS)
    kw = dict(do_sample=True, top_k=20, num_return_sequences=2, seed=7) if case == "sampling" else {}
    dynamic = _generate(model, ids, mask, **kw)
    spy = _StepSpy(monkeypatch)
    cache = SRULMCache(model.config, max_cache_len=ids.shape[1] + 8)
    static = _generate(model, ids, mask, cache=cache, **kw)
    torch.testing.assert_close(static, dynamic, rtol=0, atol=0)
    assert spy.copied == 0
    assert spy.in_place == [layer.c.data_ptr() for layer in cache.layers] * 7  # the prefill made token 1 of 8


def test_compiled_greedy_equals_eager_without_recompiling(model, monkeypatch):
    ids = torch.tensor([PROMPTS[0]])
    counter = _Counter(model, monkeypatch)
    kw = dict(compiled=True, max_cache_len=32)  # one buffer size for both calls
    torch.testing.assert_close(
        _generate(model, ids, max_new_tokens=3, **kw), _generate(model, ids, max_new_tokens=3), rtol=0, atol=0
    )
    assert counter.calls == 2  # every decode step after the eager prefill ran compiled
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs > 0
    # positions 9..15 were never seen: a compiled step that specialised on the position would compile again
    compiled = _generate(model, ids, max_new_tokens=10, **kw)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs and counter.calls == 2 + 9
    torch.testing.assert_close(compiled, _generate(model, ids, max_new_tokens=10), rtol=0, atol=0)


def test_compiled_left_padded_batch_equals_eager(model):
    ids, mask = left_pad(PROMPTS)
    eager = _generate(model, ids, mask)
    torch.testing.assert_close(_generate(model, ids, mask, compiled=True), eager, rtol=0, atol=0)


def test_compiled_sampling_with_a_seed_equals_eager(model):
    ids, mask = left_pad(PROMPTS)
    kw = dict(do_sample=True, top_k=20, num_return_sequences=2, seed=7)
    eager = _generate(model, ids, mask, **kw)
    torch.testing.assert_close(_generate(model, ids, mask, compiled=True, **kw), eager, rtol=0, atol=0)


def test_beam_search_over_the_static_cache_equals_eager(model):
    """transformers 5.x runs beam search's forward eagerly even with a compile config; what is tested here is
    the static cache under beams: reordered in place, the same beams as the dynamic cache."""
    ids, mask = left_pad(PROMPTS)
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=6)
    eager = _generate(model, ids, mask, **kw)
    out = _generate(model, ids, mask, compiled=True, return_dict_in_generate=True, **kw)
    assert out.cache.is_static
    torch.testing.assert_close(out.sequences, eager, rtol=0, atol=0)


def test_cache_implementation_static_compiles_with_inductor(model, monkeypatch):
    """What a user writes: cache_implementation="static" plus a compile config, inductor (C++ on CPU)."""
    ids, mask = left_pad(PROMPTS[:2])
    counter = _Counter(model, monkeypatch)
    eager = _generate(model, ids, mask, max_new_tokens=5)
    compiled = _generate(model, ids, mask, max_new_tokens=5, cache_implementation="static",
                         compile_config=_compile_config("inductor"))
    assert counter.calls == 4
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


class _PointerStreamer(BaseStreamer):
    """Records the cache's buffer addresses each time generate hands over a token (between decode steps)."""

    def __init__(self, cache: SRULMCache) -> None:
        self.cache, self.seen = cache, []

    def put(self, value) -> None:
        if self.cache.is_initialized:
            self.seen.append(tuple(t.data_ptr() for layer in self.cache.layers for t in layer._buffers()))

    def end(self) -> None:
        pass


def test_compiled_decoding_keeps_the_cache_buffers_in_place(model):
    ids = torch.tensor([PROMPTS[2]])
    cache = SRULMCache(model.config, max_cache_len=16)
    streamer = _PointerStreamer(cache)
    out = _generate(model, ids, compiled=True, cache=cache, streamer=streamer, return_dict_in_generate=True)
    assert out.cache is cache and cache.get_seq_length() == 4 + 8 - 1
    assert len(streamer.seen) == 8 and len(set(streamer.seen)) == 1  # the same addresses after every step
    torch.testing.assert_close(out.sequences, _generate(model, ids), rtol=0, atol=0)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_decode_step_compiles_with_fullgraph(model, rotary, backend):
    """One graph for the whole decode step (embedding, every layer's attention over the static buffers, the SRU
    step and its state, the head); the position is a tensor, so four steps compile once. The SRU step is the
    in-place op ``sru_lm::sru_step_`` on each cache buffer (a graph input), with the backend as an argument:
    ``None``, the default (on CPU the C++ kernel), or ``"reference"``, the spec and a copy."""
    config = tiny_config(num_hidden_layers=4, attention_every_n_layers=2, sru_backend=backend,
                         position_embedding_type="rotary" if rotary else "none")
    m = randomize(SRULMForCausalLM(config))
    ids = torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :2] = 0  # left padding, carried by the mask over the buffer
    cache = SRULMCache(m.config, max_cache_len=16)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    step = torch.compile(m, fullgraph=True, backend=capture)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        full = m(ids, attention_mask=mask).logits
        logits = [m(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
        for t in range(6, 10):
            buffer_mask = torch.nn.functional.pad(mask[:, : t + 1], (0, 16 - t - 1))  # what generate passes
            logits.append(step(ids[:, t : t + 1], attention_mask=buffer_mask, cache=cache).logits)
    assert len(graphs) == 1
    steps = [n for n in graphs[0].graph.nodes if n.op == "call_function" and str(n.target).startswith("sru_lm.")]
    assert [str(n.target) for n in steps] == ["sru_lm.sru_step_"] * 4
    assert all(n.args[4].op == "placeholder" and n.args[9] == backend for n in steps)  # c: the cache's buffer
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_decoding_equals_eager(model):
    """On CUDA the default compile config ("reduce-overhead") captures the decode step in CUDA graphs, which
    replay only while every buffer keeps its address: the tokens must still be eager's."""
    gpu = model.to("cuda")
    try:
        ids, mask = left_pad(PROMPTS)
        ids, mask = ids.cuda(), mask.cuda()
        eager = _generate(gpu, ids, mask, max_new_tokens=12)
        config = CompileConfig()  # mode="reduce-overhead": CUDA graphs
        out = _generate(gpu, ids, mask, max_new_tokens=12, compile_config=config, return_dict_in_generate=True)
        assert out.cache.is_static
        torch.testing.assert_close(out.sequences, eager, rtol=0, atol=0)
    finally:
        model.to("cpu")
