"""`wikitext2_lstm`: a two-layer LSTM language model on WikiText-2 (the seed paper's NLP workload).

The recipe is the PyTorch ``word_language_model`` example's, whose defaults are the seed
paper's Table 1 row (eta0 = 20, 40 epochs): plain SGD, gradient-norm clipping at 0.25,
truncated BPTT over 35 tokens, hidden state carried from one window to the next.

Batch size = the number of parallel token streams per step (the example's ``batch_size``):
the training tokens are cut into B contiguous streams and each step trains on the next
``bptt`` tokens of every stream. One "example" is one window of ``bptt`` tokens, so an
epoch is ``len(train tokens) / bptt`` examples whatever B is (59,675 at bptt 35).

Options (``config.options``):

- ``size``: ``small`` (emsize = nhid = 200, dropout 0.2: the example's defaults),
  ``medium`` (650, 0.5; the default) or ``large`` (1500, 0.65): the example's README presets.
  ``emsize``, ``nhid``, ``layers`` (2), ``dropout``, ``tied`` (false) override them.
- ``bptt`` (35): tokens per window. ``clip`` (0.25): max gradient L2 norm, 0 = no clipping.
- ``eval_tokens`` (0 = all 217,646): validation tokens evaluated at each eval point.
  ``eval_streams`` (10): parallel streams of the evaluation (the example's eval batch size).
- ``variant`` (``wikitext-2``) or ``wikitext-2-raw``: which files to read
  (:mod:`trainables.datasets.wikitext`).

Medium is the default: the paper does not give its LSTM size, and 650 units with dropout 0.5
for 40 epochs is the example README's first WikiText-2 recipe (the 200-unit code default is
its quick demo). ``size: small`` is about 3x cheaper per step, for sweeps on a budget.

It trains in the shared loop (:func:`trainables.loop.train_supervised`), with the clip as
the task's ``clip_grad_norm``. A batch stays whole (no micro-batches, no B_simple half
batches): its streams' hidden state carries to the next step. The carried hidden state is
the model's extra state, so it is in ``model.state_dict()`` and a restored trial continues
its streams exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.api import InputError, Target, TrialConfig
from trainables.datasets import wikitext
from trainables.loop import Task
from trainables.options import parse_options
from trainables.registry import Workload, register


@dataclass(frozen=True)
class LanguageOptions:
    size: str = "medium"  # small (200 units, dropout 0.2), medium (650, 0.5) or large (1500, 0.65)
    emsize: int | None = None  # embedding size (default: the size's units)
    nhid: int | None = None  # LSTM units per layer (default: the size's units)
    layers: int = 2  # LSTM layers
    dropout: float | None = None  # dropout (default: the size's)
    tied: bool = False  # tie the decoder to the embedding (needs emsize == nhid)
    bptt: int = 35  # tokens per training window
    clip: float = 0.25  # max gradient L2 norm (0 = no clipping)
    eval_tokens: int = 0  # validation tokens evaluated (0 = all 217,646)
    eval_streams: int = 10  # parallel streams of the evaluation
    variant: str = "wikitext-2"  # or wikitext-2-raw: which files to read


SIZES = {"small": (200, 0.2), "medium": (650, 0.5), "large": (1500, 0.65)}  # units, dropout
DEFAULT_BPTT = 35


class LSTMLanguageModel(nn.Module):
    """Embedding -> dropout -> multi-layer LSTM -> dropout -> linear decoder (batch-first).

    ``hidden`` is the (h, c) state carried across training windows (detached: truncated
    BPTT); it travels in ``state_dict()`` as the module's extra state.
    """

    def __init__(self, vocab: int, emsize: int, nhid: int, layers: int, dropout: float, tied: bool):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, emsize)
        self.rnn = nn.LSTM(
            emsize, nhid, layers, dropout=dropout if layers > 1 else 0.0, batch_first=True
        )
        self.decoder = nn.Linear(nhid, vocab)
        if tied:
            if emsize != nhid:
                raise ValueError(f"tied weights need emsize == nhid (got {emsize} and {nhid})")
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # the example's initialisation
        nn.init.zeros_(self.decoder.bias)
        if not tied:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, hidden: Any = None) -> tuple[torch.Tensor, Any]:
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden

    def get_extra_state(self) -> dict[str, Any]:
        return {"hidden": self.hidden}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.hidden = state["hidden"]


class StreamBatches:
    """Consecutive BPTT windows over ``batch_size`` parallel streams of the training tokens.

    Yields ``(x, y, reset)``: inputs and next-token targets of shape (batch_size, bptt), and
    whether this window starts an epoch (the carried hidden state is then dropped, as the
    example re-initialises it every epoch). The tail of each stream shorter than a whole
    window is not trained on, so every batch is exactly (batch_size, bptt) tokens.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, bptt: int):
        self.data = wikitext.batchify(tokens, batch_size)
        self.bptt = bptt
        self.steps_per_epoch = (self.data.shape[1] - 1) // bptt
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{tokens.numel()} training tokens make streams of {self.data.shape[1]} tokens at batch size "
                f"{batch_size}: too short for one window of bptt={bptt}; use a smaller batch size or bptt"
            )
        self.pos = 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if self.pos >= self.steps_per_epoch:
            self.pos = 0
        i = self.pos * self.bptt
        reset = self.pos == 0
        self.pos += 1
        return self.data[:, i : i + self.bptt], self.data[:, i + 1 : i + 1 + self.bptt], reset

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.pos = int(s["pos"])


def _model_options(o: LanguageOptions) -> dict[str, Any]:
    if o.size not in SIZES:
        raise InputError(f"options.size: unknown {o.size!r}; use one of {', '.join(SIZES)}")
    units, dropout = SIZES[o.size]
    return {
        "emsize": units if o.emsize is None else o.emsize,
        "nhid": units if o.nhid is None else o.nhid,
        "layers": o.layers,
        "dropout": dropout if o.dropout is None else o.dropout,
        "tied": o.tied,
    }


def build(config: TrialConfig, device: torch.device) -> Task:
    o = parse_options(LanguageOptions, config.options, "wikitext2_lstm")
    corpus = wikitext.load_corpus(config.data_root, o.variant)
    bptt = o.bptt
    n_train = max(2, int(round(corpus.train.numel() * config.data_fraction)))  # the first fraction
    batches = StreamBatches(corpus.train[:n_train].to(device), config.batch_size, bptt)
    model = LSTMLanguageModel(corpus.vocab_size, **_model_options(o))

    eval_tokens = o.eval_tokens
    valid = corpus.valid[:eval_tokens] if eval_tokens > 0 else corpus.valid
    valid = wikitext.batchify(valid.to(device), min(o.eval_streams, valid.numel() // 2))

    def loss(m: LSTMLanguageModel, batch) -> torch.Tensor:
        x, y, reset = batch
        hidden = (
            None if reset or m.hidden is None or m.hidden[0].shape[1] != x.shape[0] else m.hidden
        )
        logits, h = m(x, hidden)
        m.hidden = (h[0].detach(), h[1].detach())
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def evaluate(m: LSTMLanguageModel) -> dict[str, float]:
        total, count, hidden = torch.zeros((), device=device), 0, None
        for i in range(0, valid.shape[1] - 1, bptt):
            n = min(bptt, valid.shape[1] - 1 - i)
            logits, hidden = m(valid[:, i : i + n], hidden)
            target = valid[:, i + 1 : i + 1 + n]
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            )
            count += target.numel()
        eval_loss = float(total) / count
        return {"eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 700.0))}

    return Task(
        model,
        batches,
        loss,
        evaluate,
        batches.steps_per_epoch * config.batch_size,
        clip_grad_norm=o.clip,
    )


register(
    Workload(
        name="wikitext2_lstm",
        description="2-layer LSTM language model on WikiText-2 (PyTorch example recipe; batch = token streams)",
        metrics={"eval_loss": "min", "eval_perplexity": "min"},
        default_target=Target("eval_perplexity", 150.0, "min"),
        train_size=wikitext.TRAIN_TOKENS
        // DEFAULT_BPTT,  # windows of 35 tokens in the standard train file
        build=build,
        options=LanguageOptions,
        dataset="wikitext2",
        cpu_friendly=False,
        whole_batches="its batches are token streams whose LSTM hidden state carries across steps",
    )
)
