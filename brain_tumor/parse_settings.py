"""The few settings the DAG files read while they are parsed, loaded without the others.

The scheduler and the DAG processor import the DAG files for their schedule, queues, pool,
trainer kind and timeouts, and nothing else. Each DAG file names the fields it reads;
``load_parse_settings`` reads only their ``BRAIN_TUMOR_<FIELD>`` variables (and those keys of the
``BRAIN_TUMOR_CONFIG`` TOML file) and ignores every other ``BRAIN_TUMOR_*`` name, so a variable
meant for the tasks or for the other DAG, unknown or broken, cannot make a DAG disappear: the
tasks load the full settings at run time and fail there, saying why. A bad value among the
named ones fails the import, naming the variable and what it received (no secret is among
them, so no secret is ever read or shown here).

Every field takes its definition (type, default, bounds, description) from
:class:`brain_tumor.settings.Settings`.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from brain_tumor.settings import CONFIG_ENV, ENV_PREFIX, Settings, SettingsError, _file_values

#: ``Settings`` fields the DAG files read while they are parsed
PARSE_FIELDS = ("scoring_schedule", "scoring_queue", "scoring_parallelism",
                "scoring_chunk_size", "trainer",
                "train_pool", "train_timeout_minutes", "retrain_dagrun_timeout_minutes",
                "scoring_dagrun_timeout_minutes")
#: cron presets Airflow accepts that croniter does not
_AIRFLOW_PRESETS = {"@quarterly": "0 0 1 */3 *"}


class _ParseSettingsBase(BaseModel):
    """Checks on the parse-time settings that need a cron parser or span fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("scoring_schedule", check_fields=False)
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter  # ships with Airflow, the only place DAG files parse

        if not croniter.is_valid(_AIRFLOW_PRESETS.get(value, value)):
            raise ValueError("not a cron expression (5 fields, or a preset like '@daily')")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> _ParseSettingsBase:
        train = getattr(self, "train_timeout_minutes", None)
        run = getattr(self, "retrain_dagrun_timeout_minutes", None)
        if train is not None and run is not None and run <= train:
            raise ValueError(f"{variable('retrain_dagrun_timeout_minutes')} must exceed "
                             f"{variable('train_timeout_minutes')}, received {run} <= {train}")
        return self


#: every parse-time field: (type, definition), from ``Settings``
FIELDS = {name: (Settings.model_fields[name].annotation, Settings.model_fields[name])
          for name in PARSE_FIELDS}


@cache
def parse_settings_model(names: tuple[str, ...]) -> type[BaseModel]:
    """The settings model of the named parse-time fields only (what one DAG file declares)."""
    unknown = [name for name in names if name not in FIELDS]
    if unknown:
        raise ValueError(f"not parse-time settings: {unknown}; known: {', '.join(FIELDS)}")
    return create_model(
        "ParseSettings", __base__=_ParseSettingsBase, __module__=__name__,
        __doc__="What a DAG file reads while it is parsed. Field ``x`` is set by "
                "``BRAIN_TUMOR_X``.",
        **{name: FIELDS[name] for name in names})


def variable(name: str) -> str:
    """The environment variable that sets a field."""
    return ENV_PREFIX + name.upper()


def _raw_values(fields: Mapping[str, Any],
                env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, where each came from) of the given fields only; the env wins over the file."""
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    config_file = env.get(CONFIG_ENV) or None
    if config_file:
        for name, value in _file_values(Path(config_file)).items():
            if name in fields:
                values[name], source[name] = value, f"{name} in {config_file}"
    for name, info in fields.items():
        raw = env.get(variable(name))
        if raw is None:
            continue
        optional = type(None) in typing.get_args(info.annotation)
        values[name], source[name] = (None if raw == "" and optional else raw), variable(name)
    return values, source


def _describe(exc: ValidationError, values: Mapping[str, Any], source: Mapping[str, str]) -> str:
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else None
        if field is None:
            parts.append(error["msg"].removeprefix("Value error, "))
            continue
        where = source.get(field, f"{variable(field)} (default)")
        msg = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}, received {values.get(field)!r}")
    return "; ".join(parts)


def load_parse_settings(names: Iterable[str], env: Mapping[str, str] | None = None) -> Any:
    """The named parse-time settings from the environment (default: os.environ), nothing else."""
    model = parse_settings_model(tuple(names))
    env = os.environ if env is None else env
    values, source = _raw_values(model.model_fields, env)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(f"invalid parse-time setting {_describe(exc, values, source)}") from exc
