"""Hybrid grounding retrieval: BM25 (bm25s) beside FAISS in one versioned artifact, fused by RRF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.grounding.builder import add_documents, build_index, delete_documents
from gateway.grounding.index import GroundingIndex, resolve_version_dir
from gateway.grounding.lexical import Fusion, lexical_tokens
from gateway.grounding.text import Document, chunk_document, iter_documents

# Near-identical manuals told apart only by their codes: what embeddings blur and BM25 sees.
PUMPS = {
    f"pump_{code.lower()}.md": f"# Pump manual\nThe circulation pump reports faults on its display. Fault {code} means "
    f"{meaning}. Switch the pump off before opening the cover, and call maintenance if the fault returns."
    for code, meaning in [
        ("Q-7731", "the impeller is blocked by debris"),
        ("Q-7742", "the inlet pressure is too low"),
        ("Q-7758", "the motor temperature sensor is disconnected"),
        ("Q-7764", "the outlet valve did not open"),
    ]
}
JAPANESE = {
    "reitou.md": "# 冷凍庫の点検\n冷凍庫の扉のパッキンは半年ごとに交換します。霜が3センチ以上ついたら、中身を移してから霜取りをしてください。",
    "forklift.md": "# フォークリフトの運転\nフォークリフトを運転できるのは、社内講習を修了した人だけです。構内の制限速度は時速8キロです。",
    "nifuda.md": "# 荷札の書き方\n荷札には品番と数量を必ず書きます。品番がFX-204の部品は割れやすいので、赤い荷札を付けてください。",
}


@pytest.fixture(scope="module")
def embedder():
    from evaluators.embedding import shared_embedder

    return shared_embedder()


def write(folder: Path, docs: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def pumps(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("hybrid")
    out = root / "index"
    manifest = build_index(iter_documents([write(root / "docs", PUMPS)]), out, embedder, progress=False)
    return out, manifest


def test_one_artifact_holds_both_parts_and_the_fusion(pumps) -> None:
    out, m = pumps
    d = resolve_version_dir(out)
    assert m["format"] == "gatehouse-grounding/2" and m["retrieval"] == "hybrid"
    assert m["fusion"] == Fusion().to_dict() == {"method": "rrf", "k": 60, "dense_weight": 1.0, "bm25_weight": 1.0, "candidates": 50}
    assert m["lexical"]["type"] == "bm25s" and m["lexical"]["tokenizer"]["han+kana"].startswith("morpheme:")
    assert (d / "bm25" / "params.index.json").is_file() and (d / "index.faiss").is_file()
    index = GroundingIndex.load(out)
    assert index.lexical is not None and index.lexical.rows == len(index.chunks)
    assert index.retrieval == {"mode": "hybrid", "fusion": m["fusion"], "bm25": m["lexical"]["params"]}


def test_bm25_tells_apart_pages_that_differ_by_a_code(pumps, embedder) -> None:
    index = GroundingIndex.load(pumps[0])
    for code in ("Q-7731", "Q-7742", "Q-7758", "Q-7764"):
        question = f"The pump display shows {code}, what is wrong?"
        vec = embedder.encode([question])[0]
        hits = index.search(vec, 2, 0.0, question)
        assert hits[0].doc_id == f"pump_{code.lower()}.md", code
        assert hits[0].bm25_score is not None and hits[0].dense_score is not None
        assert 0 < hits[0].score <= 1.0 and hits[0].score >= hits[1].score
        # without the question's text the same index ranks by cosine alone
        assert all(h.bm25_score is None for h in index.search(vec, 2, 0.0))


def test_min_score_gates_on_the_cosine(pumps, embedder) -> None:
    index = GroundingIndex.load(pumps[0])
    question = "The pump display shows Q-7742, what is wrong?"
    vec = embedder.encode([question])[0]
    hits = index.search(vec, 4, 0.0, question)
    floor = sorted(h.dense_score for h in hits)[1]  # drops the chunk with the lowest cosine
    gated = index.search(vec, 4, floor, question)
    assert len(gated) == len(hits) - 1 and all(h.dense_score >= floor for h in gated)
    off_topic = "What is the recipe for a lemon tart?"
    assert index.search(embedder.encode([off_topic])[0], 4, 0.25, off_topic) == []


def test_add_and_delete_keep_bm25_and_faiss_in_step(pumps, embedder, tmp_path) -> None:
    src, m0 = pumps
    idx = tmp_path / "idx"
    shutil.copytree(src, idx)
    extra = write(tmp_path / "extra", {"pump_q-7799.md": PUMPS["pump_q-7731.md"].replace("Q-7731", "Q-7799").replace("impeller is blocked by debris", "the seal leaks")})
    m1 = add_documents(idx, iter_documents([extra]), embedder, progress=False)
    assert m1["retrieval"] == "hybrid" and m1["fusion"] == m0["fusion"] and m1["chunk_count"] == m0["chunk_count"] + 1
    index = GroundingIndex.load(idx)
    assert index.lexical is not None and index.lexical.rows == len(index.chunks) == index.index.ntotal
    assert [index.chunks[r]["doc_id"] for _, r in index.lexical.search("Q-7799", 1)] == ["pump_q-7799.md"]
    m2 = delete_documents(idx, ["pump_q-7799.md"])
    assert m2["content_hash"] == m0["content_hash"]
    index = GroundingIndex.load(idx)
    assert index.lexical is not None and index.lexical.rows == len(index.chunks)
    assert index.lexical.search("7799", 1) == []  # the code is gone from the BM25 vocabulary/postings


def test_dense_only_and_older_indexes_still_load(pumps, embedder, tmp_path) -> None:
    dense = tmp_path / "dense"
    m = build_index(iter_documents([write(tmp_path / "docs", PUMPS)]), dense, embedder, progress=False, retrieval="dense")
    assert m["retrieval"] == "dense" and "fusion" not in m
    assert not (resolve_version_dir(dense) / "bm25").exists()
    # a version written before hybrid retrieval: format /1, no retrieval key
    d = resolve_version_dir(dense)
    old = json.loads((d / "manifest.json").read_text())
    old["format"] = "gatehouse-grounding/1"
    del old["retrieval"]
    (d / "manifest.json").write_text(json.dumps(old))
    index = GroundingIndex.load(dense)
    assert index.lexical is None and index.retrieval == {"mode": "dense"}
    question = "The pump display shows Q-7731, what is wrong?"
    hits = index.search(embedder.encode([question])[0], 2, 0.0, question)
    assert hits and hits[0].bm25_score is None and hits[0].dense_score is None


def test_a_bm25_part_cut_by_another_tokenizer_is_refused(pumps, tmp_path) -> None:
    idx = tmp_path / "idx"
    shutil.copytree(pumps[0], idx)
    d = resolve_version_dir(idx)
    m = json.loads((d / "manifest.json").read_text())
    m["lexical"]["tokenizer"]["han+kana"] = "morpheme:unidic-lite-0.0.1"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="rebuild the index"):
        GroundingIndex.load(idx)


def test_japanese_documents_are_chunked_by_sentence_and_found_by_morphemes(embedder, tmp_path) -> None:
    assert lexical_tokens("品番がFX-204の部品は割れやすい") == ["品番", "fx", "204", "部品", "割れ", "やすい"]
    doc = Document("a.md", "t", "一文目です。二文目です！三文目ですか？", "a.md")
    assert [c.text for c in chunk_document(doc, max_chars=8, overlap=0)] == ["一文目です。", "二文目です！", "三文目ですか？"]
    out = tmp_path / "ja"
    build_index(iter_documents([write(tmp_path / "docs", JAPANESE)]), out, embedder, progress=False)
    index = GroundingIndex.load(out)
    for question, doc_id in (
        ("FX-204の部品にはどの色の荷札を付けますか？", "nifuda.md"),
        ("構内でフォークリフトは時速何キロまで出せますか？", "forklift.md"),
        ("冷凍庫のパッキンの交換時期はいつですか？", "reitou.md"),
    ):
        hits = index.search(embedder.encode([question])[0], 1, -1.0, question)
        assert hits[0].doc_id == doc_id, question
