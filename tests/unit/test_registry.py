import pytest

from quantgate.errors import ConfigError
from quantgate.registry import (
    FileEntry,
    ModelRef,
    manifest_key,
    parse_registration_key,
    promoted_key,
    registered_model_key,
    registration_key,
    rejection_key,
    run_prefix,
    source_checksum,
)

REF = ModelRef(name="minilm", version="2024-06-01")


@pytest.mark.parametrize(
    "name", ["..", "a/b", "with space", "ctl\x07", "UPPER", "-lead", "trail-", "", "a" * 65, "a..b"]
)
def test_bad_model_names_are_refused(name):
    with pytest.raises((ConfigError, ValueError), match="model name"):
        ModelRef(name=name, version="v1")


@pytest.mark.parametrize("version", ["..", "v1/../x", "v 1", "v1\n", "", "v1..2", "/v1"])
def test_bad_versions_are_refused(version):
    with pytest.raises((ConfigError, ValueError), match="version"):
        ModelRef(name="m", version=version)


def test_every_key_carries_model_and_version():
    keys = [
        registration_key(REF),
        registered_model_key(REF, "1_Pooling/config.json"),
        manifest_key(REF),
        promoted_key(REF, "model.int8.onnx"),
        rejection_key(REF),
        run_prefix(REF, "abc"),
    ]
    for key in keys:
        assert "/minilm/2024-06-01/" in key
    assert registration_key(REF).startswith("registered/")
    assert manifest_key(REF) == "promoted/minilm/2024-06-01/manifest.json"
    assert rejection_key(REF) == "rejected/minilm/2024-06-01/report.json"


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b"])
def test_file_paths_cannot_escape_the_version_prefix(rel):
    with pytest.raises(ConfigError, match="unsafe file path"):
        registered_model_key(REF, rel)


def test_parse_registration_key_round_trips_and_ignores_other_keys():
    assert parse_registration_key(registration_key(REF)) == REF
    assert parse_registration_key("registered/minilm/v1/model/config.json") is None
    assert parse_registration_key("registered/BAD NAME/v1/registration.json") is None


def test_source_checksum_is_order_independent_and_content_sensitive():
    a = FileEntry(path="config.json", sha256="a" * 64, size=1)
    b = FileEntry(path="model.safetensors", sha256="b" * 64, size=2)
    assert source_checksum([a, b]) == source_checksum([b, a])
    assert source_checksum([a, b]) != source_checksum([a, b.model_copy(update={"sha256": "c" * 64})])
