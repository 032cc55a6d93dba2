"""The model family on a CUDA GPU (skipped elsewhere): the Triton path against the CPU reference path, mixed
precision, and cached generation. CI has no GPU; ``scripts/device_checks.sh smoke`` runs these on one."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, randomize, tiny_config

from sru_lm import SRULMForCausalLM, SRULMForQuestionAnswering

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# fp32 on both sides; the GPU matmuls may use other summation orders (TF32 stays off by default)
TOL_FP32 = dict(atol=1e-4, rtol=1e-4)


def _pair(cls, **overrides):
    torch.manual_seed(0)
    cpu = randomize(cls(tiny_config(hidden_size=64, projection_size=16, **overrides)))
    gpu = cls(cpu.config).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def test_cuda_forward_and_gradients_match_cpu():
    cpu, gpu = _pair(SRULMForCausalLM)
    ids = torch.randint(1, VOCAB, (3, 37))
    ref = cpu(ids, labels=ids)
    out = gpu(ids.cuda(), labels=ids.cuda())
    torch.testing.assert_close(out.logits.cpu(), ref.logits, **TOL_FP32)
    ref.loss.backward()
    out.loss.backward()
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, atol=2e-4, rtol=2e-3, msg=name)


def test_cuda_bf16_autocast_trains_and_follows_fp32():
    _, gpu = _pair(SRULMForCausalLM)
    ids = torch.randint(1, VOCAB, (4, 50), device="cuda")
    ref = gpu(ids, labels=ids)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(ids, labels=ids)
    torch.testing.assert_close(out.logits.float(), ref.logits, atol=0.1, rtol=0.05)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)


def test_cuda_cached_generation_equals_uncached():
    _, gpu = _pair(SRULMForCausalLM)
    ids = torch.randint(1, VOCAB, (2, 9), device="cuda")
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = gpu.generate(ids, use_cache=True, **kw)
    plain = gpu.generate(ids, use_cache=False, **kw)
    assert cached.shape == (2, 21)
    torch.testing.assert_close(cached, plain)


def test_cuda_bidirectional_qa_matches_cpu():
    cpu, gpu = _pair(SRULMForQuestionAnswering, bidirectional=True, use_cache=False)
    ids = torch.randint(1, VOCAB, (2, 23))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    ref = cpu(ids, attention_mask=mask)
    out = gpu(ids.cuda(), attention_mask=mask.cuda())
    torch.testing.assert_close(out.start_logits.cpu(), ref.start_logits, **TOL_FP32)
    torch.testing.assert_close(out.end_logits.cpu(), ref.end_logits, **TOL_FP32)
