from pathlib import Path

import pytest

from brain_tumor.settings import SettingsError, load_settings


def test_defaults_point_at_embedded_server():
    s = load_settings(env={})
    assert s.s3_endpoint_url == "http://127.0.0.1:8333"
    assert s.s3_bucket == "brain-tumor"
    assert (s.split_train, s.split_val, s.split_test) == (0.7, 0.15, 0.15)


def test_env_overrides_file_and_file_overrides_defaults(tmp_path: Path):
    cfg = tmp_path / "bt.toml"
    cfg.write_text('[brain_tumor]\ns3_bucket = "from-file"\nimage_size = 64\nsplit_seed = 7\n')
    s = load_settings(cfg, env={"BRAIN_TUMOR_IMAGE_SIZE": "128"})
    assert (s.s3_bucket, s.image_size, s.split_seed) == ("from-file", 128, 7)


def test_config_file_from_env(tmp_path: Path):
    cfg = tmp_path / "bt.toml"
    cfg.write_text('s3_bucket = "flat"\n')
    assert load_settings(env={"BRAIN_TUMOR_CONFIG": str(cfg)}).s3_bucket == "flat"


def test_empty_endpoint_means_aws():
    assert load_settings(env={"BRAIN_TUMOR_S3_ENDPOINT_URL": ""}).s3_endpoint_url is None


@pytest.mark.parametrize("env, needle", [
    ({"BRAIN_TUMOR_NOPE": "1"}, "unknown setting BRAIN_TUMOR_NOPE"),
    ({"BRAIN_TUMOR_IMAGE_SIZE": "abc"}, "image_size"),
    ({"BRAIN_TUMOR_SPLIT_TRAIN": "0.9"}, "sum to 1"),
    ({"BRAIN_TUMOR_EXPORTS_PREFIX": "exports"}, "must end with '/'"),
])
def test_bad_values_are_named(env, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(env=env)


def test_missing_or_bad_file(tmp_path: Path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, env={})


def test_secret_is_masked_and_keys_compose():
    s = load_settings(env={"BRAIN_TUMOR_S3_ROOT": "proj/"})
    assert s.public_dict()["s3_secret_access_key"] == "***"
    assert "brain-tumor-secret" not in repr(s)
    assert s.key("datasets", "v1", "manifest.parquet") == "proj/datasets/v1/manifest.parquet"


def test_env_round_trip():
    from brain_tumor.settings import settings_to_env

    s = load_settings(env={}, s3_endpoint_url=None, image_size=96, expected_slice_size=None)
    assert load_settings(env=settings_to_env(s)) == s


def test_errors_never_show_the_secret(tmp_path: Path):
    cfg = tmp_path / "bt.toml"
    cfg.write_text("s3_secret_access_key = 4242424242\nsplit_train = 0.5\n")
    with pytest.raises(SettingsError, match="s3_secret_access_key.*not shown") as err:
        load_settings(cfg, env={})
    assert "4242424242" not in str(err.value) and err.value.__cause__ is None
    with pytest.raises(SettingsError, match="sum to 1") as err:
        load_settings(env={"BRAIN_TUMOR_SPLIT_VAL": "0.5",
                           "BRAIN_TUMOR_S3_SECRET_ACCESS_KEY": "hush-hush"})
    assert "hush-hush" not in str(err.value)


def test_values_of_other_fields_are_named():
    with pytest.raises(SettingsError, match=r"batch_size: .* received '0'"):
        load_settings(env={"BRAIN_TUMOR_BATCH_SIZE": "0"})


def test_prefixes_leave_room_for_ids():
    from brain_tumor.store.ids import MAX_PREFIX_BYTES

    with pytest.raises(SettingsError, match="must be at most 512 bytes"):
        load_settings(env={"BRAIN_TUMOR_S3_ROOT": "x" * MAX_PREFIX_BYTES})
    assert load_settings(env={"BRAIN_TUMOR_S3_ROOT": "x" * (MAX_PREFIX_BYTES - 9)}).s3_root


def test_scoring_from_a_pacs_needs_its_address():
    with pytest.raises(SettingsError, match="dicomweb_url, or dicomweb_conn_id"):
        load_settings(env={"BRAIN_TUMOR_SCORING_SOURCE": "dicomweb"})
    by_url = load_settings(env={"BRAIN_TUMOR_SCORING_SOURCE": "dicomweb",
                                "BRAIN_TUMOR_DICOMWEB_URL": "http://pacs:8042/dicom-web"})
    assert by_url.dicomweb_url == "http://pacs:8042/dicom-web"
    by_conn = load_settings(env={"BRAIN_TUMOR_SCORING_SOURCE": "dicomweb",
                                 "BRAIN_TUMOR_DICOMWEB_CONN_ID": "pacs"})
    assert by_conn.dicomweb_conn_id == "pacs"
