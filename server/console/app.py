"""The console's Flask application: pages, the JSON API under /api/, downloads, and token-guarded actions."""

from __future__ import annotations

import hmac
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_file, url_for

from fedelta.common.report import human_bytes
from fedelta.server import control
from fedelta.server.console import queries
from fedelta.server.console.charts import Series, bar_chart, line_chart
from fedelta.server.store import StoreError, VersionStore

PAGES = {"overview": "Overview", "rounds": "Rounds", "sites": "Sites", "versions": "Versions",
         "rejections": "Rejections", "actions": "Actions"}
REFRESH_SECONDS = 5
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ACCURACY_COLORS, BYTES_COLORS = ("#2563eb", "#f59e0b"), ("#0d9488", "#7c3aed")


class Refused(Exception):
    """An action the console will not pass on, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(state_dir: Path, token: str | None) -> Flask:
    """The console over the store in ``state_dir``; actions need ``token`` (none: actions are off)."""
    app = Flask(__name__)
    state_dir = Path(state_dir)
    exporting = threading.Lock()  # one export at a time: each rebuilds a whole model

    @contextmanager
    def reader(writable: bool = False) -> Iterator[VersionStore]:
        store = VersionStore.attach(state_dir, writable=writable)
        try:
            yield store
        finally:
            store.close()

    def read(query: Callable[[VersionStore], Any]) -> Any:
        with reader() as store:
            return query(store)

    def page(name: str, **context: Any) -> str:
        return render_template(f"{name}.html", page=name, pages=PAGES, state_dir=state_dir,
                               server=read(queries.server_state), actions_enabled=token is not None, **context)

    def act(action: str, supplied: str | None, version: int | None) -> dict[str, Any]:
        if token is None:
            raise Refused(403, "actions are off: the console was started without --token-file")
        if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
            raise Refused(401, "a valid token is required for actions")
        with reader(writable=True) as store:
            head = store.head()
            if version is not None and (head is None or version > head.id):
                raise Refused(400, f"no committed version {version} (the head is {head.id if head else 'none'})")
            try:
                return queries.control_row(control.request(store, action, version))
            except ValueError as error:
                raise Refused(400, str(error)) from None

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(StoreError)
    def no_store(error: StoreError) -> tuple[Any, int]:
        if request.path.startswith("/api/") or request.path == "/healthz":
            return jsonify(ok=False, error=str(error)), 503
        return render_template("error.html", page="", pages=PAGES, state_dir=state_dir, server=None,
                               title="The store cannot be read", message=str(error)), 503

    @app.errorhandler(Refused)
    def refused(error: Refused) -> tuple[Any, int]:
        if request.path.startswith("/api/"):
            return jsonify(ok=False, error=str(error)), error.status
        return page("actions", controls=read(queries.controls), versions=read(queries.versions),
                    error=str(error)), error.status

    app.jinja_env.filters.update(bytes=_bytes, pct=_pct, ratio=_ratio, ago=_ago, when=_when, num=_num)

    @app.get("/healthz")
    def healthz() -> Any:
        state = read(queries.server_state)
        head = read(VersionStore.head)
        return jsonify(ok=True, head=None if head is None else head.id, state=state["state"])

    @app.get("/")
    def overview() -> str:
        return page("overview", data=read(queries.overview), refresh=REFRESH_SECONDS)

    @app.get("/rounds")
    def rounds() -> str:
        rows = read(queries.rounds)
        return page("rounds", rows=rows, charts=round_charts(rows), refresh=REFRESH_SECONDS)

    @app.get("/sites")
    def sites() -> str:
        return page("sites", sites=read(queries.sites), refresh=REFRESH_SECONDS)

    @app.get("/versions")
    def versions() -> str:
        return page("versions", versions=read(queries.versions))

    @app.get("/rejections")
    def rejections() -> str:
        return page("rejections", rejections=read(queries.rejections))

    @app.get("/actions")
    def actions() -> str:
        return page("actions", controls=read(queries.controls), versions=read(queries.versions),
                    chosen=request.args.get("version", type=int), requested=request.args.get("requested", type=int))

    for name in ("overview", "rounds", "sites", "versions", "rejections"):
        app.add_url_rule(f"/api/{name}", f"api_{name}", _api(read, getattr(queries, name)))
    app.add_url_rule("/api/actions", "api_actions", _api(read, queries.controls))

    @app.post("/api/actions/<action>")
    def api_act(action: str) -> tuple[Any, int]:
        bearer = request.headers.get("Authorization", "")
        body = request.get_json(silent=True) or {}
        version = body.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise Refused(400, "version must be an integer")
        made = act(action, bearer.removeprefix("Bearer ").strip() if bearer.startswith("Bearer ") else None, version)
        return jsonify(ok=True, control=made), 202

    @app.post("/actions/<action>")
    def form_act(action: str) -> Any:
        raw = request.form.get("version", "").strip()
        if raw and not raw.isdecimal():
            raise Refused(400, f"version must be a whole number, not {raw!r}")
        made = act(action, request.form.get("token"), int(raw) if raw else None)
        return redirect(url_for("actions", requested=made["id"]), code=303)

    @app.get("/versions/<int:version_id>/delta")
    def delta(version_id: int) -> Response:
        with reader() as store:
            version = _version_or_404(store, version_id)
            blob = store.read_blob(version)
        response = Response(blob, mimetype="application/octet-stream")
        response.headers["Content-Disposition"] = f'attachment; filename="fedelta-v{version_id}-{version.sha[:12]}.delta"'
        response.set_etag(version.blob)
        return response

    @app.get("/versions/<int:version_id>/export.zip")
    def export(version_id: int) -> Response:
        from fedelta.server.console.export import export_version

        if not exporting.acquire(blocking=False):
            abort(429, "an export is already being built; try again when it is done")
        try:
            archive = tempfile.TemporaryFile()
            with reader() as store:
                _version_or_404(store, version_id)
                name = export_version(store, version_id, archive)
        finally:
            exporting.release()
        archive.seek(0)
        return send_file(archive, mimetype="application/zip", as_attachment=True, download_name=f"{name}.zip")

    return app


def round_charts(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Accuracy (the loss where the task defines no accuracy) and bytes per finished round, as SVG."""
    done = [row for row in rows if row["state"] == "finished"]
    numbers = [row["round"] for row in done]
    if any(row.get("accuracy") is not None for row in done) or not done:
        accuracy = line_chart("Accuracy per round", numbers, [
            Series("server test set", [row.get("accuracy") for row in done], ACCURACY_COLORS[0]),
            Series("sites (mean)", [row.get("site_accuracy") for row in done], ACCURACY_COLORS[1]),
        ], lambda v: f"{v:.2f}", floor=0.0, ceiling=1.0)
    else:  # a task without accuracy (open-ended responses): its loss
        accuracy = line_chart("Loss per round", numbers, [
            Series("server test set", [row.get("loss") for row in done], ACCURACY_COLORS[0]),
            Series("sites (mean)", [row.get("site_loss") for row in done], ACCURACY_COLORS[1]),
        ], lambda v: f"{v:.3f}", floor=0.0)
    traffic = bar_chart("Bytes per round", numbers, [
        Series("upload", [row["upload_bytes"] for row in done], BYTES_COLORS[0]),
        Series("downlink", [row["downlink_bytes"] for row in done], BYTES_COLORS[1]),
    ], _bytes)
    return {"accuracy": accuracy, "bytes": traffic}


def _api(read: Callable[[Callable[[VersionStore], Any]], Any], query: Callable[[VersionStore], Any]) -> Callable[[], Any]:
    def view() -> Any:
        return jsonify(read(query))

    return view


def _version_or_404(store: VersionStore, version_id: int) -> Any:
    try:
        return store.version(version_id)
    except KeyError:
        abort(404, f"no version {version_id}")


def _bytes(count: float | None) -> str:
    return "–" if count is None else human_bytes(count)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _ratio(value: float | None) -> str:
    return "–" if not value else f"{value:,.1f}×"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ago(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    seconds = max(0.0, time.time() - stamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _when(stamp: float | None) -> str:
    return "–" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
