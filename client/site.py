"""One site's round, free of Flower: sync to the server's version, train, form the upload."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedelta.client.state import CachedVersion, SiteState
from fedelta.common.codec import Limits
from fedelta.common.config import Settings
from fedelta.common.data import site_shares, split_site
from fedelta.common.delta import Delta, extract_delta, model_params
from fedelta.common.devices import placed, resolve_device
from fedelta.common.messages import EvaluateReply, TrainReply
from fedelta.common.methods import METHODS, MethodContext
from fedelta.common.methods.lnbias import norm_and_bias_names
from fedelta.common.model import ModelBundle
from fedelta.common.phases import Stopwatch
from fedelta.common.sparsity import base_pattern, formed_off_pattern, lock_pattern, zero_pattern
from fedelta.common.optimizers import make_optimizer
from fedelta.common.pruning import PRUNERS, Calibration, PruneRequest
from fedelta.common.pruning.calibration import calibrate, choose_global_q, with_delta_applied
from fedelta.common.pruning.recover import recover
from fedelta.common.seeding import seeded
from fedelta.common.tasks import Task, task_for
from fedelta.common.budget import fit_budget
from fedelta.common.upload import Pruned, encode_upload, finish_upload, prune_target, upload_binding, upload_seed
from fedelta.common.versions import FROM_SNAPSHOT, Downlink, VersionMismatch, apply_downlink


@dataclass(frozen=True)
class SiteData:
    """A site's examples (of whatever form its task reads): train, test, optional validation split."""

    train: Any
    test: Any
    num_labels: int
    validation: Any = None

    def with_validation(self, fraction: float, seed: int) -> SiteData:
        """A copy whose training examples lose a ``fraction`` to a local validation split."""
        train_idx, val_idx = split_site(list(range(len(self.train))), fraction, seed)
        return SiteData(self.train.subset(train_idx), self.test, self.num_labels, self.train.subset(val_idx))


def simulated_site_data(settings: Settings, index: int, num_sites: int) -> SiteData:
    """Site ``index``'s share (of ``num_sites``) of the configured corpus, after the server's hold-out."""
    if not 0 <= index < num_sites:
        raise ValueError(f"site index {index} is outside 0..{num_sites - 1}")
    corpus = task_for(settings).load_data()
    mine = site_shares(corpus, settings.data, num_sites, settings.seed)[index]
    if settings.data.max_site_examples:
        mine = mine[: settings.data.max_site_examples]
    train_idx, test_idx = split_site(mine, settings.data.site_test_fraction, settings.seed + index)
    return SiteData(corpus.subset(train_idx), corpus.subset(test_idx), len(corpus.label_names))


class Site:
    """A site with its settings, name, cache folder and local data.

    With ``keep_weights`` (for a process that serves the site message after
    message), the weights of its cached version stay in memory too, and a sync
    reads the cache file only when its header names another version (another
    process moved it on); that costs one copy of the model's weights.
    """

    def __init__(self, settings: Settings, name: str, cache_dir: Path, data: SiteData, *,
                 keep_weights: bool = False) -> None:
        self.settings = settings
        self.name = name
        self.state = SiteState(cache_dir, journal=keep_weights)
        self.keep_weights = keep_weights
        self._held: CachedVersion | None = None
        self._reader: ModelBundle | None = None  # a model that only reads, lent the held weights
        self.task: Task = task_for(settings)
        self.pruner = PRUNERS.get(settings.prune.name)
        if self.pruner.needs_labels(settings.prune) and data.validation is None:
            data = data.with_validation(settings.data.site_test_fraction, settings.seed + 1)
        self.data = data

    def sync(self, downlink: Downlink, *, for_training: bool = True) -> tuple[ModelBundle, int, str]:
        """Load the model at the downlink's target version, verified by hash, and cache it.

        Without ``for_training`` (the model is only read), a model starting
        from the weights held in memory takes those tensors themselves instead
        of a copy; applying the downlink then moves the held weights on with
        it, and a failure lets them go (the file still has the version). Such
        a reading model (or one built for a downlink from version 0 or a
        snapshot, whose weights are then held) is kept and lent the held
        weights again next time instead of being built again. A model for
        training is always new: the kept reading model, lent the held
        weights, copied, where the downlink starts from the held version;
        else one built.
        """
        cached = self.cached_version()
        start: CachedVersion | None = None  # the version the downlink starts from, when not version 0
        lent = False
        if downlink.base_version not in (FROM_SNAPSHOT, 0):
            if cached is None or cached.version != downlink.base_version:
                held = "nothing" if cached is None else f"version {cached.version}"
                raise VersionMismatch(f"site {self.name} holds {held}; the downlink starts at {downlink.base_version}")
            start, lent = cached, not for_training and cached is self._held
        copied = start is not None and not lent and start is self._held and self._reader is not None
        if copied:
            bundle = self._held_model()
        else:
            bundle = (self._reader if lent else None) or self.task.load_model(self.data.num_labels, self.settings.seed)
        if lent:
            self._reader = bundle
        limits = Limits.for_model(bundle.num_params())
        if start is not None and not copied:
            with torch.no_grad():
                for name, parameter in bundle.model.named_parameters():
                    if lent:
                        parameter.data = start.params[name]
                    else:
                        parameter.copy_(start.params[name])
        params = model_params(bundle.model)
        try:
            sha = apply_downlink(params, downlink, limits, params_sha=None if start is None else start.sha)
        except BaseException:
            if lent:
                self._held = None
            raise
        if cached is None or cached.version != downlink.target_version:
            try:
                self.state.advance(downlink, params)
            except BaseException:
                self._held = None  # lent, they are the target's weights now; the folder says what is cached
                raise
            if self.keep_weights:
                reading = not for_training  # a reading model built here is kept, its weights held
                self._held = CachedVersion(downlink.target_version, sha, params if reading else self._copy_held(params))
                if reading:
                    self._reader = bundle
        return bundle, downlink.target_version, sha

    def _held_model(self) -> ModelBundle:
        """A new model at the held version: the reading model, lent the held weights, copied whole (one copy of
        the weights, where building a model reads them from its files before they are overwritten)."""
        reader, held = self._reader, self._held
        with torch.no_grad():
            for name, parameter in reader.model.named_parameters():
                parameter.data = held.params[name]
        return ModelBundle(copy.deepcopy(reader.model), reader.tokenizer, list(reader.head))

    def _copy_held(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of ``params`` to hold, written over the tensors held before where they fit."""
        before = self._held.params if self._held is not None else {}
        copied = {}
        with torch.no_grad():
            for name, value in params.items():
                spare = before.get(name)
                fits = spare is not None and spare.shape == value.shape and spare.dtype == value.dtype
                copied[name] = spare.copy_(value) if fits else value.detach().clone()
        return copied

    def cached_version(self) -> CachedVersion | None:
        """The version in the site's cache, checked by hash: the one in memory while the file still names it."""
        if self._held is not None and self.state.version_on_disk() == (self._held.version, self._held.sha):
            return self._held
        cached = self.state.load_version()
        self._held = cached if self.keep_weights else None
        return cached

    def method_context(self, head: list[str], genesis_sha: str) -> MethodContext:
        def genesis() -> dict[str, torch.Tensor]:
            bundle = self.task.load_model(self.data.num_labels, self.settings.seed)
            return model_params(bundle.model)

        settings = self.settings
        options = settings.options_for(settings.method.name)
        return MethodContext(settings.method, head, genesis_sha, genesis, self.state.memo, options,
                             self.task.peft_task_type)

    def train_round(self, server_round: int, downlink: Downlink, genesis_sha: str = "") -> TrainReply:
        """Sync, train, prune and encode; every random draw follows the run's seed, the round and the site."""
        with seeded(upload_seed(self.settings.seed, server_round, self.name)):
            return self._train_round(server_round, downlink, genesis_sha)

    def _train_round(self, server_round: int, downlink: Downlink, genesis_sha: str) -> TrainReply:
        watch = Stopwatch()
        settings = self.settings
        bundle, version, sha = self.sync(downlink)
        watch.lap("sync")
        model, params = bundle.model, model_params(bundle.model)
        method = METHODS.get(settings.method.name)
        context = self.method_context(bundle.head, genesis_sha)
        resolver = method.resolver(context, params) if settings.feedback.enabled else None
        with seeded(upload_seed(settings.seed, server_round, self.name)):  # whichever way the model was obtained
            attachment = method.attach(model, context)
        pattern = base_pattern(settings.model.sparse_base, context)
        lock_pattern(model, pattern)
        before = {name: params[name].clone() for name in attachment.touched}
        with placed(model, resolve_device(settings.local.device)):
            optimizer = make_optimizer(model, attachment.trainable, bundle.head, settings.local, settings.optimizer)
            result = self.task.train(
                bundle, self.data.train, optimizer, steps=settings.local.steps,
                seed=upload_seed(settings.seed, server_round, self.name),
            )
        watch.lap("train")
        formed = formed_off_pattern(attachment.formed(), pattern)
        attachment.merge()
        zero_pattern(model_params(model), pattern)
        dense_names = [name for name in attachment.touched if name not in formed]
        delta = extract_delta(model_params(model), before, dense_names)
        seed = upload_seed(settings.seed, server_round, self.name)
        calibration = self.calibration(bundle, before, delta, seed)
        recovering = frozenset(norm_and_bias_names(model)) & delta.keys() if settings.prune.recover_steps else frozenset()
        residual = self.state.load_residual()

        def pruned_at(keep: float | None) -> Pruned:
            return prune_target(delta, residual, settings, seed=seed, calibration=calibration, keep_dense=recovering,
                                keep=keep)

        binding = upload_binding(server_round, self.name)
        budget_metrics: dict[str, float] = {}
        payload = None
        if settings.upload.budget_bytes:
            fitted = fit_budget(pruned_at, lambda tried: encode_upload(tried, settings, base=sha, formed=formed,
                                                                       binding=binding),
                                settings.upload.budget_bytes)
            pruned, payload = fitted.pruned, fitted.payload
            budget_metrics = {"budget-keep": fitted.keep, "budget-tries": float(fitted.tries)}
        else:
            pruned = pruned_at(None)
        if recovering:
            pruned = pruned.with_dense(recover(
                self.task, bundle, self.data.train, base=before, pruned=pruned.delta, names=recovering,
                head=bundle.head, settings=settings, seed=seed + 1,
            ))
        upload = finish_upload(
            pruned, settings, base=sha, limits=Limits.for_model(bundle.num_params()), formed=formed, resolver=resolver,
            binding=binding, payload=payload,
        )
        self.state.save_residual(upload.residual)
        watch.lap("encode")
        metrics = {
            "num-examples": float(len(self.data.train)),
            "train-loss": result.loss,
            "train-examples": float(result.examples),
            "upload-bytes": float(len(upload.payload)),
            "kept-values": float(upload.sent.count()),
            **upload.metrics,
            **budget_metrics,
            "downlink-bytes": float(downlink.size()),
            "seconds": watch.elapsed(),
            **watch.site_metrics(),
        }
        return TrainReply(self.name, version, sha, upload.payload, metrics)

    def calibration(
        self, bundle: ModelBundle, before: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], seed: int
    ) -> Calibration | None:
        """What the pruner reads besides the delta: layer inputs when it needs inputs; when it needs
        labels (and a validation split exists), the global q chosen on that split."""
        validation = self.data.validation if self.pruner.needs_labels(self.settings.prune) else None
        if not (self.pruner.needs_inputs or validation):
            return None
        inputs = self.layer_inputs(bundle, seed) if self.pruner.needs_inputs else {}
        q = self.global_q(bundle, validation, before, delta, seed) if validation else None
        return Calibration(inputs, q)

    def layer_inputs(self, bundle: ModelBundle, seed: int) -> dict[str, torch.Tensor]:
        """Inputs of every linear layer on an unlabelled batch of ``prune.calibration-size`` training texts."""
        texts = self.task.calibration_texts(bundle, self.data.train, self.settings.prune.calibration_size, seed)
        return dict(calibrate(bundle.model, bundle.tokenizer, texts, max_length=self.settings.model.max_length).inputs)

    def global_q(
        self, bundle: ModelBundle, validation: Any, before: dict[str, torch.Tensor], delta: dict[str, torch.Tensor],
        seed: int,
    ) -> float:
        """DAREx-q's one q for the whole delta: the grid value scoring best on the ``validation`` split."""
        prune = self.settings.prune
        params = model_params(bundle.model)

        def score(pruned: Delta) -> tuple[float, float]:
            def run() -> tuple[float, float]:
                return self.task.evaluate(bundle, validation).score()

            return with_delta_applied(params, before, pruned, run)

        return choose_global_q(delta, PruneRequest(prune.keep, seed), score, min_size=prune.min_size)

    def evaluate_round(self, downlink: Downlink) -> EvaluateReply:
        """Sync to the downlink's version and score it on the local test split."""
        watch = Stopwatch()
        bundle, version, sha = self.sync(downlink, for_training=False)
        watch.lap("sync")
        with placed(bundle.model, resolve_device(self.settings.local.device)):
            scores = self.task.evaluate(bundle, self.data.test).metrics()
        watch.lap("evaluate")
        metrics = {**scores, "downlink-bytes": float(downlink.size()), **watch.site_metrics()}
        return EvaluateReply(self.name, version, sha, metrics)
