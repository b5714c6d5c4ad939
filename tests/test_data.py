import os
import time

import pytest

from conftest import write_archive, write_stanford_folder, write_table
from sentiment.data import (classes, fingerprint, iter_rows, load_source, order_labels, split_validation,
                            undecodable_report)
from sentiment.errors import SentimentError


def test_archive_and_folder_give_the_same_rows(stanford_archive, stanford_folder):
    from_archive = load_source(stanford_archive)
    from_folder = load_source(stanford_folder.parent)  # the folder that holds aclImdb/
    assert set(from_archive) == {"train", "test", "unsup"}
    assert [len(from_archive[s]) for s in ("train", "test", "unsup")] == [40, 20, 6]
    for split in from_archive:
        assert from_archive[split]["text"] == from_folder[split]["text"]
        assert from_archive[split]["label"] == from_folder[split]["label"]
    assert sorted(set(from_archive["train"]["label"])) == [0, 1]
    assert set(from_archive["unsup"]["label"]) == {-1}


def test_labels_follow_the_folder_names(stanford_archive):
    train = load_source(stanford_archive)["train"]
    for row in train:
        cue_positive = any(w in row["text"].lower() for w in ("great", "wonderful", "loved", "superb",
                                                              "brilliant", "moving"))
        assert row["label"] == int(cue_positive)


def test_second_load_reuses_the_cache_without_reading_reviews(tmp_path):
    archive = write_archive(write_stanford_folder(tmp_path / "src"), tmp_path / "a.tar.gz")
    first = load_source(archive)
    files = [f["filename"] for f in first["train"].cache_files]
    assert files, "the archive's rows should live in a datasets cache file"
    stamp = {f: os.stat(f).st_mtime_ns for f in files}
    time.sleep(0.01)
    os.utime(archive)  # a new timestamp, same content: still the same source
    second = load_source(archive)
    assert [f["filename"] for f in second["train"].cache_files] == files
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamp
    # New content is a new source.
    write_archive(write_stanford_folder(tmp_path / "src2", n_train=10), archive)
    assert len(load_source(archive)["train"]) == 10


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_table_files_with_every_label_spelling(tmp_path, suffix):
    spellings = [0, 1, "neg", "pos", "Negative", "POSITIVE", "0", "1"]
    rows = [{"review": f"text {i}", "sentiment": s, "extra": i} for i, s in enumerate(spellings)]
    if suffix in (".csv", ".tsv"):
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
    if suffix == ".parquet":
        rows = [{**r, "sentiment": str(r["sentiment"])} for r in rows]
    path = write_table(tmp_path / f"reviews{suffix}", rows)
    train = load_source(path, text_column="review", label_column="sentiment")["train"]
    assert train["label"] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert train["text"] == [f"text {i}" for i in range(8)]


def test_test_split_from_a_second_file(tmp_path):
    train = write_table(tmp_path / "train.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    test = write_table(tmp_path / "test.jsonl", [{"text": "fine", "label": "pos"}])
    loaded = load_source(train, test_src=test)
    assert len(loaded["train"]) == 2 and loaded["test"]["text"] == ["fine"]


def test_labels_come_from_the_data_in_a_documented_order(tmp_path):
    path = tmp_path / "three.csv"
    path.write_text("text,label\ngood,positive\nmeh,neutral\nbad,negative\nfine,positive\n")
    train = load_source(path)["train"]
    assert classes({"train": train}) == ("negative", "neutral", "positive")
    assert list(train["label"]) == [2, 1, 0, 2]
    stars = write_table(tmp_path / "stars.jsonl", [{"text": t, "label": v} for t, v in
                                                   (("a", 10), ("b", 2), ("c", 7.0), ("d", "2"))])
    loaded = load_source(stars)
    assert classes(loaded) == ("2", "7", "10") and list(loaded["train"]["label"]) == [2, 0, 1, 0]
    assert classes(load_source(stars, labels=["10", "7", "2"])) == ("10", "7", "2")
    assert order_labels({"b", "a", "c"}) == ("a", "b", "c")


def test_a_label_outside_the_given_classes_names_its_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\ngood,pos\nmeh,maybe\nbad,neg\n")
    with pytest.raises(SentimentError) as err:
        load_source(path, labels=["negative", "positive"])
    assert str(err.value) == (f"{path}:3: label 'maybe' in column 'label' is not one of the classes "
                              "negative, positive")


def test_a_missing_label_names_its_row(tmp_path):
    path = tmp_path / "gap.csv"
    path.write_text("text,label\ngood,pos\nmeh,\nbad,neg\n")
    with pytest.raises(SentimentError, match=rf"^{path}:3: no label in column 'label' \(got ''\)"):
        load_source(path)


def test_the_archive_keeps_each_review_s_rating(stanford_archive):
    loaded = load_source(stanford_archive, label_column="rating")
    assert classes(loaded) == ("2", "8")  # the test data's ratings: 2 for negative, 8 for positive
    polarity = load_source(stanford_archive)
    assert [classes(loaded)[i] for i in loaded["train"]["label"]] == \
        ["8" if i else "2" for i in polarity["train"]["label"]]
    with pytest.raises(SentimentError, match="no label column 'stars' \\(its label columns: label, rating\\)"):
        load_source(stanford_archive, label_column="stars")


def test_missing_column_names_the_file_and_the_columns_it_has(tmp_path):
    path = write_table(tmp_path / "r.csv", [{"body": "x", "label": "1"}])
    with pytest.raises(SentimentError, match=r"r.csv: no text column 'text' \(columns: body, label\)"):
        load_source(path)


def test_malformed_rows_say_file_and_line(tmp_path):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text('text,label\ngood,1\n"bad,0,extra\n')
    with pytest.raises(SentimentError, match=r"r.csv:3: malformed csv row"):
        load_source(csv_path)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(SentimentError, match=r"r.jsonl:2: malformed json line"):
        load_source(jsonl)


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"text,label\ngood \xff\xfe film,1\nplain,0\n")
    loaded = load_source(path)
    assert loaded["train"]["text"][0] == "good \ufffd\ufffd film"
    assert len(loaded["train"]) == 2  # the row is kept, not dropped
    assert undecodable_report(loaded) == "note: undecodable bytes were replaced with U+FFFD (train: 2 bytes in 1 reviews)"


def test_csv_row_numbers_count_multiline_fields(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('text,label\n"two\nlines",1\nok,0\n')
    assert [r.where for r in iter_rows(path)] == [f"{path}:2", f"{path}:4"]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(SentimentError, match="nope.csv: no such file or directory"):
        load_source(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SentimentError, match="empty.csv: empty file"):
        load_source(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(SentimentError, match="train split is empty"):
        load_source(tmp_path / "header.csv")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SentimentError, match="unsupported data source"):
        load_source(tmp_path / "notes.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(SentimentError, match="Stanford layout"):
        load_source(tmp_path / "folder")


def test_hub_dataset_offline_says_how_to_use_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SentimentError, match="Pass a local copy instead: --data"):
        load_source("stanfordnlp/imdb")


def test_validation_is_a_seeded_part_of_train_only(stanford_archive):
    loaded = load_source(stanford_archive)
    train, val = split_validation(loaded["train"], 0.25, seed=3)
    again_train, again_val = split_validation(loaded["train"], 0.25, seed=3)
    assert len(val) == 10 and len(train) == 30
    assert val["text"] == again_val["text"]
    assert not set(val["text"]) & set(train["text"]) or len(set(loaded["train"]["text"])) < 40
    assert set(val["text"]) <= set(loaded["train"]["text"])
    other = split_validation(loaded["train"], 0.25, seed=4)[1]
    assert other["text"] != val["text"]


def test_fingerprint_follows_content(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("text,label\nx,1\n")
    first = fingerprint(a)
    a.write_text("text,label\ny,1\n")
    assert fingerprint(a) != first
