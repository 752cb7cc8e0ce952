"""Recitation evaluator: windows + MinHash LSH + exact containment over Gutenberg excerpts."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluators.recitation import (
    CorpusError,
    IndexFormatError,
    IndexVersionError,
    RecitationError,
    RecitationIndex,
)
from evaluators.recitation.quality import edit_words
from evaluators.recitation.text import tokenize
from gateway.cli.recitation import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "gutenberg"
CORPUS = FIXTURES / "corpus"
CONTROL = (FIXTURES / "control" / "pride_and_prejudice_pg1342.txt").read_text(encoding="utf-8")
FRANKENSTEIN = (CORPUS / "frankenstein_pg84.txt").read_text(encoding="utf-8")
ALICE = (CORPUS / "alice_in_wonderland_pg11.txt").read_text(encoding="utf-8")

PREFIX = "Sure, here is a short summary of the scene you asked about, in my own words first. "
SUFFIX = " I hope this helps with your essay; let me know if you want a longer version."


def words_span(text: str, start: int, n: int) -> str:
    """Original text of words [start, start + n) of ``text``."""
    spans = tokenize(text).spans
    return text[spans[start, 0] : spans[start + n - 1, 1]]


def norm(text: str) -> list[str]:
    return tokenize(text).words


def is_sublist(small: list[str], big: list[str]) -> bool:
    return any(big[i : i + len(small)] == small for i in range(len(big) - len(small) + 1))


@pytest.fixture(scope="module")
def index() -> RecitationIndex:
    return RecitationIndex.build(CORPUS, progress=False)


@pytest.fixture(scope="module")
def saved(index: RecitationIndex, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "index"
    index.save(out)
    return out


def test_verbatim_100_word_copy_is_caught_with_source_and_span(index: RecitationIndex) -> None:
    copied = words_span(FRANKENSTEIN, 1200, 100)
    match = index.check(PREFIX + copied + SUFFIX)
    assert match is not None
    assert match.source == "frankenstein_pg84.txt"
    assert match.score == 1.0
    # The matched corpus span is a real passage of the book and is what was copied.
    assert match.matched_span in FRANKENSTEIN
    assert len(norm(match.matched_span)) >= 45
    assert is_sublist(norm(match.matched_span), norm(copied))
    assert match.query_span in copied
    assert match.window_start_word <= 1200 + 100 and match.window_end_word >= 1200
    assert match.window_end_word - match.window_start_word == 100


def test_case_and_punctuation_changes_still_match(index: RecitationIndex) -> None:
    copied = words_span(ALICE, 3000, 80)
    mangled = "".join(c for c in copied.upper() if c.isalnum() or c.isspace())
    match = index.check(mangled)
    assert match is not None and match.source == "alice_in_wonderland_pg11.txt"
    assert match.score == 1.0


def test_lightly_edited_copies_are_caught(index: RecitationIndex) -> None:
    rng = random.Random(1234)
    vocab = sorted(set(norm(CONTROL)))
    caught = 0
    for start in (300, 1500, 2600, 4000):
        for book, name in (
            (FRANKENSTEIN, "frankenstein_pg84.txt"),
            (ALICE, "alice_in_wonderland_pg11.txt"),
        ):
            original = words_span(book, start, 100)
            edited = edit_words(original, 0.10, vocab, rng)
            assert sum(a != b for a, b in zip(norm(original), norm(edited), strict=True)) == 10
            match = index.check(PREFIX + edited + SUFFIX)
            if match is not None and match.source == name:
                caught += 1
                assert match.score >= index.threshold
    assert caught == 8


def test_planted_60_word_span_in_unrelated_text(index: RecitationIndex) -> None:
    planted = words_span(ALICE, 2000, 60)
    text = words_span(CONTROL, 100, 80) + "\n\n" + planted + "\n\n" + words_span(CONTROL, 900, 80)
    match = index.check(text)
    assert match is not None and match.source == "alice_in_wonderland_pg11.txt"
    assert match.query_span in planted


def test_unrelated_text_in_same_style_is_not_flagged(index: RecitationIndex) -> None:
    n = len(tokenize(CONTROL))
    worst = 0.0
    for start in range(0, n - 200, 150):
        passage = words_span(CONTROL, start, 200)
        assert index.check(passage) is None
        best = index.best_match(passage)
        worst = max(worst, best.score if best else 0.0)
    assert worst < 0.25


def test_short_or_empty_text_is_not_flagged(index: RecitationIndex) -> None:
    assert index.check("") is None
    assert index.check("It was on a dreary night of November") is None  # below min_query_words


def test_manifest_describes_the_index(index: RecitationIndex) -> None:
    m = index.manifest
    assert [s["name"] for s in m["sources"]] == [
        "alice_in_wonderland_pg11.txt",
        "frankenstein_pg84.txt",
    ]
    assert all(len(s["sha256"]) == 64 for s in m["sources"])
    assert (m["window_words"], m["stride_words"], m["shingle_words"]) == (100, 50, 4)
    assert (m["num_perm"], m["threshold"]) == (128, 0.55)
    assert m["tokenizer"]["spaced"] == "word" and m["tokenizer"]["han+kana"].startswith("morpheme:unidic-lite-")
    assert m["params"]["min_run"] == 3 and m["scoring"] == "aligned-runs-v1"
    assert m["datasketch_version"].startswith("2.")
    assert m["index_id"] == "rec-" + m["content_sha256"][:16]
    assert m["format_version"] == 2 and m["created_at"]


def test_save_load_round_trip_gives_identical_results(index: RecitationIndex, saved: Path) -> None:
    loaded = RecitationIndex.load(saved)
    assert loaded.manifest == index.manifest
    assert not list(saved.rglob("*.pkl")) and not list(saved.rglob("*.pickle"))
    rng = random.Random(5)
    vocab = sorted(set(norm(CONTROL)))
    queries = [
        PREFIX + words_span(FRANKENSTEIN, 700, 100) + SUFFIX,
        edit_words(words_span(ALICE, 1000, 70), 0.1, vocab, rng),
        words_span(CONTROL, 50, 150),
        words_span(FRANKENSTEIN, 10, 30),
    ]
    for q in queries:
        assert loaded.check(q) == index.check(q)
        assert loaded.best_match(q) == index.best_match(q)
    # Saving a loaded index reproduces the same content hash.
    loaded.save(saved.parent / "again")
    again = json.loads((saved.parent / "again" / "manifest.json").read_text())
    assert again["content_sha256"] == index.manifest["content_sha256"]


def _rewrite_manifest(index_dir: Path, **changes: object) -> None:
    path = index_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_load_refuses_other_datasketch_major(saved: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(saved, copy)
    _rewrite_manifest(copy, datasketch_version="1.6.5")
    with pytest.raises(IndexVersionError, match=r"(?is)datasketch 1\.6\.5.*major.*rebuild"):
        RecitationIndex.load(copy)
    # A minor/patch difference within the same major is fine.
    _rewrite_manifest(copy, datasketch_version="2.99.1")
    RecitationIndex.load(copy)


def test_load_detects_corruption_and_missing_index(saved: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bad"
    shutil.copytree(saved, copy)
    with open(copy / "windows.npy", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x01" * 8)
    with pytest.raises(IndexFormatError, match="content hash"):
        RecitationIndex.load(copy)
    with pytest.raises(IndexFormatError, match="no recitation index"):
        RecitationIndex.load(tmp_path / "nowhere")


class _FailingFiles(dict[str, bytes]):
    """Files whose third item cannot be written (a full disk, a killed process)."""

    def items(self) -> Iterator[tuple[str, bytes]]:  # type: ignore[override]
        for i, item in enumerate(super().items()):
            if i == 2:
                raise OSError(28, "No space left on device")
            yield item


def test_save_is_atomic(
    index: RecitationIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "index"
    index.save(good)
    before = {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()}

    real_files = RecitationIndex._files
    monkeypatch.setattr(RecitationIndex, "_files", lambda self: _FailingFiles(real_files(self)))
    with pytest.raises(OSError, match="No space"):
        index.save(tmp_path / "fresh")
    with pytest.raises(OSError, match="No space"):
        index.save(good)
    monkeypatch.undo()

    assert not (tmp_path / "fresh").exists()  # never half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temp dirs left
    assert {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()} == before
    RecitationIndex.load(good)

    index.save(good)  # replacing an existing index works
    RecitationIndex.load(good)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(IndexFormatError, match="not a recitation index"):
        index.save(tmp_path / "notes")


def test_build_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        RecitationIndex.build(tmp_path / "missing", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no files matching \*\.txt"):
        RecitationIndex.build(tmp_path / "empty", progress=False)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "a.txt").write_text("too short")
    with pytest.raises(CorpusError, match="no text to index"):
        RecitationIndex.build(tmp_path / "tiny", progress=False)
    with pytest.raises(RecitationError, match="shingle"):
        RecitationIndex.build(CORPUS, window_words=8, shingle_words=5, progress=False)


async def test_acheck_matches_check_off_the_loop(index: RecitationIndex) -> None:
    texts = [PREFIX + words_span(FRANKENSTEIN, s, 100) + SUFFIX for s in (100, 900, 2000)]
    texts.append(words_span(CONTROL, 0, 120))
    try:
        results = await asyncio.gather(*(index.acheck(t) for t in texts))
    finally:
        await index.aclose()
    assert results == [index.check(t) for t in texts]
    assert [r is not None for r in results] == [True, True, True, False]


def test_cli_build_check_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "idx"
    assert main(["build", str(CORPUS), "-o", str(out), "--no-progress", "--threshold", "0.6"]) == 0
    assert "2 sources" in capsys.readouterr().out

    copied = words_span(ALICE, 1500, 100)
    assert main(["check", str(out), "--text", copied]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["recitation"] is True
    assert verdict["match"]["source"] == "alice_in_wonderland_pg11.txt"
    assert verdict["threshold"] == 0.6

    control = tmp_path / "control.txt"
    control.write_text(words_span(CONTROL, 300, 150), encoding="utf-8")
    assert main(["check", str(out), "--file", str(control)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "recitation": False,
        "index_id": verdict["index_id"],
        "threshold": 0.6,
        "match": None,
    }

    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_id"] == verdict["index_id"] and info["threshold"] == 0.6


def test_cli_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["build", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert "no files matching" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "o"), "--text", "hello"]) == 2
    assert "no recitation index" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "o")]) == 2
    assert main(["build", str(CORPUS), "-o", str(tmp_path / "o"), "--stride", "0"]) == 2
    assert "stride_words" in capsys.readouterr().err
    assert main([]) == 2  # argparse usage error
    assert not (tmp_path / "o").exists()


def test_cli_subprocess(saved: Path, tmp_path: Path) -> None:
    text = tmp_path / "answer.txt"
    text.write_text(PREFIX + words_span(FRANKENSTEIN, 2500, 100) + SUFFIX, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli.recitation", "check", str(saved), "--file", str(text)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["recitation"] is True
    assert verdict["match"]["source"] == "frankenstein_pg84.txt"


async def test_a_policy_threshold_below_the_index_threshold_applies(index: RecitationIndex) -> None:
    """The rule's threshold decides, not the index's build threshold (0.5 here)."""
    from policies.engine import Engine
    from policies.policy_set import PolicySet

    src, other = words_span(FRANKENSTEIN, 900, 200).split(), words_span(CONTROL, 1000, 300).split()
    text = " ".join(src[:22] + other[:28] + src[22:44] + other[28:56] + src[44:66])  # 44% recited
    best = index.best_match(text)
    assert best is not None and 0.4 < best.score < index.params.threshold and index.check(text) is None
    policy = """\
id: r
version: 1
owner: tests
rules:
  - {id: strict, direction: output, action: flag, checks: [{type: recitation, threshold: 0.4}]}
  - {id: loose, direction: output, action: flag, checks: [{type: recitation, threshold: 0.9}]}
"""
    engine = Engine(PolicySet.from_texts([("r.yaml", policy)]), recitation=index)
    try:
        outcome = await engine.evaluate("output", text, "t", "k", "m")
    finally:
        await index.aclose()
    fired = {v.rule: v.action for v in outcome.verdicts}
    assert fired == {"strict": "flag", "loose": "pass"}
    assert all(v.score == best.score for v in outcome.verdicts)


def test_evenly_edited_copies_are_caught_and_short_quotes_pass(index: RecitationIndex) -> None:
    """15% of the words changed, one every ~7 words (every 4-word shingle broken), is still a copy;
    a 10-word quotation inside new text is not."""
    rng = random.Random(99)
    vocab = sorted(set(norm(CONTROL)))
    for start in (400, 1800, 3300):
        original = words_span(FRANKENSTEIN, start, 80)
        edited = edit_words(original, 0.15, vocab, rng, even=True)
        match = index.check(PREFIX + edited + SUFFIX)
        assert match is not None and match.source == "frankenstein_pg84.txt"
        assert match.longest_run < 10 and match.score >= 0.7
        quote = words_span(ALICE, start, 10)
        text = words_span(CONTROL, start, 40) + f" “{quote},” as the book puts it, " + words_span(CONTROL, start + 40, 40)
        best = index.best_match(text)
        assert index.check(text) is None and (best is None or best.score <= 0.3)


def test_match_reports_source_and_query_offsets(index: RecitationIndex) -> None:
    copied = words_span(ALICE, 2200, 70)
    text = PREFIX + copied + SUFFIX
    match = index.check(text)
    assert match is not None and match.source == "alice_in_wonderland_pg11.txt"
    assert ALICE[match.source_start : match.source_end] == match.matched_span
    assert text[match.query_start : match.query_end] == match.query_span
    assert match.longest_run >= 45 and match.matched_tokens >= 45
    assert match.query_start >= len(PREFIX) - 1 and match.query_end <= len(PREFIX) + len(copied)


def test_a_v1_index_is_refused_with_a_rebuild_message(saved: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "v1"
    shutil.copytree(saved, copy)
    _rewrite_manifest(copy, format_version=1)
    with pytest.raises(IndexFormatError, match=r"(?s)v1 indexes cut Japanese.*rebuild it with `gatehouse recitation build`"):
        RecitationIndex.load(copy)
    shutil.copytree(saved, tmp_path / "tok")
    _rewrite_manifest(tmp_path / "tok", tokenizer={"spaced": "word", "han+kana": "morpheme:unidic-lite-0.0.1", "thai": "char"})
    with pytest.raises(IndexVersionError, match="tokenised as"):
        RecitationIndex.load(tmp_path / "tok")
