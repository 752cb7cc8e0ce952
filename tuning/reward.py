"""A small reward model on MiniLM embeddings, trained on human preference pairs.

Features of a (prompt, answer) pair: ``[e(a), e(p) * e(a)]`` where ``e`` is the
shared MiniLM sentence embedding (unit vectors), ``p`` the last user turn and
``a`` the answer (MiniLM sees 256 word pieces, so whole multi-turn transcripts
would be cut before the answer). The head (linear, or one hidden ReLU layer) is
trained with the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``.

Data: Anthropic HH-RLHF harmless-base test split (MIT), where each line's two
transcripts share every turn but the last answer. A seeded 80/20 split by pair
index holds out the pairs accuracy is reported on.

    gatehouse tune reward train --out DIR --data DATA_DIR_OR_FILE [--hidden 0] [--registry REG]
    gatehouse tune reward score --model DIR --prompt "..." --answer "..."

``--data`` is the public data directory (``hh_rlhf_harmless_test/harmless-base_test.jsonl``
inside it is used) or the JSONL file itself; it defaults to ``$GATEHOUSE_DATA_DIR``. The
held-out pairs are written next to the model (``heldout_pairs.jsonl``) so the arbiter can be
measured on exactly the pairs it never trained on:
``gatehouse eval sxs --human-pairs DIR/heldout_pairs.jsonl --reward-model DIR``.

``RewardModel.score(prompt, answer) -> float`` can be an offline AutoSxS
arbiter (``evaluators.sxs.RewardModelArbiter``). Saved as ``reward_head.npz``
(``W0, b0, ...``; no pickle) + ``manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gatehouse_core.datadir import DataDirMissing, data_dir

HH_FILE = Path("hh_rlhf_harmless_test") / "harmless-base_test.jsonl"  # inside the data directory


def resolve_data(data: str | Path | None) -> Path:
    """The HH-RLHF JSONL from ``--data`` (a file, or the data directory) or ``$GATEHOUSE_DATA_DIR``."""
    try:
        p = data_dir(data)
    except DataDirMissing:
        raise FileNotFoundError("no training data: pass --data DIR (the data directory or the HH-RLHF JSONL) or set GATEHOUSE_DATA_DIR") from None
    if p.is_dir():
        p = p / HH_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no HH-RLHF pairs at {p} (expected the data directory containing {HH_FILE}, or the JSONL file)")
    return p


def _progress(msg: str) -> None:
    print(f"[reward] {msg}", file=sys.stderr, flush=True)


def _encode(embedder: Any, texts: list[str], desc: str, batch: int = 256) -> np.ndarray:
    """Embed in batches with a progress bar (embedding is almost all of the training time)."""
    import os

    from tqdm import tqdm

    out = []
    with tqdm(total=len(texts), desc=desc, unit="text", disable=bool(os.environ.get("GATEHOUSE_NO_PROGRESS"))) as bar:
        for i in range(0, len(texts), batch):
            out.append(np.asarray(embedder.encode(texts[i:i + batch])))
            bar.update(len(texts[i:i + batch]))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def split_transcript(text: str) -> tuple[str, str]:
    """(prompt = everything before the last Assistant turn, answer = the last Assistant turn)."""
    i = text.rfind("\n\nAssistant:")
    if i < 0:
        return text.strip(), ""
    return text[:i], text[i + len("\n\nAssistant:"):].strip()


def last_user_turn(prompt: str) -> str:
    i = prompt.rfind("Human:")
    return (prompt[i + len("Human:"):] if i >= 0 else prompt).split("\n\nAssistant:")[0].strip()


def load_pairs(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """``{"prompt", "chosen", "rejected"}`` per line (answers split from the shared prefix)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            pc, ac = split_transcript(d["chosen"])
            _, ar = split_transcript(d["rejected"])
            out.append({"prompt": pc, "chosen": ac, "rejected": ar})
            if limit and len(out) >= limit:
                break
    return out


def split_indices(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = round(n * holdout)
    return np.sort(perm[k:]), np.sort(perm[:k])


class RewardModel:
    """r(prompt, answer) = head(features(e(prompt), e(answer)))."""

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], embedder: Any = None, manifest: dict[str, Any] | None = None) -> None:
        self.layers = [(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in layers]
        self._embedder = embedder
        self.manifest = manifest or {}

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from evaluators.embedding import shared_embedder

            self._embedder = shared_embedder()
        return self._embedder

    @staticmethod
    def features(ep: np.ndarray, ea: np.ndarray) -> np.ndarray:
        return np.concatenate([ea, ep * ea], axis=1).astype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = x.astype(np.float64)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return h[:, 0]

    def score_batch(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        ep = self.embedder.encode([last_user_turn(p) for p in prompts])
        ea = self.embedder.encode([a.strip() for a in answers])
        return self.forward(self.features(ep, ea))

    def score(self, prompt: str, answer: str) -> float:
        return float(self.score_batch([prompt], [answer])[0])

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = w, b
        with open(out / "reward_head.npz", "wb") as f:
            np.savez(f, **arrays)
        sha = hashlib.sha256((out / "reward_head.npz").read_bytes()).hexdigest()
        (out / "manifest.json").write_text(json.dumps({**self.manifest, "head_sha256": sha}, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path, embedder: Any = None) -> RewardModel:
        p = Path(path)
        npz = p / "reward_head.npz" if p.is_dir() else p
        with np.load(npz, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("W"))
            layers = [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)]
        man = npz.parent / "manifest.json"
        return cls(layers, embedder, json.loads(man.read_text()) if man.exists() else {})


def fit_head(
    xc: np.ndarray, xr: np.ndarray, *, hidden: int = 0, epochs: int = 200, lr: float = 1e-2, weight_decay: float = 1e-3, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-batch Adam on the Bradley-Terry loss; returns (W, b) layers."""
    torch.manual_seed(seed)
    d = xc.shape[1]
    net = (
        torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        if hidden
        else torch.nn.Sequential(torch.nn.Linear(d, 1))
    )
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    tc, tr = torch.tensor(xc), torch.tensor(xr)
    for _ in range(epochs):
        opt.zero_grad()
        loss = -torch.nn.functional.logsigmoid(net(tc) - net(tr)).mean()
        loss.backward()
        opt.step()
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in lin]


def pair_accuracy(model: RewardModel, xc: np.ndarray, xr: np.ndarray) -> float:
    return float(np.mean(model.forward(xc) > model.forward(xr))) if len(xc) else float("nan")


def train(
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    holdout: float = 0.2,
    hidden: int = 0,
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    seed: int = 0,
    limit: int | None = None,
    embedder: Any = None,
    registry: Any = None,
) -> tuple[RewardModel, dict[str, Any]]:
    """Train on the seeded train split; report train and held-out pair accuracy."""
    t0 = time.time()
    data = resolve_data(data)
    if embedder is None:
        from evaluators.embedding import shared_embedder

        _progress("loading the MiniLM embedder")
        embedder = shared_embedder()
    pairs = load_pairs(data, limit)
    tr_idx, ho_idx = split_indices(len(pairs), holdout, seed)
    _progress(f"{len(pairs)} pairs from {data}: {len(tr_idx)} train, {len(ho_idx)} held out; embedding {3 * len(pairs)} texts")
    ep = _encode(embedder, [last_user_turn(p["prompt"]) for p in pairs], "prompts")
    ec = _encode(embedder, [p["chosen"] for p in pairs], "chosen answers")
    er = _encode(embedder, [p["rejected"] for p in pairs], "rejected answers")
    xc, xr = RewardModel.features(ep, ec), RewardModel.features(ep, er)
    _progress(f"fitting the head ({epochs} epochs, full batch)")
    layers = fit_head(xc[tr_idx], xr[tr_idx], hidden=hidden, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed)
    data_sha = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    report = {
        "data": str(data),
        "data_sha256": data_sha,
        "pairs": len(pairs),
        "train_pairs": len(tr_idx),
        "heldout_pairs": len(ho_idx),
        "holdout": holdout,
        "seed": seed,
        "head": "linear on [e(a), e(p)*e(a)]" if not hidden else f"MLP {2 * ep.shape[1]}-{hidden}-1 on [e(a), e(p)*e(a)]",
        "loss": "Bradley-Terry",
        "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
        "embedder": getattr(embedder, "model_id", "minilm"),
        "embedder_runtime": embedder.runtime,
        "embedder_fingerprint": embedder.fingerprint,
        "identical_answer_pairs": int(sum(p["chosen"] == p["rejected"] for p in pairs)),
    }
    model = RewardModel(layers, embedder, {"kind": "reward_model", **report})
    report["train_accuracy"] = pair_accuracy(model, xc[tr_idx], xr[tr_idx])
    report["heldout_accuracy"] = pair_accuracy(model, xc[ho_idx], xr[ho_idx])
    # ties (identical answers) can never be ranked; report accuracy without them too
    distinct = np.array([p["chosen"] != p["rejected"] for p in pairs])
    hd = ho_idx[distinct[ho_idx]]
    report["heldout_accuracy_distinct"] = pair_accuracy(model, xc[hd], xr[hd])
    from evaluators.metrics import bootstrap_ci

    correct = (model.forward(xc[ho_idx]) > model.forward(xr[ho_idx])).astype(float)
    report["heldout_accuracy_ci95"] = list(bootstrap_ci(correct, n_boot=1000, seed=seed)) if len(correct) else [None, None]
    report["seconds"] = round(time.time() - t0, 1)
    model.manifest.update({k: report[k] for k in ("train_accuracy", "heldout_accuracy", "heldout_accuracy_distinct")})
    if out is not None:
        model.save(out)
        (Path(out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        lines = [line for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()]
        (Path(out) / "heldout_pairs.jsonl").write_text("".join(lines[i] + "\n" for i in ho_idx if i < len(lines)), encoding="utf-8")
        if registry is not None:
            ds = registry.register("dataset", data, name=Path(data).stem, metadata={"role": "preference pairs"}, copy=False)
            job = registry.register("job", None, name="reward-bt", metadata=report, parents=[ds.id])
            art = registry.register("model", out, name="reward-minilm", metadata={"kind": "reward_model", "heldout_accuracy": report["heldout_accuracy"]}, parents=[job.id])
            report["registered"] = {"job": job.id, "model": art.id}
    return model, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.reward", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--data", default=None, help="data directory (with hh_rlhf_harmless_test/) or the HH-RLHF JSONL (default: $GATEHOUSE_DATA_DIR)")
    t.add_argument("--holdout", type=float, default=0.2)
    t.add_argument("--hidden", type=int, default=0, help="hidden units (0 = linear head)")
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--weight-decay", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--registry")
    s = sub.add_parser("score")
    s.add_argument("--model", required=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--answer", required=True)
    a = p.parse_args(argv)
    if a.cmd == "score":
        print(f"{RewardModel.load(a.model).score(a.prompt, a.answer):.4f}")
        return 0
    reg = None
    if a.registry:
        from tuning.registry import Registry

        reg = Registry(a.registry)
    try:
        _, r = train(
            a.data, a.out, holdout=a.holdout, hidden=a.hidden, epochs=a.epochs, lr=a.lr,
            weight_decay=a.weight_decay, seed=a.seed, limit=a.limit, registry=reg,
        )
    except FileNotFoundError as e:
        print(f"gatehouse tune reward: {e}", file=sys.stderr)
        return 2
    print(
        f"reward model: {r['train_pairs']} train / {r['heldout_pairs']} held-out pairs; "
        f"train acc {r['train_accuracy']:.3f}, held-out acc {r['heldout_accuracy']:.3f} "
        f"[{r['heldout_accuracy_ci95'][0]:.3f}, {r['heldout_accuracy_ci95'][1]:.3f}] "
        f"(distinct answers: {r['heldout_accuracy_distinct']:.3f}); saved to {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
