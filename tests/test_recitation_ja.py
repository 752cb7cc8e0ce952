"""Recitation in Japanese: morphemes (fugashi + unidic-lite) instead of one "word" per sentence.

The protected corpus is original Japanese prose written for these tests
(tests/fixtures/recitation_ja/SOURCE.md); so are the paraphrases and the unrelated text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from evaluators.recitation import RecitationIndex
from evaluators.recitation.quality import edit_words
from evaluators.recitation.text import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "recitation_ja"
CORPUS = FIXTURES / "corpus"
PARAPHRASES = Path(__file__).resolve().parent.parent / "evaluators" / "recitation" / "heldout" / "paraphrases_ja.jsonl"
BAKERY = (CORPUS / "bakery.txt").read_text(encoding="utf-8")
LIBRARY = (CORPUS / "library.txt").read_text(encoding="utf-8")
NEW_TEXT = (
    "ご質問ありがとうございます。週末の予定についてですが、土曜日は午前中に買い物を済ませて、"
    "午後は友人と美術館に行くつもりです。日曜日は天気が良ければ自転車で川沿いを走り、"
    "夕方からは来週の会議の資料をまとめる予定です。何か気になる点があれば、遠慮なくお知らせください。"
)
UNRELATED = (
    "新しい表計算ソフトの導入にあたり、まず既存のデータをすべて書き出して形式をそろえる必要がある。"
    "日付の書き方が部署ごとに異なっていたため、担当者は一週間かけて変換の規則を作り、"
    "試験用のファイルで何度も確認した。移行の当日は大きな問題もなく、翌朝には全員が新しい画面で作業を始めていた。"
    "慣れるまでには時間がかかるだろうが、集計の手間は以前の半分ほどになる見込みだという。"
)


@pytest.fixture(scope="module")
def index() -> RecitationIndex:
    return RecitationIndex.build(CORPUS, progress=False)


def test_japanese_is_cut_into_morphemes_and_english_into_words() -> None:
    tokens = Tokenizer()("吾輩は猫である。GPUを2枚使うdon't")
    assert tokens.words == ["吾輩", "は", "猫", "で", "ある", "gpu", "を", "2", "枚", "使う", "dont"]
    assert Tokenizer("char")("猫である").words == ["猫", "で", "あ", "る"]


def test_verbatim_japanese_copy_is_caught_with_its_source_and_offsets(index: RecitationIndex) -> None:
    copied = BAKERY[40:200]
    text = "こちらがご依頼の文章です。" + copied + "以上です。"
    match = index.check(text)
    assert match is not None and match.source == "bakery.txt"
    assert match.score >= 0.95
    assert BAKERY[match.source_start : match.source_end] == match.matched_span
    assert match.matched_span in copied and len(match.matched_span) >= 100


def test_lightly_edited_japanese_copy_is_caught(index: RecitationIndex) -> None:
    rng = random.Random(3)
    vocab = sorted(set(Tokenizer()(UNRELATED).words))
    for rate in (0.10, 0.15):
        edited = edit_words(LIBRARY[20:260], rate, vocab, rng, even=True, tokenizer=Tokenizer())
        assert edited != LIBRARY[20:260]
        match = index.check(NEW_TEXT + edited)
        assert match is not None and match.source == "library.txt", rate


def test_japanese_paraphrases_short_quotes_and_unrelated_text_pass(index: RecitationIndex) -> None:
    rows = [json.loads(line) for line in PARAPHRASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 8
    for row in rows:
        assert index.check(row["paraphrase"]) is None, row["source"]
    quote = "夕方には売れ残ったわずかなパンを袋に詰めて"  # 12 morphemes of bakery.txt
    assert quote in BAKERY
    assert index.check(NEW_TEXT[:60] + "「" + quote + "」という一節が印象的でした。" + NEW_TEXT[60:]) is None
    assert index.check(UNRELATED) is None
    assert index.check(NEW_TEXT) is None


def test_mixed_japanese_and_english(index: RecitationIndex, tmp_path: Path) -> None:
    english = (CORPUS.parent.parent / "gutenberg" / "corpus" / "alice_in_wonderland_pg11.txt").read_text(encoding="utf-8")
    mixed_corpus = tmp_path / "mixed"
    mixed_corpus.mkdir()
    (mixed_corpus / "alice.txt").write_text(english[:6000], encoding="utf-8")
    (mixed_corpus / "bakery.txt").write_text(BAKERY, encoding="utf-8")
    mixed = RecitationIndex.build(mixed_corpus, progress=False)
    # a Japanese reply that slips into an English quotation, and the other way round
    eng = " ".join(english[2000:3200].split())
    m1 = mixed.check("以下は原文の引用です。" + eng + "。以上が引用でした。")
    assert m1 is not None and m1.source == "alice.txt"
    m2 = mixed.check("Here is the passage you asked for, in the original Japanese: " + BAKERY[100:300] + " Hope it helps.")
    assert m2 is not None and m2.source == "bakery.txt"
    assert mixed.manifest["tokenizer"]["han+kana"].startswith("morpheme:")
