"""Corpora, tokenizers, the train/validation split and packing."""

import json
import os

import numpy as np
import pytest

from slimtrain.data import (Blocks, EpochOrder, IGNORE_INDEX, default_corpus, iter_records,
                            load_tokenizer, tokenized, train_bpe)
from slimtrain.data.corpus import stdlib_files, stdlib_root
from slimtrain.errors import UserError
from tests.helpers import write_stdlib_jsonl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [f.read_text(errors="replace") for f in stdlib_files(stdlib_root())[:40]]
    return train_bpe(texts, 400, tmp_path_factory.mktemp("tok"))


def test_default_corpus_is_the_stdlib_built_deterministically_and_cached(tmp_path, monkeypatch):
    corpora = []
    for name in ("a", "b"):
        monkeypatch.setenv("SLIMTRAIN_CACHE", str(tmp_path / name))
        corpora.append(default_corpus())
    a, b = corpora
    assert a.sha256 == b.sha256 and a.bytes == b.bytes > 5_000_000 and a.files == b.files > 300
    assert "standard library" in a.describe() and str(stdlib_root()) in a.describe()
    sources = [json.loads(line)["source"] for line in a.path.read_text().splitlines()]
    assert sources == sorted(sources) and "Lib/json/decoder.py" in sources
    assert not any("/test/" in s or "site-packages" in s for s in sources)
    mtime = a.path.stat().st_mtime_ns
    monkeypatch.setenv("SLIMTRAIN_CACHE", str(tmp_path / "a"))
    assert default_corpus().path.stat().st_mtime_ns == mtime  # reused, not rebuilt


def _documents(files, split, tokenizer):
    """The documents of a split, decoded back from the token file (split at EOS)."""
    ids = np.asarray(files.tokens(split)).tolist()
    docs, current = [], []
    for i in ids:
        if i == tokenizer.eos_token_id:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    return docs


def test_validation_split_never_overlaps_training(tokenizer, tmp_path):
    texts = [f"document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(300)]
    texts += texts[:50]  # duplicates must land on the same side as their first copy
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    files = tokenized(lambda: iter_records(path), "dup-test", tokenizer, 0.2, False, "test")
    train, val = _documents(files, "train", tokenizer), _documents(files, "val", tokenizer)
    assert set(train).isdisjoint(val)
    assert sorted(set(train) | set(val)) == sorted(set(texts))
    assert 0.1 < len(set(val)) / 300 < 0.3
    assert files.meta["train_documents"] + files.meta["val_documents"] == 350


def test_text_files_become_documents_at_blank_lines(tmp_path):
    paragraphs = [f"paragraph {i} " + "word " * 150 + "\n" for i in range(40)]
    (tmp_path / "book.txt").write_text("\n".join(paragraphs))
    docs = [text for _, text in iter_records(tmp_path / "book.txt")]
    assert len(docs) > 10 and "".join(docs) == "\n".join(paragraphs)
    assert all(len(d) >= 2000 for d in docs[:-1])


def test_a_directory_and_a_saved_dataset_read_the_same_documents(tmp_path):
    import datasets

    rows = [{"text": f"row {i}", "prompt": f"q{i}"} for i in range(5)]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (tmp_path / "dir" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[3:]))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    expected = [(r["prompt"], r["text"]) for r in rows]
    assert list(iter_records(tmp_path / "dir", prompt_field="prompt")) == expected
    assert list(iter_records(tmp_path / "ds", prompt_field="prompt")) == expected
    with pytest.raises(UserError, match="no column 'body'"):
        list(iter_records(tmp_path / "ds", text_field="body"))


def test_prompt_tokens_are_masked_out_of_the_loss(tokenizer, tmp_path):
    rows = [{"prompt": f"Question {i}? ", "answer": f"Answer number {i}."} for i in range(200)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = tokenized(lambda: iter_records(path, "answer", "prompt"), "qa", tokenizer, 0.1, True, "qa")
    tokens, mask = np.asarray(files.tokens("train")), np.asarray(files.mask("train"))
    backend = tokenizer.backend_tokenizer
    for row in rows:  # the first example the hash split sent to training
        p = backend.encode(row["prompt"], add_special_tokens=False).ids
        a = backend.encode(row["answer"], add_special_tokens=False).ids
        if tokens[:len(p) + len(a)].tolist() == p + a:
            break
    else:
        pytest.fail("no example starts the training split")
    assert mask[:len(p)].tolist() == [0] * len(p)
    assert mask[len(p):len(p) + len(a) + 1].tolist() == [1] * (len(a) + 1)  # answer and its EOS
    ids, labels = Blocks(tokens, mask, 8).batch([0])
    assert (labels[0][:len(p)] == IGNORE_INDEX).all() and ids.shape == (1, 8)


def test_epoch_order_is_a_function_of_position(tokenizer):
    order = EpochOrder(10, seed=3)
    straight = order.take(0, 35)
    assert sorted(straight[:10]) == list(range(10)) and straight[:10] != straight[10:20]
    # A fresh object (a resumed run) picks up mid-epoch exactly where the first left off.
    assert EpochOrder(10, seed=3).take(17, 18) == straight[17:]
    assert EpochOrder(10, seed=4).take(0, 10) != straight[:10]


def test_tokenizer_train_command_writes_a_loadable_tokenizer(tmp_path):
    from typer.testing import CliRunner

    from slimtrain.cli import app

    corpus = write_stdlib_jsonl(tmp_path / "c.jsonl", 200_000)
    out = tmp_path / "tok"
    result = CliRunner().invoke(app, ["tokenizer", "train", "--data", str(corpus), "--vocab-size",
                                      "600", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tok = load_tokenizer(out)
    text = "def f(x):\n    return x ** 2  # ünïcödé ✓\n"
    assert len(tok) == 600 and tok.decode(tok(text)["input_ids"]) == text
    again = CliRunner().invoke(app, ["tokenizer", "train", "--data", str(corpus), "--out", str(out)])
    assert again.exit_code == 2 and "not empty" in again.stderr
    assert os.path.exists(out / "tokenizer.json")
