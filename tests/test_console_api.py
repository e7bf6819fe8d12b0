"""The console's JSON API and actions against a real smoke simulation (see console_harness.py)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sqlite3
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from console_harness import ROUNDS, TOKEN, call
from rounds import assert_phases_add_up

from fedelta.client.state import SiteState
from fedelta.common.delta import model_params, state_hash
from fedelta.common.report import read_rows
from fedelta.server.console.app import create_app

pytestmark = pytest.mark.slow


def _db(state: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{(state / 'store.sqlite').as_uri()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def test_actions_without_the_token_are_refused_and_change_nothing(live_console):
    refused = live_console.seen["refused"]
    assert [status for status, _ in refused] == [401, 401]
    assert all(body == {"ok": False, "error": "a valid token is required for actions"} for _, body in refused)
    assert live_console.seen["controls_after_refused"] == []

    before = live_console.get("/api/actions")
    for path, body in (("/api/actions/resume", {}), ("/api/actions/rollback", {"version": 0})):
        assert live_console.post(path, body, token=None)[0] == 401
    assert live_console.get("/api/actions") == before


def test_pause_waits_after_the_current_round_and_rollback_and_resume_take_effect(live_console):
    seen = live_console.seen
    assert seen["pause"][0] == seen["rollback"][0] == seen["resume"][0] == 202
    paused = seen["paused"]
    paused_after = paused["server"]["round"]
    assert paused["server"]["paused"] and paused["head"]["version"] == paused_after
    assert [(r["round"], r["state"]) for r in seen["rounds_while_paused"]] == [(n, "finished") for n in range(paused_after + 1)]

    target = paused_after - 1
    rollback = seen["rolled_back"]
    assert rollback["state"] == "done" and rollback["result"] == paused_after + 1
    assert seen["overview_after_rollback"]["head"]["version"] == paused_after + 1
    assert seen["simulation_rc"] == 0

    with _db(live_console.state) as db:
        versions = {row["id"]: row for row in db.execute("SELECT * FROM versions")}
    made = versions[paused_after + 1]
    assert (made["parent"], made["kind"], made["sha256"]) == (paused_after, "rollback", versions[target]["sha256"])
    assert sorted(versions) == list(range(ROUNDS + 2))
    for later in range(paused_after + 2, ROUNDS + 2):
        assert (versions[later]["parent"], versions[later]["kind"]) == (later - 1, "merged")

    rows = read_rows(live_console.out)
    assert [row["round"] for row in rows] == list(range(ROUNDS + 1))
    assert [row["version"] for row in rows][paused_after + 1:] == list(range(paused_after + 2, ROUNDS + 2))
    assert all(row["rejected"] == 0 for row in rows)
    final = versions[ROUNDS + 1]["sha256"]
    for site_dir in sorted((live_console.out / "sites").iterdir()):
        assert SiteState(site_dir).load_version().sha == final
    outcomes = [(c["action"], c["state"]) for c in reversed(live_console.get("/api/actions"))]
    assert outcomes == [("pause", "done"), ("rollback", "done"), ("resume", "done")]


def test_overview_and_rounds_match_the_run(live_console):
    summary = json.loads((live_console.out / "summary.json").read_text())
    rows = read_rows(live_console.out)
    overview = live_console.get("/api/overview")
    assert overview["head"]["version"] == ROUNDS + 1 == summary["final_version"]
    assert overview["head"]["sha256"] == summary["final_version_sha256"]
    for key in ("total_upload_bytes", "total_downlink_bytes", "total_dense_update_bytes", "upload_reduction"):
        assert overview[key] == summary[key]
    assert overview["latest_accuracy"] == summary["final_accuracy"]
    assert overview["rejected"] == 0 and overview["recent_sites"] == ["site-0", "site-1"]
    assert overview["server"]["state"] == "finished" and not overview["server"]["server_running"]

    api_rows = live_console.get("/api/rounds")
    assert [r["round"] for r in api_rows] == [r["round"] for r in rows]
    for api, row in zip(api_rows, rows):
        assert {key: api[key] for key in row} == row
        assert_phases_add_up(api)
        assert api["accepted"] == row["sites"] - row["rejected"]
        assert api["reduction"] == (row["dense_update_bytes"] / row["upload_bytes"] if row["upload_bytes"] else 0.0)
    assert call(live_console.url + "/healthz") == (200, {"ok": True, "head": ROUNDS + 1, "state": "finished"})


def test_sites_versions_and_rejections_match_the_store(live_console):
    with _db(live_console.state) as db:
        uploads = {row["site"]: (row["n"], row["total"]) for row in
                   db.execute("SELECT site, COUNT(*) AS n, SUM(upload_bytes) AS total FROM site_rounds GROUP BY site")}
        held = {row["site"]: row["version"] for row in db.execute("SELECT site, version FROM sites")}
        versions = [dict(row) for row in db.execute("SELECT * FROM versions ORDER BY id DESC")]
        rejections = db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
    sites = live_console.get("/api/sites")
    assert {s["site"]: (s["rounds"], s["upload_bytes"]) for s in sites} == uploads
    assert {s["site"]: s["version"] for s in sites} == held == {"site-0": ROUNDS + 1, "site-1": ROUNDS + 1}
    assert all(s["behind"] == 0 and s["mean_metrics"]["num-examples"] > 0 for s in sites)

    api = live_console.get("/api/versions")
    assert [(v["version"], v["parent"], v["sha256"], v["delta_bytes"]) for v in api] == [
        (v["id"], v["parent"], v["sha256"], v["blob_bytes"]) for v in versions
    ]
    rolled = [v for v in api if v["kind"] == "rollback"]
    assert len(rolled) == 1 and rolled[0]["rollback_of"] == live_console.seen["paused"]["head"]["version"] - 1
    assert live_console.get("/api/rejections") == [] and rejections == 0


def test_delta_download_is_the_stored_blob(live_console):
    with _db(live_console.state) as db:
        blob = db.execute("SELECT blob FROM versions WHERE id = 1").fetchone()[0]
    status, data = call(live_console.url + "/versions/1/delta", raw=True)
    assert status == 200 and hashlib.sha256(data).hexdigest() == blob
    assert data == (live_console.state / "blobs" / blob).read_bytes()
    assert call(live_console.url + "/versions/99/delta", raw=True)[0] == 404


def test_export_is_a_hugging_face_folder_with_the_versions_weights(live_console, tmp_path):
    from transformers import AutoModelForSequenceClassification

    head = live_console.get("/api/overview")["head"]
    status, data = call(live_console.url + f"/versions/{head['version']}/export.zip", token=TOKEN, raw=True)
    assert status == 200
    zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path)
    folder = tmp_path / f"fedelta-v{head['version']}"
    assert json.loads((folder / "fedelta.json").read_text())["sha256"] == head["sha256"]
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert state_hash(model_params(model)) == head["sha256"]
    with _db(live_console.state) as db:
        labels = json.loads(db.execute("SELECT value FROM meta WHERE key = 'labels'").fetchone()[0])
    assert model.config.id2label == dict(enumerate(labels))


def test_an_export_needs_the_token_as_a_header_or_a_form_field(live_console):
    url = live_console.url + "/versions/1/export.zip"
    assert call(url, raw=True)[0] == 401 and call(url, token="wrong", raw=True)[0] == 401
    form = urllib.parse.urlencode({"token": TOKEN}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=form), timeout=60) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"] == "application/zip"
        names = zipfile.ZipFile(io.BytesIO(reply.read())).namelist()
    assert "fedelta-v1/model.safetensors" in names and "fedelta-v1/fedelta.json" in names


def test_a_foreign_host_and_a_large_body_are_refused_by_the_running_console(live_console):
    port = live_console.url.rsplit(":", 1)[1]
    foreign = f"GET /api/overview HTTP/1.1\r\nHost: rebound.example:{port}\r\nConnection: close\r\n\r\n"
    assert _first_bytes(live_console, foreign).startswith(b"HTTP/1.1 403")
    before = live_console.get("/api/actions")
    huge = "POST /api/actions/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 629145600\r\n\r\n"
    assert _first_bytes(live_console, huge).startswith(b"HTTP/1.1 413")  # none of the 600 MiB was sent
    assert live_console.get("/api/actions") == before


def _first_bytes(live_console, request: str) -> bytes:
    """Send ``request`` (its head only) to the console over a socket; the first bytes of the reply."""
    with socket.create_connection(("127.0.0.1", int(live_console.url.rsplit(":", 1)[1])), timeout=30) as client:
        client.sendall(request.encode())
        return client.recv(4096)


def test_without_a_token_file_actions_are_off(live_console):
    client = create_app(live_console.state, None).test_client()
    reply = client.post("/api/actions/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 403 and "--token-file" in reply.get_json()["error"]
    page = client.post("/actions/pause", data={"token": TOKEN})
    assert page.status_code == 403 and b"without --token-file" in page.data
    assert client.get("/api/actions").get_json() == live_console.get("/api/actions")


def test_a_missing_store_answers_503(tmp_path):
    client = create_app(tmp_path, TOKEN).test_client()
    assert client.get("/healthz").status_code == 503
    page = client.get("/")
    assert page.status_code == 503 and b"no store.sqlite" in page.data
