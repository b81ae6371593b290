"""The S3 secret never shows: not in settings errors, logs, tracebacks, public dicts or CLI output.

Every settings error path is triggered with a known secret in the environment or the TOML file,
through ``load_settings``, ``brain_tumor.cli.main`` and the installed ``brain-tumor`` command.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brain_tumor.cli import main
from brain_tumor.settings import SettingsError, load_settings, settings_to_env

SECRET = "s3cr3t-value"
NUMERIC_SECRET = 987654321
BRAIN_TUMOR = Path(sys.executable).parent / "brain-tumor"
SECRET_ENV = "BRAIN_TUMOR_S3_SECRET_ACCESS_KEY"
KEY_ID_ENV = "BRAIN_TUMOR_S3_ACCESS_KEY_ID"  # the secret's partner: the two go together

#: (name, TOML text or None, environment): each one fails to load; the secret is in one source
CASES = [
    ("split-sum-env", None, {SECRET_ENV: SECRET, "BRAIN_TUMOR_SPLIT_TRAIN": "0.9"}),
    ("split-sum-env-last", None, {"BRAIN_TUMOR_SPLIT_TRAIN": "0.9", SECRET_ENV: SECRET}),
    ("bad-env-value", None, {SECRET_ENV: SECRET, "BRAIN_TUMOR_IMAGE_SIZE": "abc"}),
    ("bad-prefix-env", None, {SECRET_ENV: SECRET, "BRAIN_TUMOR_EXPORTS_PREFIX": "exports"}),
    ("unknown-env", None, {SECRET_ENV: SECRET, "BRAIN_TUMOR_NOPE": "1"}),
    ("bad-toml-value", f's3_secret_access_key = "{SECRET}"\nimage_size = "big"\n', {}),
    ("split-sum-toml", f's3_secret_access_key = "{SECRET}"\nsplit_train = 0.9\n', {}),
    ("numeric-secret-toml", f"s3_secret_access_key = {NUMERIC_SECRET}\n", {}),
    ("numeric-secret-and-split", f"s3_secret_access_key = {NUMERIC_SECRET}\nsplit_val = 0.5\n",
     {}),
    ("misspelled-secret-toml", f'[brain_tumor]\ns3_secret_acess_key = "{SECRET}"\n', {}),
    ("unknown-toml-and-split", f'split_test = 0.5\nnope = "{SECRET}"\n', {}),
    ("toml-secret-env-split", f's3_secret_access_key = "{SECRET}"\n',
     {"BRAIN_TUMOR_SPLIT_TEST": "0.3"}),
    ("env-secret-toml-bad", 'batch_size = "many"\nsplit_seed = []\n', {SECRET_ENV: SECRET}),
]
IDS = [c[0] for c in CASES]
SUBPROCESS_CASES = ["split-sum-env-last", "numeric-secret-toml", "misspelled-secret-toml"]


def _assert_hidden(text: str) -> None:
    assert SECRET not in text and str(NUMERIC_SECRET) not in text, text


def _config(tmp_path: Path, toml: str | None) -> str | None:
    if toml is None:
        return None
    path = tmp_path / "settings.toml"
    path.write_text(toml)
    return str(path)


@pytest.mark.parametrize(("name", "toml", "env"), CASES, ids=IDS)
def test_load_settings_errors_hide_the_secret(tmp_path, caplog, name, toml, env):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SettingsError) as err:
        load_settings(_config(tmp_path, toml), env=env)
    message = str(err.value)
    _assert_hidden(message)
    _assert_hidden(repr(err.value))
    _assert_hidden(caplog.text)
    cause = err.value.__cause__ or err.value.__context__
    _assert_hidden(str(cause) if cause is not None else "")
    assert message.startswith(("invalid settings", "unknown setting")), message


def test_errors_still_say_what_is_wrong(tmp_path):
    cfg = _config(tmp_path, f"s3_secret_access_key = {NUMERIC_SECRET}\n")
    with pytest.raises(SettingsError, match="s3_secret_access_key") as err:
        load_settings(cfg, env={})
    assert "int" in str(err.value)
    with pytest.raises(SettingsError, match=r"image_size.*received 'abc'"):
        load_settings(env={SECRET_ENV: SECRET, "BRAIN_TUMOR_IMAGE_SIZE": "abc"})
    with pytest.raises(SettingsError, match="sum to 1"):
        load_settings(env={SECRET_ENV: SECRET, "BRAIN_TUMOR_SPLIT_TRAIN": "0.9"})
    cfg = _config(tmp_path, f'[brain_tumor]\ns3_secret_acess_key = "{SECRET}"\n')
    with pytest.raises(SettingsError, match="unknown setting 's3_secret_acess_key'"):
        load_settings(cfg, env={})


@pytest.mark.parametrize(("name", "toml", "env"), CASES, ids=IDS)
def test_cli_errors_hide_the_secret(tmp_path, capsys, caplog, monkeypatch, name, toml, env):
    caplog.set_level(logging.DEBUG)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = _config(tmp_path, toml)
    for argv in (["settings"], ["--json", "settings"], ["-v", "-v", "settings"]):
        code = main((["--config", cfg] if cfg else []) + argv)
        out = capsys.readouterr()
        assert code == 2, (argv, out)
        assert "error:" in out.err
        _assert_hidden(out.out + out.err)
    _assert_hidden(caplog.text)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRAIN_TUMOR_")}
    return subprocess.run(args, env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(("name", "toml", "env"),
                         [c for c in CASES if c[0] in SUBPROCESS_CASES], ids=SUBPROCESS_CASES)
def test_command_and_tracebacks_hide_the_secret(tmp_path, name, toml, env):
    cfg = _config(tmp_path, toml)
    if cfg:
        env = {**env, "BRAIN_TUMOR_CONFIG": cfg}
    proc = _run([str(BRAIN_TUMOR), "-v", "settings"], env)
    assert proc.returncode == 2 and "error: " in proc.stderr, proc.stderr
    _assert_hidden(proc.stdout + proc.stderr)
    # a task that loads the settings itself dies with a traceback: no secret in it either
    proc = _run([sys.executable, "-c",
                 "from brain_tumor.settings import load_settings; load_settings()"], env)
    assert proc.returncode == 1 and "SettingsError" in proc.stderr, proc.stderr
    _assert_hidden(proc.stdout + proc.stderr)


def test_settings_output_and_env_consumers_hide_the_secret(tmp_path):
    settings = load_settings(env={KEY_ID_ENV: "AKIA-test", SECRET_ENV: SECRET})
    assert settings.s3_secret_access_key.get_secret_value() == SECRET
    _assert_hidden(repr(settings) + str(settings) + json.dumps(settings.public_dict()))
    env = settings_to_env(settings)
    assert env[SECRET_ENV] == SECRET  # the trainer container and subprocesses get the real one
    assert load_settings(env=env) == settings
    for args in (["settings"], ["--json", "settings"]):
        proc = _run([str(BRAIN_TUMOR), *args], env)
        assert proc.returncode == 0, proc.stderr
        assert "***" in proc.stdout
        _assert_hidden(proc.stdout + proc.stderr)
    proc = _run([str(BRAIN_TUMOR), "settings"], {**env, "BRAIN_TUMOR_SPLIT_VAL": "0.3"})
    assert proc.returncode == 2 and "sum to 1" in proc.stderr
    _assert_hidden(proc.stdout + proc.stderr)


def test_numeric_secret_through_env_is_a_string(tmp_path):
    env = {KEY_ID_ENV: "AKIA-test", SECRET_ENV: str(NUMERIC_SECRET)}
    settings = load_settings(env=env)
    assert settings.s3_secret_access_key.get_secret_value() == str(NUMERIC_SECRET)
    _assert_hidden(json.dumps(settings.public_dict()) + repr(settings))
