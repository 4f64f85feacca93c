"""Character-level language models (flax linen) on the standard-library text corpus.

Batches are ``batch_size`` random windows of ``seq_len + 1`` tokens, cut out of the
device-resident corpus by index arithmetic inside ``jit``. The loss is the mean next-token
cross-entropy (nats). Normalizer: clip to ``[0, 1.5 ln(vocab)]`` (non-finite -> bound), the
same "1.5 x uniform guess" rule as the classifiers.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt.tasks.base import Task, clip_meta_loss
from lopt.tasks.data.text import TextCorpus
from lopt.tasks.initializers import orthogonal


class LSTMLM(nn.Module):
    vocab_size: int
    embed: int = 32
    hidden: int = 64

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab_size, self.embed)(tokens)
        # flax's default recurrent initializer, but one matrix at a time under vmap: see
        # lopt.tasks.initializers (a batched QR can hang the process on a CPU)
        cell = nn.OptimizedLSTMCell(self.hidden, recurrent_kernel_init=orthogonal())
        x = nn.RNN(cell)(x)
        return nn.Dense(self.vocab_size)(x)


class TransformerLM(nn.Module):
    """Pre-LayerNorm causal transformer with learned positions."""

    vocab_size: int
    seq_len: int
    dim: int = 32
    heads: int = 2
    layers: int = 2

    @nn.compact
    def __call__(self, tokens):
        length = tokens.shape[-1]
        x = nn.Embed(self.vocab_size, self.dim)(tokens)
        pos = self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.dim))
        x = x + pos[:length]
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.layers):
            h = nn.LayerNorm()(x)
            x = x + nn.MultiHeadDotProductAttention(
                num_heads=self.heads, qkv_features=self.dim, deterministic=True
            )(h, h, mask=mask)
            h = nn.LayerNorm()(x)
            x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(h)))
        return nn.Dense(self.vocab_size)(nn.LayerNorm()(x))


def lm_task(
    name: str,
    model: nn.Module,
    corpus: TextCorpus,
    seq_len: int = 32,
    batch_size: int = 16,
    eval_batch_size: int = 64,
) -> Task:
    if seq_len < 1 or batch_size < 1 or eval_batch_size < 1:
        raise ValueError("seq_len, batch_size and eval_batch_size must be >= 1")
    train = jnp.asarray(corpus.train, jnp.int32)
    test = jnp.asarray(corpus.test, jnp.int32)
    for split, arr in (("train", train), ("test", test)):
        if arr.shape[0] <= seq_len + 1:
            raise ValueError(f"{split} corpus has {arr.shape[0]} tokens; need > {seq_len + 1}")
    bound = 1.5 * math.log(corpus.vocab_size)
    window = jnp.arange(seq_len + 1)

    def windows(tokens, key, n):
        # a window of seq_len + 1 tokens may start at 0 .. len - seq_len - 1 (maxval exclusive)
        starts = jax.random.randint(key, (n,), 0, tokens.shape[0] - seq_len)
        return tokens[starts[:, None] + window[None, :]]

    def init(key):
        return model.init(key, jnp.zeros((1, seq_len), jnp.int32))

    def sample_batch(key):
        return {"tokens": windows(train, key, batch_size)}

    def xent(params, tokens):
        logits = model.apply(params, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def loss(params, batch):
        return xent(params, batch["tokens"])

    def eval_loss(params, key):
        return xent(params, windows(test, key, eval_batch_size))

    return Task(
        name=name,
        init=init,
        sample_batch=sample_batch,
        loss=loss,
        normalizer=lambda value: clip_meta_loss(value, bound),
        eval_loss=eval_loss,
    )


def lstm_task(corpus: TextCorpus, embed=32, hidden=64, seq_len=32, batch_size=16,
              name="text_lstm") -> Task:
    return lm_task(name, LSTMLM(corpus.vocab_size, embed, hidden), corpus, seq_len, batch_size)


def transformer_task(
    corpus: TextCorpus, dim=32, heads=2, layers=2, seq_len=32, batch_size=16,
    name="text_transformer",
) -> Task:
    model = TransformerLM(corpus.vocab_size, seq_len, dim, heads, layers)
    return lm_task(name, model, corpus, seq_len, batch_size)
