"""Train a tiny character-level transformer on a text that ships with Python (the source of argparse).

Plain torch: no gradmanifold import. The text is read from disk (`argparse.__file__`), so it follows the
Python version; the store's manifest records which one. Used by make_samples.py, the wrap-mode tests and the
benchmark.

    python sample_logs/train_chars.py --steps 600 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def corpus(limit: int = 200_000) -> str:
    return Path(argparse.__file__).read_text(encoding="utf-8")[:limit]


class CharTransformer(nn.Module):
    """Embedding + learned positions, pre-norm causal transformer layers, final norm, linear head."""

    def __init__(
        self, vocab: int, context: int = 64, width: int = 64, heads: int = 4, layers: int = 2
    ) -> None:
        super().__init__()
        self.context = context
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok_emb(idx) + self.pos_emb[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def train(
    steps: int,
    seed: int,
    batch: int = 32,
    context: int = 64,
    on_step: Callable[[int, nn.Module, float, float], None] | None = None,
) -> dict[str, float]:
    """Train with AdamW; `on_step(step, model, loss, lr)` runs after backward, before the optimizer step."""
    torch.manual_seed(seed)
    text = corpus()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    model = CharTransformer(len(chars), context)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for step in range(steps):
        start = torch.randint(0, len(data) - context - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + context] for s in start.tolist()])
        y = torch.stack([data[s + 1 : s + context + 1] for s in start.tolist()])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).reshape(-1, len(chars)), y.reshape(-1))
        loss.backward()
        if on_step is not None:
            on_step(step, model, loss.item(), opt.param_groups[0]["lr"])
        opt.step()
    return {
        "train_seconds": time.perf_counter() - t0,
        "final_loss": loss.item(),
        "steps": steps,
        "vocab": len(chars),
        "chars": len(text),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(train(args.steps, args.seed)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
