"""AutoSxS: side-by-side comparison of two (or more) systems with an arbiter.

An arbiter is anything with ``async judge(prompt, answer_a, answer_b) -> Judgement``:

- ``GatewayArbiter``: an LLM reached through the gateway, asked with a
  versioned judging prompt (``evaluators/prompts/autosxs_v1.yaml``) to reply
  ``{"choice": "A"|"B"|"tie", "explanation": ..., "confidence": 0..1}``.
- ``RewardModelArbiter``: wraps any ``score(prompt, answer) -> float``.

Every pair is judged in both orders (A,B) and (B,A); if the two verdicts
disagree the item is a tie, which cancels the judge's position bias. Win rates
are reported with ties as ½ and with ties excluded, each with a seeded 95%
bootstrap CI, plus a length-bias diagnostic. More than two candidates are
ranked with Bradley–Terry (MM algorithm, ties as ½) with bootstrap CIs.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import yaml

from evaluators.metrics import bootstrap_ci, bootstrap_indices

Choice = Literal["A", "B", "tie"]
PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_JUDGING_PROMPT = "autosxs_v1"


@dataclass
class Judgement:
    choice: Choice
    explanation: str = ""
    confidence: float = 0.5
    raw: str | None = None
    parse_error: str | None = None

    def swapped(self) -> Judgement:
        """The same verdict with A and B exchanged (for the reversed-order call)."""
        flip: dict[str, Choice] = {"A": "B", "B": "A", "tie": "tie"}
        return Judgement(flip[self.choice], self.explanation, self.confidence, self.raw, self.parse_error)


class Arbiter(Protocol):
    name: str

    async def judge(self, prompt: str, answer_a: str, answer_b: str) -> Judgement: ...


# --------------------------------------------------------------------------- judging prompt


@dataclass(frozen=True)
class JudgingPrompt:
    id: str
    version: int
    system: str
    user: str
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    def messages(self, prompt: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
        # format_map only parses the template, so braces inside answers are safe
        user = self.user.format_map({"prompt": prompt, "answer_a": answer_a.strip(), "answer_b": answer_b.strip()})
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_judging_prompt(name_or_path: str = DEFAULT_JUDGING_PROMPT) -> JudgingPrompt:
    p = Path(name_or_path)
    if not p.suffix:
        p = PROMPTS_DIR / f"{name_or_path}.yaml"
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    missing = {"id", "version", "system", "user"} - set(data)
    if missing:
        raise ValueError(f"{p}: judging prompt needs {sorted(missing)}")
    for key in ("{prompt}", "{answer_a}", "{answer_b}"):
        if key not in data["user"]:
            raise ValueError(f"{p}: the user template must contain {key}")
    return JudgingPrompt(
        id=str(data["id"]), version=int(data["version"]), system=data["system"], user=data["user"],
        description=data.get("description", ""),
    )


_JSON_OBJ = re.compile(r"\{.*\}", re.S)
_CHOICE_WORD = re.compile(r'"?choice"?\s*[:=]\s*"?(A|B|tie)\b', re.I)


def parse_judgement(text: str) -> Judgement:
    """Parse the judge's reply: a JSON object (possibly fenced or surrounded by prose)."""
    raw = text
    m = _JSON_OBJ.search(text or "")
    if m:
        try:
            obj = json.loads(m.group(0))
            choice = str(obj.get("choice", "")).strip()
            norm = {"a": "A", "b": "B", "tie": "tie"}.get(choice.lower())
            if norm is None:
                raise ValueError(f"choice {choice!r} is not A, B or tie")
            conf = float(obj.get("confidence", 0.5))
            conf = min(1.0, max(0.0, conf)) if math.isfinite(conf) else 0.5
            return Judgement(norm, str(obj.get("explanation", "")), conf, raw)  # type: ignore[arg-type]
        except (ValueError, TypeError, AttributeError) as e:
            err = f"bad JSON verdict: {e}"
    else:
        err = "no JSON object in the reply"
    m2 = _CHOICE_WORD.search(text or "")
    if m2:
        c = {"a": "A", "b": "B", "tie": "tie"}[m2.group(1).lower()]
        return Judgement(c, "", 0.5, raw, parse_error=err + " (choice recovered by pattern)")  # type: ignore[arg-type]
    return Judgement("tie", "", 0.0, raw, parse_error=err)


# --------------------------------------------------------------------------- arbiters


class GatewayArbiter:
    """An LLM judge called through the gateway with the versioned judging prompt."""

    def __init__(
        self,
        client: Any,
        model: str,
        judging_prompt: JudgingPrompt | None = None,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = 300,
    ):
        self.client = client
        self.model = model
        self.prompt = judging_prompt or load_judging_prompt()
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.name = f"gateway:{model}"
        self.request_ids: list[str] = []
        self.policy_version: str | None = None

    async def judge(self, prompt: str, answer_a: str, answer_b: str) -> Judgement:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": self.prompt.messages(prompt, answer_a, answer_b),
            "temperature": self.temperature,
        }
        if self.max_tokens:
            kwargs["max_tokens"] = self.max_tokens
        import openai

        try:
            raw = await self.client.chat.completions.with_raw_response.create(**kwargs)
        except openai.APIStatusError as e:
            # e.g. an input guardrail blocking a harmful transcript: that pair gets no verdict
            # (a tie, counted in parse_errors); auth/route/rate errors are the caller's to fix
            if e.status_code in (401, 403, 404, 429) or e.status_code >= 500:
                raise
            return Judgement("tie", "", 0.0, None, parse_error=f"arbiter request rejected: HTTP {e.status_code}: {e.message}")
        completion = raw.parse()
        rid = raw.headers.get("x-request-id")
        if rid:
            self.request_ids.append(rid)
        self.policy_version = raw.headers.get("x-gatehouse-policy") or self.policy_version
        text = (completion.choices[0].message.content or "") if completion.choices else ""
        return parse_judgement(text)


ScoreFn = Callable[[str, str], float] | Callable[[str, str], Awaitable[float]]


class RewardModelArbiter:
    """Prefers the answer with the higher reward; |difference| ≤ ``tie_margin`` is a tie."""

    def __init__(self, score: ScoreFn, *, tie_margin: float = 0.0, name: str = "reward-model"):
        self.score = score
        self.tie_margin = tie_margin
        self.name = name

    async def _score(self, prompt: str, answer: str) -> float:
        r = self.score(prompt, answer)
        if inspect.isawaitable(r):
            r = await r
        return float(r)  # type: ignore[arg-type]

    async def judge(self, prompt: str, answer_a: str, answer_b: str) -> Judgement:
        sa, sb = await self._score(prompt, answer_a), await self._score(prompt, answer_b)
        diff = sa - sb
        choice: Choice = "tie" if abs(diff) <= self.tie_margin else ("A" if diff > 0 else "B")
        conf = 1.0 / (1.0 + math.exp(-abs(diff)))  # Bradley–Terry probability of the winner
        return Judgement(choice, f"reward A={sa:.4f} B={sb:.4f}", conf if choice != "tie" else 0.5)


# --------------------------------------------------------------------------- pairwise judging


@dataclass
class PairResult:
    id: str
    choice: Choice  # final: agreed verdict, or tie when the two orders disagree
    forward: Judgement  # judged as (A, B)
    backward: Judgement  # judged as (B, A), mapped back to A/B labels
    len_a: int
    len_b: int

    @property
    def consistent(self) -> bool:
        return self.forward.choice == self.backward.choice

    @property
    def score_a(self) -> float:
        return {"A": 1.0, "B": 0.0, "tie": 0.5}[self.choice]

    @property
    def confidence(self) -> float:
        return (self.forward.confidence + self.backward.confidence) / 2 if self.consistent else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "choice": self.choice,
            "consistent": self.consistent,
            "confidence": self.confidence,
            "explanation": self.forward.explanation,
            "explanation_reversed": self.backward.explanation,
            "forward": asdict(self.forward),
            "backward": asdict(self.backward),
            "len_a": self.len_a,
            "len_b": self.len_b,
        }


async def judge_both_orders(arbiter: Arbiter, item_id: str, prompt: str, a: str, b: str) -> PairResult:
    fwd, bwd = await asyncio.gather(arbiter.judge(prompt, a, b), arbiter.judge(prompt, b, a))
    back = bwd.swapped()
    final: Choice = fwd.choice if fwd.choice == back.choice else "tie"
    return PairResult(item_id, final, fwd, back, len(a), len(b))


async def judge_pairs(
    arbiter: Arbiter,
    items: Sequence[tuple[str, str, str, str]],
    *,
    concurrency: int = 4,
    progress: bool = False,
) -> list[PairResult]:
    """Judge (id, prompt, answer_a, answer_b) tuples; results in input order."""
    sem = asyncio.Semaphore(max(1, concurrency))
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=f"judging ({arbiter.name})", unit="pair", disable=not progress)

    async def one(t: tuple[str, str, str, str]) -> PairResult:
        async with sem:
            r = await judge_both_orders(arbiter, *t)
            bar.update(1)
            return r

    try:
        return list(await asyncio.gather(*(one(t) for t in items)))
    finally:
        bar.close()


# --------------------------------------------------------------------------- summaries


def _rate(values: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    if values.size == 0:
        return {"value": None, "ci95": [None, None], "n": 0}
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {"value": float(values.mean()), "ci95": [lo, hi], "n": int(values.size)}


def length_bias(results: Sequence[PairResult], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Does the judge favour longer answers?

    ``longer_win_rate``: among decided pairs with different lengths, how often
    the longer one won (0.5 = no preference). ``corr_win_vs_len_diff``: Pearson
    correlation between A's score (1, ½, 0) and len(A) − len(B) in characters.
    """
    decided = [r for r in results if r.choice != "tie" and r.len_a != r.len_b]
    longer_won = np.array([float((r.choice == "A") == (r.len_a > r.len_b)) for r in decided])
    scores = np.array([r.score_a for r in results])
    diffs = np.array([r.len_a - r.len_b for r in results], dtype=float)
    corr = None
    if len(results) > 2 and scores.std() > 0 and diffs.std() > 0:
        corr = float(np.corrcoef(scores, diffs)[0, 1])
    return {"longer_win_rate": _rate(longer_won, n_boot, seed), "corr_win_vs_len_diff": corr,
            "mean_len_a": float(np.mean([r.len_a for r in results])) if results else None,
            "mean_len_b": float(np.mean([r.len_b for r in results])) if results else None}


def summarize_pairs(results: Sequence[PairResult], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    choices = [r.choice for r in results]
    scores = np.array([r.score_a for r in results])
    decided = np.array([1.0 if c == "A" else 0.0 for c in choices if c != "tie"])
    return {
        "n": len(results),
        "wins_a": choices.count("A"),
        "wins_b": choices.count("B"),
        "ties": choices.count("tie"),
        "order_disagreements": sum(not r.consistent for r in results),
        "parse_errors": sum(bool(r.forward.parse_error) + bool(r.backward.parse_error) for r in results),
        "win_rate_a_ties_half": _rate(scores, n_boot, seed),
        "win_rate_a_ties_excluded": _rate(decided, n_boot, seed),
        "length_bias": length_bias(results, n_boot=n_boot, seed=seed),
    }


# --------------------------------------------------------------------------- Bradley–Terry


def bradley_terry(
    n_players: int,
    comparisons: Sequence[tuple[int, int, float]],
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    prior: float = 0.1,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Bradley–Terry strengths by Hunter's (2004) MM algorithm; returns log-strengths (mean 0).

    ``comparisons``: (i, j, s) with s = 1 if i beat j, 0 if j beat i, ½ for a tie
    (a tie is half a win for each). ``prior`` adds that many virtual ties of
    every player against every other, so a player that never won still gets a
    finite strength (and the MM iteration always converges).
    """
    wins = np.zeros(n_players)
    games = np.zeros((n_players, n_players))
    for i, j, s in comparisons:
        wins[i] += s
        wins[j] += 1.0 - s
        games[i, j] += 1
        games[j, i] += 1
    if prior > 0:
        off = 1 - np.eye(n_players)
        games = games + 2 * prior * off
        wins = wins + prior * (n_players - 1)
    p = np.ones(n_players) if init is None else np.exp(init - np.mean(init))
    for _ in range(max_iter):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, wins / np.where(denom > 0, denom, 1), p)
        new = new / np.exp(np.mean(np.log(np.maximum(new, 1e-300))))
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return np.log(np.maximum(p, 1e-300))


def rank_candidates(
    names: Sequence[str],
    comparisons: Sequence[tuple[int, int, float]],
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Bradley–Terry ranking with bootstrap CIs (resampling comparisons); best first.

    ``score`` is on the Elo-like scale 400·log10(strength) around 1000.
    """
    scale = 400 / math.log(10)
    theta = bradley_terry(len(names), comparisons)
    boots = np.zeros((n_boot, len(names)))
    if comparisons:
        for k, idx in enumerate(bootstrap_indices(len(comparisons), n_boot, seed)):
            # warm start from the full fit: resamples are close to it
            boots[k] = bradley_terry(len(names), [comparisons[i] for i in idx], tol=1e-6, init=theta)
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    wins = dict.fromkeys(range(len(names)), 0.0)
    games = dict.fromkeys(range(len(names)), 0)
    for i, j, s in comparisons:
        wins[i] += s
        wins[j] += 1 - s
        games[i] += 1
        games[j] += 1
    rows: list[dict[str, Any]] = [
        {
            "name": n,
            "strength": float(theta[k]),
            "score": float(1000 + scale * theta[k]),
            "ci95": [float(1000 + scale * lo[k]), float(1000 + scale * hi[k])],
            "win_rate": wins[k] / games[k] if games[k] else None,
            "games": games[k],
        }
        for k, n in enumerate(names)
    ]
    rows.sort(key=lambda r: -r["strength"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


async def run_tournament(
    arbiter: Arbiter,
    prompts: dict[str, str],
    answers: dict[str, dict[str, str]],
    *,
    concurrency: int = 4,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """All pairs of candidates on every prompt; ``answers[candidate][item_id]``. Ranked by Bradley–Terry."""
    names = sorted(answers)
    if len(names) < 2:
        raise ValueError("a tournament needs at least two candidates")
    jobs: list[tuple[str, str, str, str]] = []
    pair_of: list[tuple[int, int]] = []
    for i, j in combinations(range(len(names)), 2):
        for item_id, prompt in prompts.items():
            a, b = answers[names[i]].get(item_id), answers[names[j]].get(item_id)
            if a is None or b is None:
                continue
            jobs.append((f"{item_id}:{names[i]}~{names[j]}", prompt, a, b))
            pair_of.append((i, j))
    results = await judge_pairs(arbiter, jobs, concurrency=concurrency)
    comps = [(i, j, r.score_a) for (i, j), r in zip(pair_of, results, strict=True)]
    return {
        "candidates": names,
        "ranking": rank_candidates(names, comps, n_boot=n_boot, seed=seed),
        "pairs": [r.to_dict() for r in results],
    }


async def run_sxs(
    arbiter: Arbiter,
    prompts: dict[str, str],
    answers_a: dict[str, str],
    answers_b: dict[str, str],
    *,
    concurrency: int = 4,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """A vs B on the prompts both answered; per-item verdicts plus the summary."""
    ids = [i for i in prompts if i in answers_a and i in answers_b]
    jobs = [(i, prompts[i], answers_a[i], answers_b[i]) for i in ids]
    results = await judge_pairs(arbiter, jobs, concurrency=concurrency, progress=progress)
    return {
        "arbiter": arbiter.name,
        "summary": summarize_pairs(results, n_boot=n_boot, seed=seed),
        "items": [r.to_dict() for r in results],
        "skipped_missing_answer": len(prompts) - len(ids),
    }


# --------------------------------------------------------------------------- human agreement (HH-RLHF)


@dataclass(frozen=True)
class HumanPair:
    id: str
    prompt: str  # shared transcript before the last Assistant turn
    chosen: str
    rejected: str


def split_hh(transcript_a: str, transcript_b: str) -> tuple[str, str, str]:
    """(shared prompt, last assistant turn of a, last assistant turn of b)."""
    marker = "\n\nAssistant:"
    ka, kb = transcript_a.rfind(marker), transcript_b.rfind(marker)
    prompt = transcript_a[:ka].strip()
    return prompt, transcript_a[ka + len(marker):].strip(), transcript_b[kb + len(marker):].strip()


def load_hh_pairs(path: str | Path, limit: int | None = None) -> list[HumanPair]:
    out: list[HumanPair] = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            obj = json.loads(line)
            prompt, chosen, rejected = split_hh(obj["chosen"], obj["rejected"])
            out.append(HumanPair(f"hh-{k}", prompt, chosen, rejected))
    return out


async def human_agreement(
    arbiter: Arbiter,
    pairs: Sequence[HumanPair],
    *,
    concurrency: int = 4,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How often the arbiter picks the answer humans chose.

    The human-preferred answer is put in slot A or B by a seeded coin flip (and
    every pair is judged in both orders anyway). ``agreement_ties_half`` counts
    an arbiter tie as ½; ``agreement_decided`` ignores ties.
    """
    rng = random.Random(seed)
    jobs, chosen_slot = [], []
    for p in pairs:
        if rng.random() < 0.5:
            jobs.append((p.id, p.prompt, p.chosen, p.rejected))
            chosen_slot.append("A")
        else:
            jobs.append((p.id, p.prompt, p.rejected, p.chosen))
            chosen_slot.append("B")
    results = await judge_pairs(arbiter, jobs, concurrency=concurrency)
    agree = np.array([1.0 if r.choice == s else (0.5 if r.choice == "tie" else 0.0) for r, s in zip(results, chosen_slot, strict=True)])
    decided = np.array([1.0 if r.choice == s else 0.0 for r, s in zip(results, chosen_slot, strict=True) if r.choice != "tie"])
    return {
        "arbiter": arbiter.name,
        "n": len(results),
        "ties": sum(r.choice == "tie" for r in results),
        "agreement_ties_half": _rate(agree, n_boot, seed),
        "agreement_decided": _rate(decided, n_boot, seed),
        "length_bias": length_bias(results, n_boot=n_boot, seed=seed),
        "items": [{**r.to_dict(), "human_choice": s} for r, s in zip(results, chosen_slot, strict=True)],
    }


def answers_from_run(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """id → output text of a runner results file (items that errored are left out)."""
    return {i: r["output"] for i, r in results.items() if isinstance(r.get("output"), str)}
