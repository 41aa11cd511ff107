"""config.toml: every kind of mistake names the key; secrets only from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from posguard.supervisor.config import Config, ConfigError, load_config, load_secrets, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_config_toml_is_exactly_the_defaults() -> None:
    assert load_config(REPO / "config.toml") == Config()


def test_unknown_key_is_named_with_its_table() -> None:
    with pytest.raises(ConfigError, match=r"verification\.push_dedline: unknown key"):
        parse_config("[verification]\npush_dedline = 2.0\n")


def test_wrong_type_names_the_key_and_the_expected_type() -> None:
    with pytest.raises(ConfigError, match=r"protection\.stop_attempts: expected `int`, got `str`"):
        parse_config('[protection]\nstop_attempts = "five"\n')


def test_out_of_range_value_names_the_key_and_the_bound() -> None:
    with pytest.raises(ConfigError, match=r"verification\.hard_deadline: expected `float` > 0\.0"):
        parse_config("[verification]\nhard_deadline = 0\n")


def test_wrong_choice_lists_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"venue\.kind: .*expected one of: fake, bybit, binanceusdm"):
        parse_config('[venue]\nkind = "kraken"\n')


def test_a_secret_in_the_file_is_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[venue]\napi_secret = "s3cr3t-value"\n')
    assert "venue.api_secret: unknown key" in str(caught.value)
    assert "environment" in str(caught.value)
    assert "s3cr3t-value" not in str(caught.value)


def test_missing_secret_env_var_names_the_key_and_the_variable() -> None:
    config = parse_config('[venue]\nkind = "bybit"\napi_key_env = "PG_TEST_KEY"\n')
    with pytest.raises(ConfigError, match=r"venue\.api_key_env: environment variable PG_TEST_KEY is not set"):
        load_secrets(config, environ={})


def test_secrets_come_from_the_environment_and_never_print() -> None:
    config = parse_config('[venue]\nkind = "bybit"\n')
    secrets = load_secrets(config, environ={"POSGUARD_API_KEY": "k-123", "POSGUARD_API_SECRET": "s-456"})
    assert secrets is not None and secrets.api_key == "k-123" and secrets.api_secret == "s-456"
    assert "k-123" not in repr(secrets) and "s-456" not in str(secrets)


def test_the_fake_venue_needs_no_secrets() -> None:
    assert load_secrets(Config(), environ={}) is None


def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[redis]\nurll = 'redis://x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "posguard", "--config", str(bad), "demo"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert "redis.urll: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
