"""A round's merged delta from its held uploads: bounded weights, the weighted-norm check, an
accumulation that no weight can overflow, and a merged delta that is finite or formed again without
its largest contributor."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedelta.common.aggregation import make_aggregator
from fedelta.common.config import Settings
from fedelta.common.delta import Delta, all_finite
from fedelta.server.validation import bounded_weights, median, norm_outliers, rejection_reason, weighted_norms

Admit = Callable[[bytes], Delta]
Reject = Callable[[str, str], None]


@dataclass(frozen=True)
class HeldUpload:
    """An update that passed validation, kept as its bytes until the round is committed."""

    site: str
    payload: bytes
    weight: float
    norm: float


@dataclass(frozen=True)
class Share:
    """A held upload as it goes into the merge: its bounded weight, weighted norm and any clip note."""

    upload: HeldUpload
    weight: float
    contribution: float
    note: str = ""


@dataclass(frozen=True)
class History:
    """What earlier rounds merged: each site's largest weight, and every merged update's weighted norm."""

    weights: Mapping[str, float]
    contributions: Sequence[float]


@dataclass(frozen=True)
class Merged:
    """The round's merged delta and the shares it was formed from, in site-name order."""

    delta: Delta
    shares: list[Share]


def shares(held: Sequence[HeldUpload], history: History, settings: Settings, reject: Reject) -> list[Share]:
    """Bound the held uploads' weights, then reject the weighted-norm outliers (when the check is on)."""
    check = settings.validate
    weights = bounded_weights({upload.site: upload.weight for upload in held}, history.weights,
                              max_ratio=check.max_weight_ratio, max_growth=check.max_weight_growth)
    norms = weighted_norms({upload.site: upload.norm for upload in held},
                           {site: weight.value for site, weight in weights.items()})
    earlier = median(history.contributions) if history.contributions else None
    outliers = norm_outliers([norms[upload.site] for upload in held], check.max_norm_ratio, earlier)
    kept = []
    for index, upload in enumerate(held):
        if index in outliers:
            reject(upload.site, outliers[index])
        else:
            kept.append(Share(upload, weights[upload.site].value, norms[upload.site], weights[upload.site].note))
    return kept


def scaled_weights(weights: Sequence[float]) -> list[float]:
    """Each weight over the largest, then over the sum of those: they sum to 1 up to rounding (so FedAvg has
    nothing left to divide) and no weight can overflow the accumulator."""
    largest = max(weights, default=1.0)
    total = sum(weight / largest for weight in weights)
    return [weight / largest / total for weight in weights]


def aggregate(
    chosen: Sequence[Share], settings: Settings, admit: Admit, reject: Reject, server_round: int
) -> tuple[Delta | None, list[Share]]:
    """Decode the shares again and add them in order, their weights scaled to sum to at most 1 (so no
    weight can overflow the accumulator); the merged delta (``None`` when fewer than
    ``federation.min-sites`` were added) and the shares added."""
    aggregator = make_aggregator(settings.aggregate, settings.seed)
    added = []
    for share, weight in zip(chosen, scaled_weights([share.weight for share in chosen])):
        try:
            delta = admit(share.upload.payload)
        except Exception as error:  # noqa: BLE001 - whatever an upload provokes rejects it; the round goes on
            reject(share.upload.site, rejection_reason(error))
            continue
        aggregator.add(delta, weight, key=f"{server_round}|{share.upload.site}")
        added.append(share)
    if len(added) < settings.federation.min_sites:
        return None, added
    return aggregator.result(), added


def finite(delta: Delta) -> bool:
    return all(all_finite(entry.to_dense()) for entry in delta.entries.values())


def merge(
    held: Sequence[HeldUpload], history: History, settings: Settings, *, admit: Admit, reject: Reject,
    server_round: int,
) -> Merged | None:
    """The merged delta of ``held`` (added in site-name order, so it does not depend on the order in which
    sites replied), or ``None`` when too few uploads are left.

    A merged delta that is not finite is formed again without the share with
    the largest weighted norm, which is rejected.
    """
    chosen = shares(sorted(held, key=lambda upload: upload.site), history, settings, reject)
    while True:
        delta, chosen = aggregate(chosen, settings, admit, reject, server_round)
        if delta is None:
            return None
        if finite(delta):
            return Merged(delta, chosen)
        worst = max(chosen, key=lambda share: share.contribution)
        reject(worst.upload.site, "the merged delta is not finite with this update")
        chosen = [share for share in chosen if share is not worst]
