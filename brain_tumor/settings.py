"""One typed settings object, loaded once at the boundary (CLI, task) and passed down.

Sources, later ones winning: the defaults below, an optional TOML file (``--config`` or
``BRAIN_TUMOR_CONFIG``), then ``BRAIN_TUMOR_<FIELD>`` environment variables.
Nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from brain_tumor.store.ids import MAX_KEY_BYTES, MAX_PREFIX_BYTES

ENV_PREFIX = "BRAIN_TUMOR_"
#: access key id and secret of the embedded S3 server (SeaweedFS on loopback, for development)
EMBEDDED_S3_KEYS = ("brain-tumor", "brain-tumor-secret")
CONFIG_ENV = "BRAIN_TUMOR_CONFIG"
PREFIX_FIELDS = ("exports_prefix", "datasets_prefix", "ledger_prefix", "models_prefix",
                 "registry_prefix", "incoming_prefix", "scores_prefix", "blobs_prefix")


class SettingsError(ValueError):
    """Settings could not be loaded: a bad file, an unknown key or a bad value.

    The message never holds the value of a secret field (see ``load_settings``).
    """


class Settings(BaseModel):
    """Every knob of the pipeline. Field ``x`` is set by ``BRAIN_TUMOR_X``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- object storage (S3 API) ---
    s3_endpoint_url: str | None = Field(
        "http://127.0.0.1:8333",
        description="S3 endpoint; empty for AWS S3. The default is the embedded SeaweedFS server.",
    )
    s3_bucket: str = Field("brain-tumor", description="Bucket that holds every object.")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = Field(
        None, description="Access key id, with s3_secret_access_key (both or neither); unset: "
                          "boto3's default credential chain (AWS_ACCESS_KEY_ID/"
                          "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the instance or pod role), or the "
                          "embedded server's keys when the endpoint is the embedded server.")
    s3_secret_access_key: SecretStr | None = Field(None, description="Secret of the access key.")
    s3_root: str = Field("", description="Optional key prefix under which all prefixes live.")
    s3_max_attempts: int = Field(5, ge=1, description="Attempts per S3 call (retries on errors).")
    s3_connect_timeout_s: float = Field(5.0, gt=0)
    io_workers: int = Field(8, ge=1, description="Threads for parallel S3 reads and writes.")

    exports_prefix: str = "exports/"
    datasets_prefix: str = "datasets/"
    ledger_prefix: str = "ledger/"
    models_prefix: str = "models/"
    registry_prefix: str = "registry/"
    incoming_prefix: str = "incoming/"
    scores_prefix: str = "scores/"
    blobs_prefix: str = Field("slices/", description="Content-addressed slice and mask files.")

    # --- embedded S3 server (SeaweedFS `weed mini`) ---
    home: Path = Field(Path("~/.brain-tumor"), description="Local state: S3 data, logs, caches.")
    embedded_s3_port: int = Field(8333, ge=1, le=65535)
    embedded_s3_port_base: int = Field(
        19300, ge=1024, le=65000, description="First of the internal SeaweedFS ports (about 10)."
    )

    # --- ingest ---
    max_quarantine_fraction: float = Field(
        0.2, ge=0, le=1,
        description="Fail the ingest when more than this share of files is rejected."
    )
    expected_slice_size: int | None = Field(
        None, ge=1, description="Reject slices whose height or width differs; unset accepts any."
    )
    incomplete_after_minutes: float = Field(
        60.0, ge=0, description="An export folder or incoming study without its manifest is "
                                "never taken; once its newest file is this many minutes old it "
                                "is reported (an upload killed, or a copy never sealed)."
    )
    ingest_lease_minutes: float = Field(
        120.0, gt=0, description="An ingest holds a lease on its export for this long; a second "
                                 "ingest of it stops at once, and takes over a lease past it "
                                 "(the holder was killed)."
    )

    # --- limits (hostile input: docs/reliability.md) ---
    max_file_bytes: int = Field(
        32 * 2**20, ge=1, description="Largest slice or mask file, in bytes: a bigger export file "
                                      "or archive member is quarantined as too_large (its bytes "
                                      "are not kept), a bigger incoming slice rejects its study.")
    max_slice_pixels: int = Field(
        2048 * 2048, ge=1, description="Most pixels (width x height, read from the TIFF header "
                                       "before decoding) of one slice or mask; more is too_large.")
    max_study_slices: int = Field(
        512, ge=1, description="Most slices of one incoming study; more rejects it as "
                               "too_many_slices before any slice is read.")
    max_study_pixels: int = Field(
        128 * 2**20, ge=1, description="Most pixels of all slices of one incoming study "
                                       "together (3 bytes each once decoded); more rejects it as "
                                       "too_large.")
    max_extracted_bytes: int = Field(
        4 * 2**30, ge=1, description="Most bytes one export archive may extract to; past it "
                                     "extraction stops and the export is rejected.")
    max_archive_ratio: float = Field(
        100.0, ge=1, description="Most an export archive may extract to as a multiple of its "
                                 "own size (once past max_file_bytes); past it extraction stops "
                                 "and the export is rejected as an archive bomb.")

    # --- split ---
    split_train: float = Field(0.7, gt=0, lt=1)
    split_val: float = Field(0.15, gt=0, lt=1)
    split_test: float = Field(0.15, gt=0, lt=1)
    split_seed: int = 42
    split_min_tumor_slices: int = Field(1, ge=0)

    # --- models ---
    image_size: int = Field(256, ge=16, description="Model input size (slices are resized).")
    keras_backend: Literal["tensorflow", "jax", "torch"] = "tensorflow"
    backbone: Literal["resnet50", "tiny"] = Field(
        "resnet50", description="Classifier backbone; 'tiny' is a small conv stack for tests.")
    weights: str | None = Field(
        None, description="Backbone weights: 'imagenet', a path to a .h5 weights file, or unset.")
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(20, ge=1, description="Classifier epochs (frozen phase with weights).")
    fine_tune_epochs: int = Field(5, ge=0, description="Top-block fine-tuning epochs (weights).")
    learning_rate: float = Field(1e-3, ge=0)
    fine_tune_learning_rate: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0, description="Linear learning-rate warm-up epochs.")
    early_stopping_patience: int = Field(5, ge=1)
    reduce_lr_patience: int = Field(2, ge=1)
    dense_units: int = Field(256, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    seg_base_filters: int = Field(16, ge=1, description="U-Net filters at the first level.")
    seg_depth: int = Field(4, ge=1, le=6, description="U-Net levels (image_size % 2**depth == 0)"
                                                      "; the unet encoder only.")
    seg_context: int = Field(
        0, ge=0, le=3, description="2.5D: the FLAIR of this many neighbouring slices on each "
                                   "side joins the segmenter's input (3 + 2k channels); 0: the "
                                   "slice alone. The unet encoder only.")
    seg_encoder: Literal["unet", "backbone"] = Field(
        "unet", description="Segmenter encoder: unet (its own, seg_depth levels), or backbone "
                            "(the classifier's backbone, started from the trained classifier's "
                            "weights: one backbone for both tasks; image_size divisible by 32 "
                            "for resnet50).")
    seg_epochs: int = Field(20, ge=1)
    seg_learning_rate: float = Field(1e-3, ge=0)
    seg_tumor_fraction: float = Field(
        0.5, ge=0, lt=1, description="Share of each segmenter training batch drawn from tumor "
                                     "slices (oversampling); 0: plain shuffled batches.")
    seg_loss: Literal["per_sample_dice", "batch_dice_bce"] = Field(
        "batch_dice_bce", description="Segmenter loss: per-sample soft Dice + BCE, or one soft "
                                      "Dice over the whole batch + BCE.")
    intensity_norm: Literal["none", "volume_percentile"] = Field(
        "none", description="Per-study intensity normalization of the model input: none, or "
                            "each channel scaled by the 1st-99th percentiles of the brain region "
                            "(non-zero voxels); applied alike in training and scoring.")
    train_seed: int = 1
    augment: bool = Field(True, description="Flips, small rotations/shifts, intensity jitter.")
    max_train_slices: int | None = Field(None, ge=1, description="Cap on training slices.")
    mask_threshold: float = Field(0.5, gt=0, lt=1, description="Segmenter probability cut-off.")
    threshold_rule: Literal["youden", "f1"] = Field(
        "youden", description="How the classifier threshold is chosen on validation patients.")
    postprocess_min_sensitivity: float = Field(
        0.92, ge=0, le=1, description="Slice-sensitivity floor the whole-study post-processing "
                                      "is tuned under on validation patients (final labels).")
    postprocess_max_fp_per_patient: float = Field(
        0.5, ge=0, description="Ceiling on false-positive slices per validation patient the "
                               "whole-study post-processing is tuned under (final labels).")
    bootstrap_samples: int = Field(1000, ge=10, description="Resamples for 95% intervals.")
    ood_max_train_slices: int = Field(
        2000, ge=3, description="Training slices (sampled with train_seed) the out-of-"
                                "distribution reference is fitted on.")
    ood_slice_rate: float = Field(
        0.01, gt=0, lt=1, description="Share of validation slices allowed over each out-of-"
                                      "distribution bound (the bound's quantile); chosen with "
                                      "ood_study_share by bench/ood_design.py on training "
                                      "patients held out by cross-fitting, never test ones.")
    ood_study_share: float = Field(
        0.6, gt=0, le=1, description="A study is flagged out of distribution when this share "
                                     "of its slices is over a bound (see ood_slice_rate).")
    ood_study_rate: float = Field(
        0.05, gt=0, lt=1, description="Share of held-out in-distribution studies (training "
                                      "patients out of fold, validation patients) allowed over "
                                      "a study-level bound: the study detector's and the "
                                      "geometry criterion's together (ood.GEOMETRY_SHARE of it "
                                      "for the latter); chosen by bench/ood_design.py, never on "
                                      "test patients.")

    # --- where training runs (retraining DAG) ---
    trainer: Literal["local", "docker"] = Field(
        "local", description="local: `brain-tumor train` as a process on the worker (embedded "
                             "default); docker: the trainer image through DockerOperator.")
    trainer_image: str = Field("brain-tumor-trainer:cpu-latest", description="Trainer image.")
    docker_url: str = Field("unix://var/run/docker.sock", description="Docker engine of the "
                                                                      "GPU host.")
    docker_gpus: int = Field(-1, ge=-1, description="GPUs to request (-1 all, 0 none).")
    docker_network_mode: str = Field("host", description="Container network (S3 must be "
                                                         "reachable from it).")
    docker_mounts: str = Field("", description="Comma-separated host:container[:ro] binds.")
    docker_tls_ca_cert: str | None = Field(
        None, description="CA certificate (path on the worker) that signed the GPU host's "
                          "Docker engine certificate; set to talk TLS to a tcp:// engine.")
    docker_tls_client_cert: str | None = Field(
        None, description="Client certificate (path on the worker) for the Docker engine.")
    docker_tls_client_key: str | None = Field(
        None, description="Client key (path on the worker) for the Docker engine.")
    train_pool: str = Field("brain_tumor_gpu", description="Airflow pool sized to the GPUs.")
    train_timeout_minutes: int = Field(
        720, ge=1, description="execution_timeout of retrain_nightly's train task (each try).")
    retrain_dagrun_timeout_minutes: int = Field(
        1320, ge=1, description="dagrun_timeout of retrain_nightly: a run still going after this "
                                "is failed; longer than the train timeout.")
    scoring_dagrun_timeout_minutes: int = Field(
        180, ge=1, description="dagrun_timeout of batch_score: a run still going after this is "
                               "failed.")
    s3_conn_id: str | None = Field(
        None, description="Airflow connection (type aws) whose login, password and extra "
                          "endpoint_url replace the S3 settings for the trainer container.")

    # --- scoring (batch_score DAG) ---
    scoring_schedule: str = Field(
        "*/10 * * * *", description="Cron (UTC) on which the scoring DAG looks for new studies; "
                                    "a champion change also starts a run.")
    scoring_max_studies_per_run: int = Field(
        32, ge=1, description="Studies one scoring run takes on; a backlog is worked off over "
                              "several runs.")
    scoring_parallelism: int = Field(
        2, ge=1, description="Chunks of studies scored at once within one run (mapped tasks).")
    scoring_chunk_size: int = Field(
        8, ge=1, description="Studies one mapped score task takes on, one after the other: "
                             "the model is loaded once per chunk.")
    rescore_window_days: float = Field(
        7.0, ge=0, description="After a champion change, studies that arrived within this many "
                               "days are re-scored with it; older scored studies keep their "
                               "result.")
    scoring_queue: str = Field(
        "scoring", description="Celery queue of the tasks that need TensorFlow: scoring, "
                               "evaluation and gate, local training (the ML workers).")

    # --- clinical studies (DICOM, NIfTI): which series is which channel ---
    series_flair_keywords: str = Field(
        "flair,dark fluid,dark-fluid,darkfluid",
        description="Comma list: a series whose description holds one (case-insensitive) is "
                    "the FLAIR, unless it also holds a T1 keyword.")
    series_t1_post_keywords: str = Field(
        "post,+c,gd,gad,contrast,t1c",
        description="Comma list: a series whose description holds one, and no pre-contrast "
                    "keyword, is the post-contrast T1.")
    series_t1_keywords: str = Field(
        "t1,mprage,spgr,bravo",
        description="Comma list: any other series whose description holds one is the "
                    "pre-contrast T1.")
    series_pre_contrast_keywords: str = Field(
        "pre,w/o,without,non-contrast,native",
        description="Comma list: keywords that mark a T1 series as taken before contrast.")
    engine: Literal["auto", "onnx", "openvino", "keras"] = Field(
        "auto", description="Scoring engine: the model version's ONNX export on ONNX Runtime "
                            "('onnx') or OpenVINO ('openvino'), 'keras', or 'auto' (the export on "
                            "OpenVINO where installed, else ONNX Runtime, when the version has "
                            "it and the worker has no GPU; else Keras).")
    engine_threads: int = Field(0, ge=0, description="Threads the ONNX engine uses per model "
                                                     "(0: the runtime's default, one per core).")
    engine_precision: Literal["f32", "bf16"] = Field(
        "f32", description="Arithmetic of the OpenVINO engine: 'f32', or 'bf16' (bfloat16, on "
                           "cores with AVX512-BF16 or AMX; check it against f32 on the "
                           "validation patients with bench/precision.py first). ONNX Runtime "
                           "and Keras compute in f32 only.")
    engine_batch_size: int = Field(0, ge=0, description="Slices per model call of the ONNX "
                                                        "engine (0: batch_size).")
    engine_pack_slices: int = Field(
        128, ge=0, description="Batch scoring predicts consecutive studies together until they "
                               "hold this many slices, in batches that span study boundaries "
                               "(0: one study per model call).")
    ood_withhold: bool = Field(
        False, description="Withhold the masks and overlays of a study flagged out of "
                           "distribution (it is still scored; summary.json says withheld).")

    # --- PACS (DICOMweb) as the scoring source (brain_tumor/store/pacs.py) ---
    scoring_source: Literal["incoming", "dicomweb"] = Field(
        "incoming", description="Where batch scoring finds studies: 'incoming' (what is "
                                "uploaded under incoming/), or 'dicomweb' (a PACS: due studies "
                                "are fetched into incoming/ first, and each study's DICOM SEG "
                                "is stored back in the PACS).")
    dicomweb_url: str | None = Field(
        None, description="DICOMweb root of the PACS (QIDO-RS, WADO-RS and STOW-RS under it), "
                          "e.g. http://pacs:8042/dicom-web.")
    dicomweb_username: str | None = Field(
        None, description="User of the PACS (HTTP basic authentication); unset: none.")
    dicomweb_password: SecretStr | None = Field(None, description="Password of dicomweb_username.")
    dicomweb_conn_id: str | None = Field(
        None, description="Airflow connection (http) whose host, port, schema or extra 'path', "
                          "login and password replace dicomweb_url, dicomweb_username and "
                          "dicomweb_password in the tasks.")
    dicomweb_window_days: float = Field(
        3.0, gt=0, description="Studies whose StudyDate lies within this many days before the "
                               "run are looked for in the PACS.")
    dicomweb_stable_minutes: float = Field(
        10.0, ge=0, description="A PACS study is fetched once its instance count has not "
                                "changed for this many minutes (studies arrive instance by "
                                "instance).")
    dicomweb_timeout_s: float = Field(
        60.0, gt=0, description="Timeout of one DICOMweb request (connect and each read).")

    # --- alerts (plugins/brain_tumor_airflow/alerts.py) ---
    alert_notifiers: str | None = Field(
        None, description="Comma list of Airflow notifiers each alert goes to besides the log "
                          "line: smtp, slack, apprise; unset: log only.")
    alert_smtp_conn_id: str = Field("smtp_default", description="Airflow connection of the "
                                    "smtp notifier's mail server.")
    alert_email_to: str | None = Field(None, description="Comma list of alert recipients "
                                       "(needed by the smtp notifier).")
    alert_email_from: str | None = Field(None, description="Sender of alert e-mails; unset: the "
                                         "connection's from_email extra.")
    alert_slack_conn_id: str = Field("slack_api_default",
                                     description="Airflow connection of the slack notifier.")
    alert_slack_channel: str = Field("#brain-tumor-alerts",
                                     description="Channel the slack notifier posts to.")
    alert_apprise_conn_id: str = Field("apprise_default",
                                       description="Airflow connection of the apprise notifier.")

    # --- metrics ---
    statsd_host: str | None = Field(
        None, description="StatsD server (UDP) the pipeline's metrics go to, beside Airflow's "
                          "own (e.g. a statsd-exporter); unset: no metrics are sent.")
    statsd_port: int = Field(8125, ge=1, le=65535, description="UDP port of the StatsD server.")
    statsd_prefix: str = Field(
        "brain_tumor", pattern=r"^[A-Za-z0-9_.-]*$",
        description="Prefix of every metric name (letters, digits, '_', '.', '-'; may be empty).")

    # --- tracking ---
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking server (http://host:5000) that mirrors trainings, "
                          "evaluations and the champion; unset: no MLflow. The S3 registry "
                          "stays the source of truth.")
    mlflow_experiment: str = Field("brain-tumor", description="MLflow experiment of the "
                                                              "training runs.")
    mlflow_model_name: str = Field("brain-tumor-detector", description="MLflow registered model "
                                   "whose 'champion' alias follows the champion.")

    # --- promotion gate ---
    gate_min_sensitivity: float = Field(0.80, ge=0, le=1, description="Slice sensitivity floor.")
    gate_min_roc_auc: float = Field(0.85, ge=0, le=1, description="Slice ROC-AUC floor.")
    gate_min_dice: float = Field(0.50, ge=0, le=1, description="Per-patient Dice (mean) floor.")
    gate_max_fp_per_patient: float | None = Field(
        None, ge=0, description="Ceiling on false-positive slices per patient; unset: no check.")
    gate_tolerance: float = Field(
        0.02, ge=0, le=1, description="Allowed drop against the champion on the same patients.")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.seg_encoder == "backbone" and self.seg_context:
            raise ValueError(f"seg_context {self.seg_context} needs seg_encoder 'unet': the "
                             "backbone encoder reads three channels")
        total = self.split_train + self.split_val + self.split_test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1, received train={self.split_train} "
                f"val={self.split_val} test={self.split_test} (sum {total})"
            )
        for name in PREFIX_FIELDS:
            value = getattr(self, name)
            if not value.endswith("/") or value.startswith("/"):
                raise ValueError(f"{name} must end with '/' and not start with it, "
                                 f"received {value!r}")
            size = len((self.s3_root + value).encode("utf-8"))
            if size > MAX_PREFIX_BYTES:
                raise ValueError(
                    f"s3_root + {name} must be at most {MAX_PREFIX_BYTES} bytes, so that keys "
                    f"with ids fit in S3's {MAX_KEY_BYTES}-byte limit; received {size} bytes "
                    f"({self.s3_root + value!r:.80})")
        return self

    @model_validator(mode="after")
    def _check_s3_keys(self) -> Settings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            given = "s3_access_key_id" if self.s3_secret_access_key is None else \
                "s3_secret_access_key"
            raise ValueError(f"s3_access_key_id and s3_secret_access_key go together (set both, "
                             f"or neither for boto3's default credential chain); received only "
                             f"{given}")
        return self

    @model_validator(mode="after")
    def _check_pacs(self) -> Settings:
        if self.scoring_source == "dicomweb" and not (self.dicomweb_url
                                                      or self.dicomweb_conn_id):
            raise ValueError("scoring_source 'dicomweb' needs the PACS: set dicomweb_url, or "
                             "dicomweb_conn_id (an Airflow connection); received neither")
        return self

    @property
    def s3_is_embedded(self) -> bool:
        """Whether the S3 endpoint is the embedded server (127.0.0.1 or localhost, its port)."""
        url = (self.s3_endpoint_url or "").rstrip("/")
        return url in (f"http://127.0.0.1:{self.embedded_s3_port}",
                       f"http://localhost:{self.embedded_s3_port}")

    def s3_keys(self) -> tuple[str, SecretStr] | None:
        """The keys S3 requests are signed with; None: boto3's default credential chain.

        The settings' own keys when set; unset, the embedded server's keys when the endpoint is
        the embedded server (so it works out of the box), else None.
        """
        if self.s3_access_key_id is not None and self.s3_secret_access_key is not None:
            return self.s3_access_key_id, self.s3_secret_access_key
        if self.s3_is_embedded:
            return EMBEDDED_S3_KEYS[0], SecretStr(EMBEDDED_S3_KEYS[1])
        return None

    def key(self, prefix_field: str, *parts: str) -> str:
        """Full object key: ``s3_root`` + the named prefix + parts joined by '/'."""
        prefix = getattr(self, f"{prefix_field}_prefix")
        return self.s3_root + prefix + "/".join(p.strip("/") for p in parts if p)

    @property
    def home_dir(self) -> Path:
        """The expanded local state folder."""
        return self.home.expanduser()

    def public_dict(self) -> dict[str, Any]:
        """Every setting as JSON-ready values, secrets masked (saved beside outputs)."""
        data = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            data[name] = "***"
        return data


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The settings as BRAIN_TUMOR_* variables, to hand to a subprocess or a container."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[ENV_PREFIX + name.upper()] = "" if value is None else str(value)
    return env


_OPTIONAL_FIELDS = tuple(name for name, info in Settings.model_fields.items()
                         if type(None) in typing.get_args(info.annotation))
#: fields whose values no message, log line or output shows
SECRET_FIELDS = tuple(name for name, info in Settings.model_fields.items()
                      if info.annotation is SecretStr
                      or SecretStr in typing.get_args(info.annotation))


def _unknown(name: str) -> str:
    return f"unknown setting {name}; known: {', '.join(sorted(Settings.model_fields))}"


def describe_errors(exc: ValidationError) -> str:
    """One line per problem of a failed validation, naming received values except secret ones.

    Built from pydantic's error list, not its text: a value is shown only for a known field that
    is not secret; an unknown key (possibly a misspelled secret) and a whole-settings check (whose
    input is every value) show none.
    """
    lines = []
    for err in exc.errors(include_url=False, include_context=False, include_input=True):
        loc = err["loc"]
        field = str(loc[0]) if loc else ""
        where = ".".join(str(part) for part in loc)
        if err["type"] == "extra_forbidden":
            lines.append(_unknown(repr(field)))
        elif field in SECRET_FIELDS:
            kind = type(err["input"]).__name__
            lines.append(f"{where}: {err['msg']} (received a value of type {kind}; "
                         f"the value is not shown)")
        elif field in Settings.model_fields:
            lines.append(f"{where}: {err['msg']}, received {err['input']!r:.80}")
        else:
            lines.append(err["msg"].removeprefix("Value error, "))
    return "; ".join(lines)


def _hide_secrets(message: str, values: Mapping[str, Any]) -> str:
    """message with the raw value of every secret field replaced by '***'."""
    for name in SECRET_FIELDS:
        raw = values.get(name)
        text = raw.get_secret_value() if isinstance(raw, SecretStr) else \
            "" if raw is None else str(raw)
        if text:
            message = message.replace(text, "***")
    return message


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    fields = Settings.model_fields
    values: dict[str, str] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        field = name[len(ENV_PREFIX):].lower()
        if field not in fields:
            raise SettingsError(_unknown(name))
        values[field] = raw
    for optional in _OPTIONAL_FIELDS:  # an empty variable unsets an optional setting
        if values.get(optional, None) == "":
            values[optional] = None  # type: ignore[assignment]
    return values


def _file_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    return data.get("brain_tumor", data)


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings from defaults, an optional TOML file, the environment and overrides.

    A SettingsError says what is wrong; it never holds a secret value and chains no pydantic
    error (whose text would show them).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = config_file or env.get(CONFIG_ENV) or None
    if config_file:
        values.update(_file_values(Path(config_file)))
    values.update(_env_values(env))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        message = _hide_secrets(f"invalid settings: {describe_errors(exc)}", values)
    raise SettingsError(message) from None  # pydantic's own text shows every input value
