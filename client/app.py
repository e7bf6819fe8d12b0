"""The Flower ClientApp: read settings, run the site's round, reply with bytes and metrics."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedelta.client.site import Site, SiteData, simulated_site_data
from fedelta.common.config import Settings
from fedelta.common.data import label_names, split_site
from fedelta.common.phases import Stopwatch
from fedelta.common.tasks import task_for
from fedelta.common.versions import Downlink

app = ClientApp()


SITES_KEPT = 4  # simulated sites a ClientApp process keeps between messages, each with its cached version's weights
_kept: OrderedDict[tuple, Site] = OrderedDict()


def _site(context: Context) -> Site:
    """This node's site for this message.

    The Simulation Engine hands every message to one of a few long-lived
    workers, so a worker keeps the last :data:`SITES_KEPT` simulated sites it
    served (settings, data, partition and the weights of their cached version)
    and builds a site only the first time. A deployed site is built for each
    message: it reads its data file afresh, and a SuperNode starts a new
    ClientApp process per message anyway.
    """
    if "data-path" in context.node_config:
        return _build_site(context)
    key = (tuple(sorted(context.run_config.items())), tuple(sorted(context.node_config.items())))
    site = _kept.pop(key, None) or _build_site(context)
    _kept[key] = site
    while len(_kept) > SITES_KEPT:
        _kept.popitem(last=False)
    return site


def _build_site(context: Context) -> Site:
    """This node's site: settings, data, partition."""
    settings = Settings.from_run_config(context.run_config)
    node = context.node_config
    if "data-path" in node:
        name = str(node.get("site-name", f"node-{context.node_id}"))
        labels = tuple(str(node["labels"]).split(",")) if "labels" in node else label_names(settings.data)
        corpus = task_for(settings).load_file(Path(str(node["data-path"])), labels)
        train_idx, test_idx = split_site(list(range(len(corpus))), settings.data.site_test_fraction, settings.seed)
        data = SiteData(corpus.subset(train_idx), corpus.subset(test_idx), len(corpus.label_names))
    else:
        index = int(node["partition-id"])
        name = f"site-{index}"
        data = simulated_site_data(settings, index, int(node.get("num-partitions", settings.federation.num_sites)))
    if "cache-dir" in node:
        cache = Path(str(node["cache-dir"]))
    else:
        cache = Path(settings.output.site_cache or Path(settings.output.dir) / "sites") / name
    return Site(settings, name, cache, data, keep_weights="data-path" not in node)


def _say(context: Context, line: str) -> None:
    """One line per message in a deployed site's log (simulated sites stay quiet)."""
    if "data-path" in context.node_config:
        print(line, flush=True)


def _downlink(msg: Message) -> Downlink:
    return Downlink.from_fields(msg.content["downlink"])


def _built(context: Context) -> tuple[Site, dict[str, float]]:
    """This node's site and the seconds building it took, as the reply metric of phase ``setup``."""
    watch = Stopwatch()
    site = _site(context)
    watch.lap("setup")
    return site, watch.site_metrics()


@app.train()
def train(msg: Message, context: Context) -> Message:
    site, setup = _built(context)
    config = msg.content["config"]
    reply = site.train_round(int(config["server-round"]), _downlink(msg), str(config.get("genesis-sha", "")))
    _say(context, f"{site.name}: trained on version {reply.version} "
         f"({reply.sha[:12]}), loss {reply.metrics['train-loss']:.4f}, upload {len(reply.payload):,} bytes")
    content = RecordDict({"update": ConfigRecord(reply.fields()), "metrics": MetricRecord({**reply.metrics, **setup})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site, setup = _built(context)
    reply = site.evaluate_round(_downlink(msg))
    scores = ", ".join(f"local {key} {reply.metrics[key]:.4f}" for key in ("accuracy", "loss", "perplexity")
                       if key in reply.metrics)
    _say(context, f"{site.name}: now on version {reply.version} ({reply.sha[:12]}), {scores}")
    content = RecordDict({"ack": ConfigRecord(reply.fields()), "metrics": MetricRecord({**reply.metrics, **setup})})
    return Message(content=content, reply_to=msg)
