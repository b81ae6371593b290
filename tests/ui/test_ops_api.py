"""Every endpoint of the ops pages against a real API server: login required, real data, no leaks,
no way out of the project's prefixes."""

from __future__ import annotations

import http.client
import io
import re
import time
from urllib.parse import quote, urlsplit

import jwt
import pydicom
import pytest
import requests
from conftest import ACCESS_KEY, OUTPUT, SECRET_KEY
from ops_fill import SECRET_MARKER
from pydicom.uid import SegmentationStorage

from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

NOTICE = "research use, not for diagnosis"


def pages(filled) -> list[str]:
    """Every HTML page of the plugin, with real ids."""
    m1, study = filled.models[0], filled.studies[0]
    return ["/brain-tumor/models", "/brain-tumor/gates", "/brain-tumor/trends",
            "/brain-tumor/scoring", f"/brain-tumor/scoring/{m1}/{study}",
            f"/brain-tumor/models/{m1}/card"]


def study_with_overlays(filled) -> tuple[str, list[str]]:
    """A scored study with tumor slices, and its overlay keys."""
    store = ObjectStore.from_settings(filled.settings)
    for study in filled.studies:
        keys = [i.key for i in store.list(ScoreStore(store, filled.settings).output_key(
            filled.champion, study, "overlays") + "/")]
        if keys:
            return study, keys
    raise AssertionError(f"no scored study has overlays: {filled.studies}")


def pictures(filled) -> list[str]:
    """Every picture endpoint, with real ids."""
    m1, (study, _) = filled.models[0], study_with_overlays(filled)
    store = ObjectStore.from_settings(filled.settings)
    plot = next(iter(store.list(ModelStore(store, filled.settings).key(m1, "plots") + "/")))
    overlay = next(iter(store.list(ScoreStore(store, filled.settings).output_key(
        m1, study, "overlays") + "/")))
    return [f"/brain-tumor/files/models/{m1}/plots/{plot.key.rsplit('/', 1)[1]}",
            f"/brain-tumor/files/scores/{m1}/{study}/overview.png",
            f"/brain-tumor/files/scores/{m1}/{study}/{overlay.key.rsplit('/', 2)[1]}/"
            f"{overlay.key.rsplit('/', 1)[1]}"]


def get(server, path: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(server.base_url + path, headers=headers, timeout=60,
                        allow_redirects=False, **kwargs)


@pytest.fixture(scope="module")
def token(ops_server) -> str:
    return ops_server.token()


def test_anonymous_requests_are_refused(ops_server, filled) -> None:
    for path in ["/brain-tumor/", *pages(filled), *pictures(filled)]:
        resp = get(ops_server, path)
        assert resp.status_code == 401, (path, resp.status_code, resp.text[:300])
        assert NOTICE in resp.text.lower()
        assert SECRET_MARKER.decode() not in resp.text


def test_forged_tokens_are_refused(ops_server, token, filled) -> None:
    claims = jwt.decode(token, options={"verify_signature": False})
    alg = jwt.get_unverified_header(token)["alg"]
    forged = jwt.encode(claims, "not-the-secret-" * 5, algorithm=alg)
    unsigned = jwt.encode(claims, None, algorithm="none")
    for bad in (forged, unsigned, "not-a-jwt", token[:-4] + "AAAA"):
        for path in (pages(filled)[0], pictures(filled)[1]):
            resp = get(ops_server, path, bad)
            assert resp.status_code == 403, (bad[:20], path, resp.status_code, resp.text[:300])
    resp = get(ops_server, pages(filled)[0], cookies={"_token": forged})
    assert resp.status_code == 403


def test_expired_token_is_refused(ops_server, token, filled) -> None:
    claims = jwt.decode(token, options={"verify_signature": False})
    alg = jwt.get_unverified_header(token)["alg"]
    now = int(time.time())
    expired = jwt.encode({**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600},
                         ops_server.env["AIRFLOW__API_AUTH__JWT_SECRET"], algorithm=alg)
    still_valid = jwt.encode({**claims, "exp": now + 3600},
                             ops_server.env["AIRFLOW__API_AUTH__JWT_SECRET"], algorithm=alg)
    # the re-signing is right
    assert get(ops_server, pages(filled)[0], still_valid).status_code == 200
    for path in (pages(filled)[0], pictures(filled)[0]):
        resp = get(ops_server, path, expired)
        assert resp.status_code == 401, (path, resp.status_code, resp.text[:300])
        assert "expired" in resp.text.lower()


def test_login_by_bearer_or_session_cookie(ops_server, token, filled) -> None:
    assert get(ops_server, "/brain-tumor/models", token).status_code == 200
    resp = get(ops_server, "/brain-tumor/models", cookies={"_token": token})
    assert resp.status_code == 200 and filled.champion in resp.text
    resp = get(ops_server, "/brain-tumor/", token)
    assert resp.status_code in (302, 307) and resp.headers["location"].endswith(
        "/brain-tumor/models")


def test_every_page_and_picture_says_research_use(ops_server, token, filled) -> None:
    for path in pages(filled):
        resp = get(ops_server, path, token)
        assert resp.status_code == 200, (path, resp.text[:500])
        assert resp.headers["content-type"].startswith("text/html")
        assert NOTICE in resp.text.lower(), path
    for path in pictures(filled):
        resp = get(ops_server, path, token)
        assert resp.status_code == 200, (path, resp.text[:500])
        assert resp.headers["content-type"] == "image/png"
        assert resp.content.startswith(b"\x89PNG")
        assert resp.headers["x-research-use"] == NOTICE


def test_models_page_shows_champion_history_and_metrics(ops_server, token, filled) -> None:
    from brain_tumor.evaluation.gate import _fmt  # noqa: F401  (the gate's own formatting is not reused)

    html = get(ops_server, "/brain-tumor/models", token).text
    m1, m2, m3 = filled.models
    assert f"Champion: <b>{m1}</b>" in html
    history = html[html.index('id="history"'):html.index('id="versions"')]
    rows = history.split("<tr class=")[1:]
    assert [r.split('"')[1] for r in rows] == [f"event-{e['action']}"
                                                for e in reversed(filled.events)]
    rejected = rows[0]
    assert m2 in rejected and filled.datasets[1] in rejected
    assert "/dags/retrain_nightly/runs/" + quote(filled.events[3]["run_id"], safe="") in rejected
    store = ObjectStore.from_settings(filled.settings)
    gate = store.get_json(ModelStore(store, filled.settings).key(
        m2, "gate", f"{filled.datasets[1]}.json"))
    failed = [c["metric"] for c in gate["checks"] if not c["passed"]]
    assert failed and all(name in rejected for name in failed)  # the gate's explanation
    assert "ops test: back to the first model" in rows[1]
    metrics = store.get_json(ModelStore(store, filled.settings).key(m1, "metrics.json"))
    sens, (lo, hi) = metrics["slice"]["sensitivity"], metrics["intervals"]["sensitivity"]
    row = html[html.index(f'id="model-{m1}"'):].split("</tr>")[0]
    assert f"{sens:.3f} <span class=\"muted\">[{lo:.3f}, {hi:.3f}]</span>" in row
    assert "★ champion" in row and f"/brain-tumor/models/{m1}/card" in row
    assert f"/brain-tumor/files/models/{m1}/plots/" in row
    assert html.index(f'id="model-{m2}"') < html.index(f'id="model-{m1}"')  # newest first


def test_model_card_and_plot_are_the_stored_ones(ops_server, token, filled) -> None:
    m1 = filled.models[0]
    store = ObjectStore.from_settings(filled.settings)
    models = ModelStore(store, filled.settings)
    card = store.get(models.key(m1, "model_card.md")).decode()
    html = get(ops_server, f"/brain-tumor/models/{m1}/card", token).text
    first_line = card.strip().splitlines()[0]
    assert first_line.replace("&", "&amp;").replace("<", "&lt;") in html
    plot_path = pictures(filled)[0]
    name = plot_path.rsplit("/", 1)[1]
    assert get(ops_server, plot_path, token).content == store.get(models.key(m1, "plots", name))


def test_gate_page_lists_every_check(ops_server, token, filled) -> None:
    html = get(ops_server, "/brain-tumor/gates", token).text
    store = ObjectStore.from_settings(filled.settings)
    for version, dataset in ((filled.models[0], filled.datasets[0]),
                             (filled.models[1], filled.datasets[1]),
                             (filled.models[2], filled.datasets[1])):
        result = store.get_json(ModelStore(store, filled.settings).key(version, "gate",
                                                                       f"{dataset}.json"))
        section = html[html.index(f'id="gate-{version}-{dataset}"'):].split("</section>")[0]
        assert ("rejected" if not result["passed"] else "passed") in section
        for check in result["checks"]:
            row = section[section.index(f"<td>{check['name']}</td>"):].split("</tr>")[0]
            assert f"{check['bound']:.4f}" in row and f"{check['value']:.4f}" in row
            assert ("pass" if check["passed"] else "FAIL") in row
    rejected = html[html.index(f'id="gate-{filled.models[1]}-'):].split("</section>")[0]
    result = store.get_json(ModelStore(store, filled.settings).key(
        filled.models[1], "gate", f"{filled.datasets[1]}.json"))
    failed = [c for c in result["checks"] if not c["passed"]]
    # the strict floors: Dice 0.999 always fails the tiny model, and at least one other
    assert len(failed) >= 2 and rejected.count("FAIL") >= len(failed)
    assert f"Champion compared against: {filled.models[0]}" in rejected


def test_trends_page_charts_and_counts(ops_server, token, filled) -> None:
    html = get(ops_server, "/brain-tumor/trends", token).text
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "trends.html").write_text(html)
    assert html.count("<svg") == 5, re.findall(r"<title>([^<]*)</title>", html)
    for title in ("Detection over model versions", "Dataset size over dataset versions",
                  "Scored studies over time", "Drift against the validation slices (PSI"):
        assert title in html
    store = ObjectStore.from_settings(filled.settings)
    for version in filled.datasets:
        counts = store.get_json(filled.settings.key("datasets", version, "dataset.json"))["counts"]
        row = html[html.index(f"<td>{version}</td>"):].split("</tr>")[0]
        assert row.endswith("".join(f"<td>{counts[k]}</td>" for k in
                                    ("patients", "slices", "tumor_slices", "quarantined")))
    assert "quarantined" in html and filled.datasets[1] in html
    last = filled.batches[-1]
    share = last["tumors_found"] / last["studies_scored"]
    assert f"share tumor-positive {last['started_at'][:16]}: {share:.4g}" in html


def test_scoring_page_batches_studies_quarantine(ops_server, token, filled) -> None:
    html = get(ops_server, "/brain-tumor/scoring", token).text
    for batch in filled.batches:
        row = html[html.index(f'id="batch-{batch["run_id"].replace(":", "_").replace("+", "_")}"'):]
        row = row.split("</tr>")[0]
        cells = [c.split("</td>")[0] for c in row.split("<td")[1:]]
        assert batch["model_version"] in cells[3]
        assert cells[4].endswith(f">{batch['studies_scored']}")
        assert cells[5].endswith(f">{batch['studies_skipped']}")
        assert str(batch["studies_quarantined"]) in cells[6]
        assert cells[8].endswith(f">{batch['tumors_found']}")
    assert filled.bad_study in html[html.index('id="quarantine"'):]
    for study in filled.studies:
        assert f'/brain-tumor/scoring/{filled.champion}/{study}"' in html


def test_study_page_summary_and_pictures(ops_server, token, filled) -> None:
    m1, (study, overlays) = filled.models[0], study_with_overlays(filled)
    store = ObjectStore.from_settings(filled.settings)
    summary = ScoreStore(store, filled.settings).summary(m1, study)
    html = get(ops_server, f"/brain-tumor/scoring/{m1}/{study}", token).text
    assert f"<td>{summary['tumor_slices']}</td>" in html
    assert f"<td>{summary['max_probability']:.4f}</td>" in html
    assert html.count("/overlays/") == len(overlays)
    for key in overlays:
        n = key.rsplit("/", 1)[1]
        resp = get(ops_server, f"/brain-tumor/files/scores/{m1}/{study}/overlays/{n}", token)
        assert resp.content == store.get(key)
    assert get(ops_server, f"/brain-tumor/scoring/{m1}/{filled.bad_study}", token
               ).status_code == 404


def test_alerts_are_on_every_page(ops_server, token, filled) -> None:
    for path in pages(filled):
        html = get(ops_server, path, token).text
        assert f"retrain_nightly run {ops_server.failed_run_id} failed" in html, path
        assert f"candidate {filled.models[1]} was rejected" in html, path
        assert f"quarantined 1 study: {filled.bad_study}" in html, path


def test_no_credentials_reach_the_browser(ops_server, token, filled) -> None:
    for path in pages(filled):
        resp = get(ops_server, path, token)
        text = resp.text + str(resp.headers)
        for secret in (ACCESS_KEY, SECRET_KEY, filled.settings.s3_endpoint_url, "X-Amz-",
                       "Signature=", filled.settings.s3_bucket):
            assert secret not in text, (path, secret)


TRAVERSALS = [
    "/brain-tumor/files/models/..%2F..%2Fsecret/plots/x.png",
    "/brain-tumor/files/models/%2e%2e/plots/secret.png",
    "/brain-tumor/files/models/{m}/plots/..%2F..%2F..%2Fsecret.png",
    "/brain-tumor/files/models/{m}/plots/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.png",
    "/brain-tumor/files/models/{m}/plots/%2Fsecret.png",
    "/brain-tumor/files/models/{m}/plots/.%2e",
    "/brain-tumor/files/models/%2Fprivate/plots/overview.png",
    "/brain-tumor/files/scores/{m}/%2e%2e/overview.png",
    "/brain-tumor/files/scores/{m}/..%2F..%2F..%2Fprivate/overview.png",
    "/brain-tumor/files/scores/%2e%2e%2f%2e%2e%2fprivate/x/overview.png",
    "/brain-tumor/files/scores/{m}/%2Fprivate/overview.png",
    "/brain-tumor/files/scores/{m}/{s}/overlays/-1.png",
    "/brain-tumor/files/scores/{m}/{s}/overlays/1e3.png",
    "/brain-tumor/files/scores/{m}/{s}/slices.parquet",
    "/brain-tumor/files/scores/{m}/_done/{s}.json",
    "/brain-tumor/files/scores/{m}/{s}/overlays/..%2F..%2F..%2F..%2Fsecret.png",
    "/brain-tumor/scoring/{m}/%2e%2e",
    "/brain-tumor/scoring/..%2F..%2Fprivate/x",
    "/brain-tumor/models/..%2F..%2Fprivate/card",
    "/brain-tumor/models/%2e%2e/card",
    "/brain-tumor/files/models/{m}/plots/../../../../secret.png",
    "/brain-tumor/../../secret.png",
]


def raw_get(server, path: str, token: str) -> tuple[int, bytes]:
    """A GET with the path sent exactly as written (no client-side normalization)."""
    parts = urlsplit(server.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("template", TRAVERSALS)
def test_path_traversal_cannot_leave_the_prefixes(ops_server, token, filled, template) -> None:
    path = template.format(m=filled.models[0], s=filled.studies[0])
    status, body = raw_get(ops_server, path, token)
    assert SECRET_MARKER not in body, path
    assert status == 404, (path, status, body[:300])
    assert NOTICE.encode() in body.lower()


def test_plugin_is_registered_in_the_navigation(ops_server) -> None:
    resp = ops_server.api("GET", "plugins")
    resp.raise_for_status()
    plugin = next(p for p in resp.json()["plugins"] if p["name"] == "brain_tumor_ops")
    views = {v["name"]: v for v in plugin["external_views"]}
    assert set(views) == {"Models", "Gate decisions", "Trends", "Scoring"}
    assert all(v["href"].startswith("/brain-tumor/") and v["url_route"] for v in views.values())
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/brain-tumor"
    errors = ops_server.api("GET", "plugins/importErrors").json()
    assert errors["total_entries"] == 0, errors


def test_scoring_page_links_the_seg_of_a_dicom_study_and_serves_it(ops_server, token,
                                                                    filled) -> None:
    m1, sid = filled.champion, filled.dicom_study
    html = get(ops_server, "/brain-tumor/scoring", token).text
    table = html[html.index('id="studies"'):]
    link = f"/brain-tumor/files/scores/{m1}/{sid}/clinical/dicom_seg"
    assert f'href="{link}"' in table
    resp = get(ops_server, link, token)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/dicom"
    store = ObjectStore.from_settings(filled.settings)
    assert resp.content == ScoreStore(store, filled.settings).get_output(m1, sid, "seg.dcm")
    seg = pydicom.dcmread(io.BytesIO(resp.content))
    assert seg.SOPClassUID == SegmentationStorage and seg.Modality == "SEG"
    study_html = get(ops_server, f"/brain-tumor/scoring/{m1}/{sid}", token).text
    assert f'href="{link}"' in study_html[study_html.index('id="clinical"'):]
    for missing in (f"/brain-tumor/files/scores/{m1}/{sid}/clinical/nifti_mask",
                    f"/brain-tumor/files/scores/{m1}/{filled.studies[0]}/clinical/dicom_seg",
                    f"/brain-tumor/files/scores/{m1}/{sid}/clinical/summary"):
        assert get(ops_server, missing, token).status_code == 404, missing
