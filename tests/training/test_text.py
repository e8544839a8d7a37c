"""Text data sources, character tokenization in the graph against Python, the hashed n-grams, and a tiny text model
exported and checked for batch and length independence (built-in text only, no Debian packages)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.text_corpus import train_tiny, write_text_folder
from training.data import load_dataset
from training.textdata import dedupe, ensure_packages, hash_split, read_strfile
from training.texttokens import CLS, MAX_CHARS, PAD, START, UNK, build_alphabet, chars, encode, pad, tokenizer_graph

TRICKY = ["Hello world", "Ça va TRÈS bien", "日本語 テキスト", "emoji 😀 👍🏽!", "", "   ", "ΟΔΟΣ İstanbul",
          "tab\tnewline\nhere", " ".join(f"w{i}" for i in range(500)), "x" * 100_000, "Привет, мир", "e\u0301",
          "a", "abcd", "abcde", "x" * (MAX_CHARS - 1) + "😀🎉", f"start {START} inside"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("text"))


def test_a_folder_of_class_folders_of_txt_files_is_a_text_dataset(tmp_path):
    data = load_dataset(str(write_text_folder(tmp_path / "langs", count=10)))
    assert (data.kind, data.name, data.source, data.labels) == ("text", "langs/", "folder", ["de", "en", "ru"])
    assert len(data.X) == len(data.y) == 30 and isinstance(data.X[0], str)


def test_a_csv_with_a_text_column_is_a_text_dataset(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text('sentence,lang\n"Hello, world",en\nHallo Welt,de\nHello again,en\nHallo nochmal,de\n',
                    encoding="utf-8")
    data = load_dataset(str(path), {"text": "sentence", "target": "lang"})
    assert data.kind == "text" and list(data.X) == ["Hello, world", "Hallo Welt", "Hello again", "Hallo nochmal"]
    assert [data.labels[i] for i in data.y] == ["en", "de", "en", "de"]
    with pytest.raises(ValueError, match="text column 'missing' is not in the header"):
        load_dataset(str(path), {"text": "missing", "target": "lang"})


def test_strfile_entries_dedupe_and_a_hash_split_keeps_equal_texts_together(tmp_path):
    path = tmp_path / "cookies"
    path.write_text("First one\nsecond line\n%\nSecond\n%\n%\nFirst one second line\n", encoding="utf-8")
    entries = read_strfile(path)
    assert entries == ["First one second line", "Second", "First one second line"]
    texts, labels = dedupe(entries + ["Second"], ["en", "en", "en", "de"])
    assert (texts, labels) == (["First one second line"], ["en"])  # "Second" under two labels: dropped
    many = [f"text {i % 50}" for i in range(200)]
    train, val, test = hash_split(many, 0.2, 0.2, seed=0)
    part = {i: p for p, idx in (("train", train), ("val", val), ("test", test)) for i in idx}
    assert all(part[i] == part[i % 50] for i in range(200))
    assert [list(x) for x in hash_split(many, 0.2, 0.2, 0)] == [list(train), list(val), list(test)]


def test_a_strfile_in_a_legacy_encoding_is_decoded_when_named(tmp_path):
    path = tmp_path / "ru"
    path.write_bytes("Привет, мир\n%\n".encode("koi8-r"))
    assert read_strfile(path, "koi8-r") == ["Привет, мир"]
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_strfile(path)


def test_missing_packages_fail_with_the_exact_install_command():
    with pytest.raises(ValueError, match="apt-get install -y --no-install-recommends no-such-package-nnserve"):
        ensure_packages(["no-such-package-nnserve"])


def test_the_graph_tokenizes_exactly_as_python():
    alphabet = build_alphabet(TRICKY[:7], min_count=1)
    session = ort.InferenceSession(tokenizer_graph(alphabet).SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in [[t] for t in TRICKY] + [["", ""], ["", " "]]:
        assert np.array_equal(session.run(None, {"text": np.array(batch, dtype=object)})[0],
                              pad(encode(batch, alphabet)))
    ids = session.run(None, {"text": np.array(TRICKY, dtype=object)})[0]
    assert np.array_equal(ids, pad(encode(TRICKY, alphabet)))
    assert ids.shape == (len(TRICKY), MAX_CHARS + 1)  # truncated to 256 characters after CLS
    assert list(ids[4]) == [CLS] + [PAD] * MAX_CHARS  # the empty string: CLS alone
    assert UNK in ids[10] and START not in alphabet  # Cyrillic is not in this alphabet
    assert chars("ΟΔΟΣ İ") == list("οδοσ i")  # the C library's simple case mapping, as ONNX Runtime does
    assert chars("e\u0301😀") == ["e", "\u0301", "😀"]  # code points, not graphemes


def test_the_graph_cuts_long_strings_before_splitting_them():
    """Only the first 257 code points are split, so a batch with one 16 MB string costs little."""
    session = ort.InferenceSession(tokenizer_graph(["a", "d", "e", "h", "n", "r", "u", " "]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    batch = np.array(["Der Hund " * 1_800_000] + ["a"] * 255, dtype=object)
    ids = session.run(None, {"text": batch})[0]
    assert ids.shape == (256, MAX_CHARS + 1) and np.array_equal(ids[:1], pad(encode(batch[:1], ["a", "d", "e", "h",
                                                                                                 "n", "r", "u", " "])))


def test_hashed_ngrams_mark_padding_and_stay_in_their_table():
    import torch

    from training.architectures.text_transformer import ngram_ids

    ids = torch.tensor([[CLS, 5, 6, 7, 8], [CLS, 5, 6, PAD, PAD]])
    for n in (2, 3, 4, 5):
        grams = ngram_ids(ids, n, 101)
        assert (grams[:, :n - 1] == 0).all() and (grams[0, n - 1:] > 0).all() and (grams < 101).all()
        assert (grams[1, 3:] == 0).all()  # an n-gram that reaches into the padding is padding
    assert torch.equal(ngram_ids(ids[:1, :3], 2, 101), ngram_ids(ids[:1], 2, 101)[:, :3])  # padding after: same


def test_the_exported_text_model_matches_torch_and_ignores_batch_and_padding(tiny_run):
    from training.textexport import export_text_run
    from training.textfit import load_text_run, predict

    graph, record, onnx_metrics, alphabet, resolved = export_text_run(tiny_run)
    assert record["tokenizer_ids_equal"] and record["max_abs_diff"] <= 1e-5
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    _, _, _, model = load_text_run(tiny_run)
    texts = TRICKY + ["Der hund sieht die katze.", "Кот видит собаку."]
    together = session.run(None, {"text": np.array(texts, dtype=object)})[0]
    alone = np.concatenate([session.run(None, {"text": np.array([t], dtype=object)})[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(together, predict(model, encode(texts, alphabet)), atol=1e-5)
    assert np.allclose(together.sum(1), 1, atol=1e-5) and together.shape == (len(texts), 3)


def test_fit_and_export_commands_train_and_publish_a_text_model(tmp_path):
    from training.__main__ import main

    folder = write_text_folder(tmp_path / "langs", count=40)
    assert main(["fit", "fortunes-language", "--set", f"dataset={str(folder)!r}", "--set", "train.epochs=1",
                 "--set", "model.d_model=16", "--set", "model.nhead=2", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--name", "langs", "--models", str(tmp_path / "models")]) == 0
    assert main(["check", str(tmp_path / "models")]) == 0
