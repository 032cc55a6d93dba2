"""A DrQA-style reader (Chen et al. 2017) whose recurrent layers are SRU or LSTM (Lei et al. 2018, 4.3).

Paragraph token ``i`` is represented by its word vector, an attention-weighted sum of the question's
word vectors (the aligned question embedding ``sum_j a_ij E(q_j)``, ``a_ij ∝ exp(relu(W E(p_i)) ·
relu(W E(q_j)))``) and hand features (exact match of the word / its lower-cased form in the question,
normalized term frequency); a 3-layer bidirectional RNN reads these, all layers' outputs concatenated.
The question is read by its own RNN and pooled by self-attention (``b_j ∝ exp(w · q_j)``). Start and
end scores are bilinear, ``p_i W_s q`` and ``p_i W_e q``, divided by the square root of ``p_i``'s width
(``scaled_scores``; readers saved before the option load with it off); the answer is the best span of
at most ``max_answer_len`` tokens (:func:`sru_lm.tasks.spans.decode_spans`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from .base import PartlyTunedEmbedding, TaskModel
from .encoders import RNN_TYPES, RNNEncoder

NUM_FEATURES = 3  # exact match (as written), exact match (lower case), term frequency


@dataclass
class DrQAReaderConfig:
    """Args:
        vocab_size, embed_dim: word vectors; rows ``>= 2 + tune_top_k`` stay fixed (DrQA's partial fine-tuning
            of the most frequent question words); ``tune_top_k < 0`` trains them all.
        rnn_type: ``"sru"`` or ``"lstm"``.
        hidden_size: units per direction in both RNNs.
        doc_layers, question_layers: stacked bidirectional layers.
        num_features: hand features per paragraph token.
        dropout: on embeddings and every RNN layer's input.
        max_answer_len: longest span, in tokens, at decoding.
        highway_bias: the SRU reset-gate bias.
        layer_norm: layer normalization on every SRU layer's input (SRU only).
        rescale: scale the SRU highway term by ``sqrt(1 + 2 exp(highway_bias))`` (SRU only; the official
            ``sru`` package's default).
        scaled_scores: divide the start/end scores by ``sqrt(d_doc)`` (as attention does). An SRU's outputs
            have about unit variance by design, an LSTM's a few hundredths (tanh-bounded, small at init); the
            unscaled bilinear over 768 concatenated SRU features starts with logits of std ~3 and gradients
            ~50x the LSTM's, and AdamW then swings the logits by tens per step. Same for both recurrences.
    """

    vocab_size: int
    embed_dim: int = 50
    rnn_type: str = "sru"
    hidden_size: int = 128
    doc_layers: int = 3
    question_layers: int = 3
    num_features: int = NUM_FEATURES
    dropout: float = 0.3
    tune_top_k: int = 1000
    max_answer_len: int = 15
    highway_bias: float = 0.0
    layer_norm: bool = False
    rescale: bool = False
    scaled_scores: bool = True

    def __post_init__(self) -> None:
        if self.rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {RNN_TYPES}, got {self.rnn_type!r}")


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return scores.masked_fill(~mask, float("-inf")).softmax(dim)


class DrQAReader(TaskModel):
    """``forward(context_ids (B, Lc), context_mask (B, Lc), context_features (B, Lc, F), question_ids (B, Lq),
    question_mask (B, Lq), start_positions (B,), end_positions (B,)) -> QuestionAnsweringModelOutput``
    with ``start_logits``/``end_logits (B, Lc)`` (``-inf`` at padding) and, given the positions, the loss
    ``CE(start) + CE(end)``. Masks are 1/True at real tokens.

    Example:
        >>> model = DrQAReader(DrQAReaderConfig(vocab_size=50, hidden_size=8, doc_layers=1, question_layers=1))
        >>> c, q = torch.randint(2, 50, (2, 12)), torch.randint(2, 50, (2, 5))
        >>> out = model(c, c.ne(0), torch.zeros(2, 12, 3), q, q.ne(0))
        >>> out.start_logits.shape
        torch.Size([2, 12])
    """

    config_class = DrQAReaderConfig
    legacy_defaults = {"scaled_scores": False}  # readers saved before the option existed

    def __init__(self, config: DrQAReaderConfig, embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        E, H = config.embed_dim, config.hidden_size
        n_tuned = config.vocab_size if config.tune_top_k < 0 else 2 + config.tune_top_k  # <pad>, <unk>, top k
        if embeddings is None:
            embeddings = torch.randn(config.vocab_size, E) * 0.4
            embeddings[0] = 0
        self.embed = PartlyTunedEmbedding(config.vocab_size, E, n_tuned, embeddings)
        self.align = nn.Linear(E, E)
        sru_kwargs = {"highway_bias": config.highway_bias, "layer_norm": config.layer_norm, "rescale": config.rescale}
        self.doc_rnn = RNNEncoder(E + E + config.num_features, H, config.doc_layers, config.rnn_type, True,
                                  config.dropout, concat_layers=True, sru_kwargs=sru_kwargs)
        self.question_rnn = RNNEncoder(E, H, config.question_layers, config.rnn_type, True,
                                       config.dropout, concat_layers=True, sru_kwargs=sru_kwargs)
        d_doc, d_q = self.doc_rnn.output_size, self.question_rnn.output_size
        self.question_attn = nn.Linear(d_q, 1)
        self.start = nn.Linear(d_q, d_doc)  # p_i W_s q  ==  p_i · start(q)
        self.end = nn.Linear(d_q, d_doc)

    def forward(
        self,
        context_ids: torch.Tensor,
        context_mask: torch.Tensor,
        context_features: torch.Tensor,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> QuestionAnsweringModelOutput:
        B, Lc = context_ids.shape
        want = (B, Lc, self.config.num_features)
        if context_features.shape != want:
            raise ValueError(f"context_features must be {want}, got {tuple(context_features.shape)}")
        cm, qm = context_mask.bool(), question_mask.bool()
        p = F.dropout(self.embed(context_ids), self.config.dropout, self.training)  # (B, Lc, E)
        q = F.dropout(self.embed(question_ids), self.config.dropout, self.training)  # (B, Lq, E)

        # aligned question embedding
        p_key, q_key = F.relu(self.align(p)), F.relu(self.align(q))
        a = _masked_softmax(p_key @ q_key.transpose(1, 2), qm.unsqueeze(1))  # (B, Lc, Lq)
        aligned = a @ q  # (B, Lc, E)

        p_h = self.doc_rnn(torch.cat([p, aligned, context_features.to(p.dtype)], -1), cm)  # (B, Lc, d_doc)
        q_h = self.question_rnn(q, qm)  # (B, Lq, d_q)
        b = _masked_softmax(self.question_attn(q_h).squeeze(-1), qm)  # (B, Lq)
        q_vec = (b.unsqueeze(-1) * q_h).sum(1)  # (B, d_q)

        if self.config.scaled_scores:
            p_h = p_h * p_h.shape[-1] ** -0.5
        start_logits = (p_h @ self.start(q_vec).unsqueeze(-1)).squeeze(-1)  # (B, Lc)
        end_logits = (p_h @ self.end(q_vec).unsqueeze(-1)).squeeze(-1)
        neg = torch.finfo(start_logits.dtype).min  # the logits' dtype: under autocast it can differ from p_h's
        start_logits, end_logits = start_logits.masked_fill(~cm, neg), end_logits.masked_fill(~cm, neg)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)
