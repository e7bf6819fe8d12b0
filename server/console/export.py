"""Any committed version as a Hugging Face model folder in a zip: rebuilt from the store, checked by hash."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from fedelta.server.store import StoreError, VersionStore


def export_version(store: VersionStore, version_id: int, into: BinaryIO) -> str:
    """Write ``fedelta-v<N>/`` (config, safetensors weights, tokenizer, fedelta.json) as a zip into ``into``:
    a sequence classifier or a causal LM, as the run's task builds it.

    Version 0 is built from the settings the server recorded in the store (as
    every party builds it); the version's snapshot and merged deltas are then
    replayed onto it, each checked by hash. Returns the folder's name.
    """
    from fedelta.common.codec import Limits
    from fedelta.common.config import Settings
    from fedelta.common.delta import model_params, state_hash
    from fedelta.common.tasks import task_for
    from fedelta.server.resume import replay_to

    version = store.version(version_id)
    recorded, labels = store.read_meta("settings"), store.read_meta("labels")
    if recorded is None or labels is None:
        raise StoreError(f"{store.root} does not record the settings that build version 0; it cannot be exported")
    settings = Settings.from_run_config(recorded)
    bundle = task_for(settings).load_model(len(labels), settings.seed)
    params = model_params(bundle.model)
    replay_to(store, version.id, params, Limits.for_model(bundle.num_params()))
    if state_hash(params) != version.sha:
        raise StoreError(f"version {version.id} rebuilds to weights other than its recorded hash")
    if bundle.head:  # a classifier names its outputs
        bundle.model.config.id2label = dict(enumerate(labels))
        bundle.model.config.label2id = {label: index for index, label in enumerate(labels)}
    name = f"fedelta-v{version.id}"
    with tempfile.TemporaryDirectory(prefix="fedelta-export-") as work:
        folder = Path(work) / name
        bundle.model.save_pretrained(folder)
        bundle.tokenizer.save_pretrained(folder)
        provenance = {"version": version.id, "parent": version.parent, "round": version.round, "kind": version.kind,
                      "sha256": version.sha, "settings": recorded}
        (folder / "fedelta.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        with zipfile.ZipFile(into, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(work).as_posix())
    return name
