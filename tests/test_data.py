import json
from pathlib import Path

import pytest

from fedelta.common.config import DataSettings
from fedelta.common.data import hold_out, load_corpus, load_file, partition, site_shares, split_site


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(DataSettings())


def test_rotten_tomatoes_drops_plot_rows(corpus):
    assert len(corpus) == 7403 + 5405
    assert corpus.label_names == ("rotten", "fresh") and sum(corpus.labels) == 7403


@pytest.mark.parametrize("how", ["movie", "dirichlet", "iid"])
def test_partitions_are_disjoint_and_cover_the_pool(corpus, how):
    pool, test = hold_out(corpus, 1000, seed=0)
    assert len(test) == 1000 and not set(pool) & set(test)
    shares = partition(corpus, pool, 4, how, alpha=0.5, seed=0)
    assert sorted(i for share in shares for i in share) == pool
    assert all(shares)


def test_movie_partition_keeps_each_movie_at_one_site(corpus):
    pool, _ = hold_out(corpus, 1000, seed=0)
    shares = partition(corpus, pool, 4, "movie", alpha=0.5, seed=0)
    owner = {}
    for site, share in enumerate(shares):
        for i in share:
            assert owner.setdefault(corpus.groups[i], site) == site
    sizes = [len(s) for s in shares]
    assert max(sizes) < 1.2 * min(sizes)


def test_site_split_is_disjoint():
    train, test = split_site(list(range(100)), 0.1, seed=1)
    assert len(test) == 10 and sorted(train + test) == list(range(100))


def test_csv_and_jsonl_files(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    corpus = load_file(csv_file)
    assert corpus.label_names == ("neg", "pos") and corpus.labels == [1, 0, 1]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": l}) for t, l in [("a", 0), ("b", 2)]))
    assert load_file(jsonl).labels == [0, 2] and load_file(jsonl).label_names == ("0", "1", "2")


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.csv")
    no_label = tmp_path / "x.csv"
    no_label.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_file(no_label)
    broken = tmp_path / "x.jsonl"
    broken.write_text('{"text": "a", "label": 0}\n{oops\n')
    with pytest.raises(ValueError, match=":2: not JSON"):
        load_file(broken)


def test_number_labels_are_class_indices_and_other_numbers_are_refused(tmp_path):
    def write(labels: list) -> Path:
        path = tmp_path / "labels.jsonl"
        path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": label}) for i, label in enumerate(labels)))
        return path

    assert load_file(write([0, 1, 1.0, "0"])).labels == [0, 1, 1, 0]
    assert load_file(write([0, 1])).label_names == ("0", "1")
    for labels, message in (([0, 0.5], "row 2, column 'label': must be a class name or a whole-number class index, "
                                       "found 0.5"),
                            ([True, False], "row 1, .* found true"), ([0, None], "row 2, .* found null"),
                            ([0, "pos"], "mixes number labels .* with text labels \\('pos'\\)"),
                            ([0, 10**6], "has label 1000000; a whole-number label is a class index in 0..9999"),
                            ([0, -1], "has label -1")):
        with pytest.raises(ValueError, match=message):
            load_file(write(labels))


def test_partition_by_group_without_a_group_column_says_what_to_do(tmp_path):
    path = tmp_path / "no-groups.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(40)))
    corpus = load_file(path)
    with pytest.raises(ValueError, match="needs at least 4 groups for 4 sites, and the data has no group column; "
                                         "use --set data.partition=iid or dirichlet"):
        site_shares(corpus, DataSettings(path=str(path), test_size=8), 4, seed=0)
    shares = site_shares(corpus, DataSettings(path=str(path), test_size=8, partition="iid"), 4, seed=0)
    assert sorted(i for share in shares for i in share) == hold_out(corpus, 8, seed=0)[0]
