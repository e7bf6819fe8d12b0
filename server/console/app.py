"""The console's Flask application: pages, the JSON API under /api/, downloads, and token-guarded actions."""

from __future__ import annotations

import hmac
import math
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_file, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from fedelta.common.phases import PHASE_COLORS, PHASES
from fedelta.common.report import human_bytes
from fedelta.server import control
from fedelta.server.console import queries
from fedelta.server.console.charts import Series, bar_chart, line_chart, stacked_chart
from fedelta.server.console.limits import (
    EXPORTS_PER_MINUTE, LOOPBACK_HOSTS, MAX_REQUEST_BYTES, MAX_VERSION_ID, RateLimit, bearer_token, host_name,
    json_object,
)
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
BUSY_EXPORT_RETRY_SECONDS = 10


class Refused(Exception):
    """A request the console will not serve, with the HTTP status (and headers) to answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def create_app(state_dir: Path, token: str | None, *, hosts: Collection[str] = LOOPBACK_HOSTS,
               exports_per_minute: int = EXPORTS_PER_MINUTE) -> Flask:
    """The console over the store in ``state_dir``, answering requests for ``hosts`` only; actions
    need ``token`` (none: actions are off), and so do exports when it is set."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    state_dir = Path(state_dir)
    hosts = frozenset(host_name(name) for name in hosts)
    exporting = threading.Lock()  # one export at a time: each rebuilds a whole model
    export_rate = RateLimit(exports_per_minute)

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

    def versions_page(**context: Any) -> str:
        return page("versions", versions=read(queries.versions), exports_need_token=token is not None, **context)

    def check_token(supplied: str | None, needed_for: str) -> None:
        if token is None or not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
            raise Refused(401, f"a valid token is required for {needed_for}")

    def authorize_action(supplied: str | None) -> None:
        if token is None:
            raise Refused(403, "actions are off: the console was started without --token-file")
        check_token(supplied, "actions")

    def act(action: str, version: int | None, site: str | None = None) -> dict[str, Any]:
        with reader(writable=True) as store:
            head = store.head()
            if version is not None and (head is None or not 0 <= version <= head.id):
                raise Refused(404, f"no committed version {version} (the head is {head.id if head else 'none'})")
            try:
                return queries.control_row(control.request(store, action, version, site))
            except ValueError as error:
                raise Refused(400, str(error)) from None

    @app.before_request
    def within_limits() -> Response | None:
        """Refuse a request for another host (DNS rebinding) or with a large body, before reading any body."""
        name = host_name(request.headers.get("Host", ""))
        if name not in hosts:
            return _plain(403, f"this console answers only for its allowed hosts, not {name[:100]!r}; "
                          "start it with --allowed-host NAME to reach it by another name")
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return _plain(413, f"a request may carry at most {MAX_REQUEST_BYTES} bytes")
        return None

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> Response:
        return _plain(413, f"a request may carry at most {MAX_REQUEST_BYTES} bytes")

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
    def refused(error: Refused) -> tuple[Any, int, dict[str, str]]:
        if request.path.startswith("/api/"):
            return jsonify(ok=False, error=str(error)), error.status, error.headers
        if request.endpoint == "export":
            return versions_page(error=str(error)), error.status, error.headers
        return page("actions", controls=read(queries.controls), versions=read(queries.versions),
                    error=str(error)), error.status, error.headers

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
        return versions_page()

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
        authorize_action(bearer_token(request.headers))
        try:
            body = json_object(request.get_data(cache=False))
        except ValueError as error:
            raise Refused(400, str(error)) from None
        version, site = body.get("version"), body.get("site")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise Refused(400, "version must be an integer")
        if site is not None and not isinstance(site, str):
            raise Refused(400, "site must be a string")
        made = act(action, version, site)
        return jsonify(ok=True, control=made), 202

    @app.post("/actions/<action>")
    def form_act(action: str) -> Any:
        authorize_action(request.form.get("token"))
        raw = request.form.get("version", "").strip()
        if raw and not raw.isdecimal():
            raise Refused(400, f"version must be a whole number, not {raw!r}")
        made = act(action, int(raw) if raw else None, request.form.get("site", "").strip() or None)
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

    @app.route("/versions/<int:version_id>/export.zip", methods=["GET", "POST"])
    def export(version_id: int) -> Response:
        from fedelta.server.console.export import export_version

        if token is not None:
            check_token(bearer_token(request.headers) or request.form.get("token"), "exports")
        read(lambda store: _version_or_404(store, version_id))
        wait = export_rate.admit(request.remote_addr or "")
        if wait:
            raise Refused(429, f"at most {exports_per_minute} exports a minute from one address; try again in "
                          f"{math.ceil(wait)} s", {"Retry-After": str(math.ceil(wait))})
        if not exporting.acquire(blocking=False):
            raise Refused(429, "an export is already being built; try again when it is done",
                          {"Retry-After": str(BUSY_EXPORT_RETRY_SECONDS)})
        try:
            archive = tempfile.TemporaryFile()
            with reader() as store:
                name = export_version(store, version_id, archive)
        finally:
            exporting.release()
        archive.seek(0)
        return send_file(archive, mimetype="application/zip", as_attachment=True, download_name=f"{name}.zip")

    return app


def round_charts(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Accuracy (the loss where the task defines no accuracy), bytes and seconds by phase per finished round, as
    SVG."""
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
    timed = [row.get("phases", {}) for row in done]
    phases = stacked_chart("Seconds per round, by phase", numbers, [
        Series(name, [phases.get(name) for phases in timed], PHASE_COLORS[name])
        for name in PHASES if any(phases.get(name) for phases in timed)
    ], lambda v: f"{v:,.1f} s")
    return {"accuracy": accuracy, "bytes": traffic, "phases": phases}


def _api(read: Callable[[Callable[[VersionStore], Any]], Any], query: Callable[[VersionStore], Any]) -> Callable[[], Any]:
    def view() -> Any:
        return jsonify(read(query))

    return view


def _version_or_404(store: VersionStore, version_id: int) -> Any:
    if not 0 <= version_id <= MAX_VERSION_ID:
        abort(404, f"no version {version_id}")
    try:
        return store.version(version_id)
    except KeyError:
        abort(404, f"no version {version_id}")


def _plain(status: int, message: str) -> Response:
    """A refusal made before any work: JSON under /api/, else plain text."""
    response = jsonify(ok=False, error=message) if request.path.startswith("/api/") else Response(
        message + "\n", mimetype="text/plain")
    response.status_code = status
    return response


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
