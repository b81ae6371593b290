"""Server-rendered HTML of the ops pages. Every value is escaped; every page carries the notice."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from brain_tumor.evaluation import catalog
from brain_tumor.evaluation.catalog import Metric
from brain_tumor_airflow.ui.charts import Series, line_chart
from brain_tumor_airflow.ui.status import anchor, gate_anchor, run_link

NOTICE = "Research use, not for diagnosis."
TABS = (("models", "Models"), ("gates", "Gate decisions"), ("trends", "Trends"),
        ("scoring", "Scoring"))
RETRAIN_DAG, SCORING_DAG = "retrain_nightly", "batch_score"
_CSS = """
body{font-family:system-ui,sans-serif;margin:0 1.2rem 2rem;color:#222;font-size:14px}
nav a{margin-right:1rem;text-decoration:none;padding:.3rem .1rem}
nav a.on{border-bottom:3px solid #1f77b4;font-weight:bold}
nav{margin:.8rem 0 1rem}
.notice{background:#fff4ce;border:1px solid #e0c060;padding:.35rem .6rem;margin:.6rem 0}
.alert{background:#fde2e1;border:1px solid #d62728;padding:.35rem .6rem;margin:.3rem 0}
table{border-collapse:collapse;margin:.4rem 0 1rem}
td,th{border:1px solid #ccc;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}
.champion{background:#e7f5e9}.muted{color:#777}
.ood{background:#fde2e1;border:2px solid #d62728;padding:.45rem .7rem;margin:.6rem 0}
.pics img{max-width:300px;margin:.3rem;border:1px solid #ccc}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.6rem;border:1px solid #ddd}
"""


def e(value: Any) -> str:
    """value as escaped HTML text ('—' for None)."""
    return "—" if value is None else escape(str(value))


def num(value: Any, digits: int = 3) -> str:
    """A number rounded for reading ('—' for None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return e(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def when(value: Any) -> str:
    """A timestamp without microseconds."""
    if isinstance(value, datetime):
        return e(value.strftime("%Y-%m-%d %H:%M:%S UTC"))
    return e(value)


def layout(base: str, tab: str, title: str, body: str, alerts: Sequence[dict[str, Any]]) -> str:
    """The page frame: tabs, alerts, the notice above and below the content."""
    tabs = "".join(f'<a href="{base}/{name}" class="{"on" if name == tab else ""}">{label}</a>'
                   for name, label in TABS)
    shown = "".join(
        f'<div class="alert" data-kind="{e(a["kind"])}">⚠ {e(a["text"])}'
        + (f' — <a href="{_href(base, a["link"])}" target="{_target(a["link"])}">details</a>'
           if a.get("link") else "") + "</div>" for a in alerts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{e(title)} · brain-tumor ops</title><style>{_CSS}</style></head><body>'
            f'<nav>{tabs}</nav><div class="notice"><b>{NOTICE}</b> Brain-MRI tumor detector: '
            f'monitoring for operators.</div>{shown}<h1>{e(title)}</h1>{body}'
            f'<p class="notice">{NOTICE}</p></body></html>')


def _href(base: str, link: str) -> str:
    return escape(link if link.startswith("/") else f"{base}/{link}")


def _target(link: str) -> str:
    return "_top" if link.startswith("/dags/") else "_self"


def _run(dag_id: str, run_id: str | None) -> str:
    link = run_link(dag_id, run_id)
    return f'<a href="{escape(link)}" target="_top">{e(run_id)}</a>' if link else e(run_id)


def _metric(metric: Metric, shown: dict[str, Any] | None) -> str:
    """A headline value ({value, interval}) with its interval, rounded as the catalog says."""
    if not shown:
        return "—"
    iv = shown.get("interval")
    text = e(metric.text(shown.get("value"), missing="—"))
    if iv and len(iv) == 2:
        low, high = (e(metric.text(b, missing="—")) for b in iv)
        text += f' <span class="muted">[{low}, {high}]</span>'
    return text


def models_page(base: str, registry: dict[str, Any], versions: list[dict[str, Any]],
                alerts: list[dict[str, Any]]) -> str:
    """Champion, registry history and every model version's headline metrics."""
    champion = registry["champion"]
    q = lambda v: quote(v, safe="")  # noqa: E731
    rows = "".join(
        f'<tr class="event-{e(ev["action"])}"><td>{e(ev.get("seq"))}</td><td>{when(ev["at"])}</td>'
        f'<td><b>{e(ev["action"])}</b></td><td>{e(ev["model_version"])}</td>'
        f'<td>{e(ev.get("previous_champion"))}</td><td>{e(ev.get("dataset_version"))}</td>'
        f'<td>{e(ev["reason"])}'
        + (f' (<a href="{base}/gates#'
           f'{gate_anchor(ev["model_version"], ev.get("dataset_version"))}">gate checks</a>)'
           if ev["action"] != "rolled_back" else "")
        + f'</td><td>{_run(RETRAIN_DAG, ev.get("run_id"))}</td></tr>'
        for ev in registry["events"])
    history = ("<table id=\"history\"><tr><th>#</th><th>when</th><th>action</th><th>model</th>"
               "<th>previous champion</th><th>dataset</th><th>why</th><th>run</th></tr>"
               f"{rows}</table>" if rows else "<p>No registry events yet.</p>")
    columns = catalog.ON_PAGE
    head = "".join(f'<th title="{e(m.label)}, {m.direction} is better">{e(m.short)}</th>'
                   for m in columns)
    mrows = []
    for v in versions:
        mv = v["model"]["model_version"]
        links = [f'<a href="{base}/models/{q(mv)}/card">model card</a>'] if v["has_card"] else []
        links += [f'<a href="{base}/files/models/{q(mv)}/plots/{q(p)}">{e(p.removesuffix(".png"))}'
                  f'</a>' for p in v["plots"]]
        mrows.append(
            f'<tr id="model-{anchor(mv)}" class="{"champion" if mv == champion else ""}">'
            f'<td><b>{e(mv)}</b>{" ★ champion" if mv == champion else ""}</td>'
            f'<td>{e(v["model"]["dataset_version"])}</td><td>{when(v["model"]["created_at"])}</td>'
            + "".join(f"<td>{_metric(m, v['metrics'].get(m.name))}</td>" for m in columns)
            + f'<td>{" · ".join(links) or "not evaluated"}</td></tr>')
    table = (f'<table id="versions"><tr><th>model version</th><th>dataset</th><th>created</th>'
             f'{head}<th>card and plots</th></tr>{"".join(mrows)}</table>'
             if mrows else "<p>No model versions yet.</p>")
    stack = " → ".join(e(m) for m in registry["history"]) or "none"
    body = (f'<p id="champion">Champion: <b>{e(champion) if champion else "none yet"}</b></p>'
            f'<p class="muted">Champion stack (oldest first): {stack}</p>'
            f'<h2>Promotions, rejections, rollbacks</h2>{history}'
            f'<h2>Model versions</h2><p class="muted">Metrics on each version\'s own test patients,'
            f' with 95% bootstrap intervals over patients.</p>{table}')
    return layout(base, "models", "Models", body, alerts)


def gates_page(base: str, results: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> str:
    """Every check of every candidate."""
    parts = []
    for r in results:
        checks = "".join(
            f'<tr><td>{e(c.get("name"))}</td><td>{num(c.get("value"), 4)}</td>'
            f'<td>{e(c.get("op"))}</td><td>{num(c.get("bound"), 4)}</td>'
            f'<td class="{"pass" if c.get("passed") else "fail"}">'
            f'{"pass" if c.get("passed") else "FAIL"}</td><td>{e(c.get("note") or "")}</td></tr>'
            for c in r["checks"])
        verdict = '<span class="pass">passed</span>' if r["passed"] else \
            '<span class="fail">rejected</span>'
        against = (e(r.get("champion_version")) if r.get("champion_version")
                   else "none (first model: floors only)")
        parts.append(
            f'<section id="{gate_anchor(r["model_version"], r["dataset_version"])}">'
            f'<h2>{e(r["model_version"])} on {e(r["dataset_version"])}: {verdict}</h2>'
            f'<p>Champion compared against: {against}'
            f' · decided {when(r.get("at"))}</p>'
            f'<table><tr><th>check</th><th>value</th><th>op</th><th>bound</th><th>outcome</th>'
            f'<th>note</th></tr>{checks}</table></section>')
    body = "".join(parts) or "<p>No gate decisions yet.</p>"
    return layout(base, "gates", "Gate decisions", body, alerts)


def trends_page(base: str, versions: list[dict[str, Any]], datasets: list[dict[str, Any]],
                batches: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> str:
    """Headline metrics over model versions, dataset size over versions, score drift."""
    versions = list(reversed(versions))  # oldest first
    labels = [v["model"]["model_version"] for v in versions]

    def series(metric: Metric) -> Series:
        ms = [v["metrics"].get(metric.name) or {} for v in versions]
        return Series(metric.short, [m.get("value") for m in ms], [m.get("interval") for m in ms])

    guarded = [catalog.metric(name) for name in catalog.NO_REGRESSION]  # what the gate guards
    calibration = [m for m in catalog.ON_PAGE if m.section == "calibration"]
    quality = line_chart("Detection over model versions (95% intervals)", labels,
                         [series(m) for m in guarded], (0.0, 1.0))
    calib = line_chart("Calibration over model versions ("
                       + ", ".join(f"{m.short}, {m.direction} is better" for m in calibration)
                       + ")", labels, [series(m) for m in calibration])
    ds_labels = [d["version"] for d in datasets]
    counts = [d.get("counts") or {} for d in datasets]
    size = line_chart("Dataset size over dataset versions", ds_labels,
                      [Series(k.replace("_", " "), [c.get(k) for c in counts])
                       for k in ("patients", "slices", "tumor_slices", "quarantined")])
    old_first = list(reversed(batches))
    b_labels = [(b.get("started_at") or "")[:16] for b in old_first]
    share = [b["tumors_found"] / b["studies_scored"] if b.get("studies_scored") else None
             for b in old_first]
    drift = line_chart("Scored studies over time (per scoring batch)", b_labels,
                       [Series("share tumor-positive", share),
                        Series("mean max probability",
                               [b.get("mean_max_probability") for b in old_first])], (0.0, 1.0))
    drift += _psi_chart(old_first, b_labels)
    ds_rows = "".join(f"<tr><td>{e(d['version'])}</td><td>{when(d['created_at'])}</td>"
                      f"<td>{e(', '.join(d['exports']))}</td>"
                      + "".join(f"<td>{e(c.get(k))}</td>" for k in
                                ("patients", "slices", "tumor_slices", "quarantined"))
                      + "</tr>" for d, c in zip(datasets, counts, strict=True))
    body = (f"<h2>Model quality</h2>{quality}{calib}<h2>Data</h2>{size}"
            f'<table id="datasets"><tr><th>dataset version</th><th>created</th><th>exports</th>'
            f'<th>patients</th><th>slices</th><th>tumor slices</th><th>quarantined</th></tr>'
            f'{ds_rows}</table><h2>Score distribution (drift)</h2>{drift}')
    return layout(base, "trends", "Trends", body, alerts)


def _psi_chart(batches: list[dict[str, Any]], labels: list[str]) -> str:
    """Per-batch PSI of study OOD scores and slice probabilities against the validation slices,
    with the bound (batches without drift figures leave gaps)."""
    drifts = [b.get("drift") or {} for b in batches]
    if not any(drifts):
        return '<p class="empty">Drift against the validation slices (PSI): no data yet.</p>'

    def psi(name: str) -> list[float | None]:
        return [(d.get(name) or {}).get("psi") for d in drifts]

    return line_chart("Drift against the validation slices (PSI; over the bound: drift)", labels,
                      [Series("OOD score PSI", psi("ood_score")),
                       Series("probability PSI", psi("probability")),
                       Series("PSI bound", [d.get("psi_bound") for d in drifts])])


def _ood_reasons(reasons: Sequence[dict[str, Any]] | None) -> str:
    """Out-of-distribution reasons as HTML: 'statistic value > bound (share of slices)'."""
    return "; ".join(f"{e(r.get('statistic'))} {num(r.get('value'), 2)} &gt; "
                     f"{num(r.get('bound'), 2)} "
                     f"({num(100 * float(r.get('slices_over') or 0), 0)}% of slices)"
                     for r in reasons or [])


def scoring_page(base: str, batches: list[dict[str, Any]], studies: list[dict[str, Any]],
                 quarantined: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> str:
    """Recent batches, recently scored studies and quarantined studies."""
    q = lambda v: quote(v, safe="")  # noqa: E731
    brows = []
    for b in batches:
        seconds = None
        try:
            seconds = (datetime.fromisoformat(b["finished_at"])
                       - datetime.fromisoformat(b["started_at"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            pass
        quar = ", ".join(e(x.get("study_id")) for x in b.get("quarantined") or [])
        flagged = b.get("out_of_distribution") or []
        ood = "".join(f'<div><a href="{base}/scoring/{q(b["model_version"])}/'
                      f'{q(f.get("study_id") or "")}">{e(f.get("study_id"))}</a>: '
                      f'{_ood_reasons(f.get("reasons"))}</div>' for f in flagged)
        drift = b.get("drift") or {}
        drift_cell = (" · ".join(f'{e(k.replace("_", " "))} PSI '
                                 f'{num((drift.get(k) or {}).get("psi"))}'
                                 for k in ("ood_score", "probability"))
                      + (f' <span class="fail">over {num(drift.get("psi_bound"), 2)}: '
                         f'{e(", ".join(drift.get("exceeded") or []))}</span>'
                         if drift.get("exceeded") else "")) if drift else "—"
        brows.append(
            f'<tr id="batch-{anchor(b["run_id"])}"><td>{_run(SCORING_DAG, b["run_id"])}</td>'
            f'<td>{when(b.get("started_at"))}</td><td>{num(seconds, 1)} s</td>'
            f'<td>{e(b["model_version"])}</td><td>{e(b["studies_scored"])}</td>'
            f'<td>{e(b["studies_skipped"])}</td>'
            f'<td class="{"fail" if b["studies_quarantined"] else ""}">'
            f'{e(b["studies_quarantined"])}{(" (" + quar + ")") if quar else ""}</td>'
            f'<td>{e(b.get("studies_failed", "—"))}</td><td>{e(b["tumors_found"])}</td>'
            f'<td class="{"fail" if flagged else ""}">'
            f'{e(b.get("studies_out_of_distribution", "—"))}{ood}</td><td>{drift_cell}</td></tr>')
    batches_html = ('<table id="batches"><tr><th>run</th><th>started</th><th>duration</th>'
                    '<th>model</th><th>scored</th><th>skipped</th><th>quarantined</th>'
                    '<th>failed</th><th>tumors found</th><th>out of distribution</th>'
                    '<th>drift</th></tr>' + "".join(brows) + "</table>"
                    if brows else "<p>No scoring batches yet.</p>")
    srows = "".join(
        f'<tr><td><a href="{base}/scoring/{q(s["model_version"])}/{q(s["study_id"])}">'
        f'{e(s["study_id"])}</a></td><td>{e(s["model_version"])}</td><td>{when(s["at"])}</td>'
        f'<td>{_clinical_links(base, s)}</td></tr>'
        for s in studies)
    studies_html = ('<table id="studies"><tr><th>study</th><th>model</th><th>scored</th>'
                    '<th>DICOM SEG / NIfTI mask</th></tr>'
                    + srows + "</table>" if srows else "<p>No scored studies yet.</p>")
    qrows = "".join(f'<tr><td>{e(r.get("study_id"))}</td><td>{e(r.get("model_version"))}</td>'
                    f'<td>{e(r.get("reason"))}</td><td>{e(r.get("detail"))}</td>'
                    f'<td>{when(r.get("at"))}</td></tr>' for r in quarantined)
    quar_html = ('<table id="quarantine"><tr><th>study</th><th>model</th><th>reason</th>'
                 '<th>detail</th><th>when</th></tr>' + qrows + "</table>"
                 if qrows else "<p>No quarantined studies.</p>")
    body = (f"<h2>Recent batches</h2>{batches_html}<h2>Recently scored studies</h2>"
            f"{studies_html}<h2>Quarantined studies (champion)</h2>{quar_html}")
    return layout(base, "scoring", "Scoring", body, alerts)


#: summary.json field of a clinical output -> its link text
CLINICAL_LINKS = {"dicom_seg": "DICOM SEG", "nifti_mask": "NIfTI mask"}


def _clinical_links(base: str, summary: dict[str, Any]) -> str:
    """Download links to the clinical outputs a study's summary lists; "—" without any."""
    q = lambda v: quote(str(v), safe="")  # noqa: E731
    src = f"{base}/files/scores/{q(summary['model_version'])}/{q(summary['study_id'])}/clinical"
    links = [f'<a class="clinical" href="{src}/{field}">{text}</a>'
             for field, text in CLINICAL_LINKS.items() if summary.get(field)]
    return " · ".join(links) or "—"


def study_page(base: str, version: str, study: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    """One scored study: summary and pictures."""
    s = study["summary"]
    sid = s["study_id"]
    src = f"{base}/files/scores/{quote(version, safe='')}/{quote(sid, safe='')}"
    rows = "".join(f"<tr><th>{e(k.replace('_', ' '))}</th><td>{num(s.get(k), 4)}</td></tr>"
                   for k in ("study_id", "model_version", "dataset_version", "tumor_present",
                             "tumor_slices", "slices", "tumor_volume_voxels", "tumor_volume_ml",
                             "max_probability", "out_of_distribution", "ood_score",
                             "ood_slices", "withheld", "scored_at"))
    flag = ""
    if s.get("out_of_distribution"):
        flag = (f'<div class="ood" id="ood-flag"><strong>OUT OF DISTRIBUTION</strong>: this study '
                f'is unlike the model\'s training data; do not rely on its result'
                f'{" (masks and overlays withheld)" if s.get("withheld") else ""}. '
                f'Reasons: {_ood_reasons(s.get("ood_reasons"))}</div>')
    if s.get("ood_note"):
        flag += f'<p class="muted">Out-of-distribution check: {e(s["ood_note"])}</p>'
    pics = "".join(f'<figure><img src="{src}/overlays/{n}.png" alt="slice {n}">'
                   f'<figcaption>slice {n} · {NOTICE}</figcaption></figure>'
                   for n in study["overlays"])
    empty = ("<p>Withheld: the study is out of distribution.</p>" if s.get("withheld")
             else "<p>No slice over the threshold.</p>")
    clinical = _clinical_links(base, {**s, "model_version": version})
    if clinical != "—":
        sent = (f' · sent to the PACS ({e(s["pacs_sent"])})' if s.get("pacs_sent") else "")
        clinical = f'<p id="clinical">Clinical outputs: {clinical}{sent}</p>'
    else:
        clinical = ""
    body = (f'{flag}<table id="summary">{rows}</table>{clinical}<h2>Overview</h2>'
            f'<div class="pics">'
            f'<img src="{src}/overview.png" alt="overview of {e(sid)}"></div>'
            f'<h2>Tumor slices ({len(study["overlays"])})</h2>'
            f'<div class="pics">{pics or empty}</div>')
    return layout(base, "scoring", f"Study {sid}", body, alerts)


def card_page(base: str, version: str, markdown: str, alerts: list[dict[str, Any]]) -> str:
    """A model card (its Markdown shown as text)."""
    return layout(base, "models", f"Model card of {version}",
                  f"<pre>{escape(markdown)}</pre>", alerts)


def error_page(base: str, status: int, detail: str) -> str:
    """A short error page."""
    return layout(base, "", f"{status}", f"<p>{e(detail)}</p>", [])
