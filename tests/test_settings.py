"""Settings are checked when they are built: each bad VECQ_* variable stops start-up with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.auth import load_keys
from common import settings as settings_module
from common.settings import SettingsError, load


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VECQ_REDIS_URL", "VECQ_API_KEYS", "VECQ_API_KEYS_FILE", "VECQ_HEARTBEAT_TTL_S",
                 "VECQ_HEARTBEAT_INTERVAL_S"):
        monkeypatch.delenv(name, raising=False)


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load()
    return str(err.value)


@pytest.mark.parametrize(("env", "named"), [
    ({"VECQ_HEARTBEAT_INTERVAL_S": "5", "VECQ_HEARTBEAT_TTL_S": "5"}, "VECQ_HEARTBEAT_TTL_S"),
    ({"VECQ_SEARCH_WAIT_DEFAULT_S": "400"}, "VECQ_SEARCH_WAIT_DEFAULT_S"),
    ({"VECQ_MAX_K": "20000"}, "VECQ_MAX_K_WITH_OFFSET"),
    ({"VECQ_SEAL_TIME_LIMIT_S": "60"}, "VECQ_SEAL_TIME_LIMIT_S"),
    ({"VECQ_REDIS_URL": "http://127.0.0.1:6379"}, "VECQ_REDIS_URL"),
    ({"VECQ_MAX_K": "many"}, "VECQ_MAX_K"),
    ({"VECQ_API_KEYS": "s3cret key"}, "VECQ_API_KEYS"),
])
def test_bad_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    message = refused(monkeypatch, **env)
    assert named in message and "s3cret" not in message


def test_redis_url_is_a_dsn_and_empty_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load().redis_url is None  # `vecq up` then starts its own Redis
    monkeypatch.setenv("VECQ_REDIS_URL", "")
    assert load().redis_url is None
    monkeypatch.setenv("VECQ_REDIS_URL", "rediss://:pw@redis.example:6380/2?ssl_cert_reqs=none")
    s = load()
    assert s.redis_url is not None and s.redis_url.scheme == "rediss" and s.redis_url.path == "/2"
    assert s.effective_redis_url == "rediss://:pw@redis.example:6380/2?ssl_cert_reqs=none"


def test_api_keys_are_parsed_from_both_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nreader:team-*:ro\n")
    monkeypatch.setenv("VECQ_API_KEYS", "admin, writer:team-*:rw")
    monkeypatch.setenv("VECQ_API_KEYS_FILE", str(keys_file))
    s = load()
    assert [(k.pattern, k.can_write) for k in s.api_keys] == [("*", True), ("team-*", True), ("team-*", False)]
    assert "admin" not in repr(s.api_keys)
    ring = load_keys(s)
    reader = ring.lookup("reader")
    assert len(ring) == 3 and reader is not None and not reader.can_write and ring.lookup("team-*") is None


def test_api_keys_file_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert "VECQ_API_KEYS_FILE" in refused(monkeypatch, VECQ_API_KEYS_FILE=str(tmp_path / "missing"))
    keys_file = tmp_path / "keys"
    keys_file.write_text("s3cret-admin\n")
    message = refused(monkeypatch, VECQ_API_KEYS="s3cret-admin", VECQ_API_KEYS_FILE=str(keys_file))
    assert "twice" in message and "VECQ_API_KEYS_FILE" in message and "s3cret" not in message


def test_get_settings_is_load(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_module.get_settings.cache_clear()
    monkeypatch.setenv("VECQ_HEARTBEAT_TTL_S", "0.1")
    try:
        with pytest.raises(SettingsError, match="VECQ_HEARTBEAT_TTL_S"):
            settings_module.get_settings()
    finally:
        monkeypatch.delenv("VECQ_HEARTBEAT_TTL_S")
        settings_module.get_settings.cache_clear()
