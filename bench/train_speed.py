"""Training speed on this machine: reviews/s of one epoch per model, against the
"seed-style" loop that tutorials write (time-major nn.RNNCell loop over all 200 steps,
batch 64, no packing, no masking). Writes bench/results/train_speed.json.

    python bench/train_speed.py --data ../shared/imdb/aclImdb_v1.tar.gz [--reviews 3200]

Every model trains on the same reviews with lstm's default sizes (embedding 128, hidden
256, 1 layer, batch 64, AdamW; bilstm's default is 2 layers and embedding 256, not measured
here) through ``training.run_epoch``, the loop ``train.py`` runs, twice:
as ``train.py`` runs it (``epoch_order``'s length-sorted batches, bfloat16 autocast where
``--precision auto`` picks it) and as it ran before those two (shuffled batches, float32).
An epoch here is ``--reviews`` training reviews; 3,200 is one sorting window of
``train.py`` (50 batches of 64), so reviews/s carries over to the full 22,500.
Steps run without ``--adversarial``, whose second pass per step halves the speed of the
models that use it by default (lstm, bilstm).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seed_style_epoch(encoded, labels, vocab_size: int, batch_size: int = 64) -> float:
    """The tutorial loop; returns seconds for one pass over ``encoded``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    embedding = nn.Embedding(vocab_size, 128)
    cell = nn.RNNCell(128, 256)
    head = nn.Linear(256, 2)
    params = [*embedding.parameters(), *cell.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    start = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        ids = torch.from_numpy(encoded.ids[i:i + batch_size]).t()  # [time, batch], padding included
        x = embedding(ids)
        h = torch.zeros(ids.shape[1], 256)
        for t in range(ids.shape[0]):
            h = cell(x[t], h)
        loss = nn.functional.cross_entropy(head(h), torch.from_numpy(labels[i:i + batch_size]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"))
    parser.add_argument("--reviews", type=int, default=3200)
    parser.add_argument("--models", default="rnncell,rnn,lstm,bilstm")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed.json"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from sentiment.data import load_source
    from sentiment.models import ModelConfig, SentimentRNN
    from sentiment.text import TextEncoder, train_tokenizer
    from sentiment.train.training import epoch_order, run_epoch, training_dtype

    train = load_source(args.data)["train"].shuffle(seed=0).select(range(args.reviews))
    texts, labels = train["text"], np.asarray(train["label"], dtype=np.int64)
    encoder = TextEncoder(train_tokenizer(texts, 10_000), 200, "tail")
    encoded = encoder.encode(texts)
    dtype = training_dtype("auto", "cpu")
    paths = {"train.py": (epoch_order(len(labels), 64, 0, 1, encoded.lengths), dtype),
             "shuffled float32": (epoch_order(len(labels), 64, 0, 1), torch.float32)}
    results = {}
    seed_seconds = seed_style_epoch(encoded, labels, encoder.vocab_size)
    results["seed-style rnncell loop"] = {"seconds": round(seed_seconds, 2),
                                          "reviews_per_s": round(len(labels) / seed_seconds, 1)}
    print(f"{'seed-style':>10}: {len(labels) / seed_seconds:7.1f} reviews/s")
    for kind in args.models.split(","):
        results[kind] = {}
        for name, (order, step_dtype) in paths.items():
            torch.manual_seed(0)
            model = SentimentRNN(ModelConfig(kind=kind, vocab_size=encoder.vocab_size))
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
            start = time.perf_counter()
            run_epoch(model, optimizer, None, encoded, labels, order, 64, 1.0, "cpu", dtype=step_dtype)
            seconds = time.perf_counter() - start
            results[kind][name] = {"seconds": round(seconds, 2), "reviews_per_s": round(len(labels) / seconds, 1),
                                   "speedup_vs_seed_style": round(seed_seconds / seconds, 2)}
            print(f"{kind:>10} {name:>16}: {len(labels) / seconds:7.1f} reviews/s "
                  f"({seed_seconds / seconds:.2f}x seed-style)")
    payload = {"command": " ".join(["python", "bench/train_speed.py", *sys.argv[1:]]),
               "device": "cpu", "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "train_py_dtype": str(dtype).removeprefix("torch."),
               "reviews": len(labels), "mean_tokens": float(encoded.lengths.mean()),
               "models": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
