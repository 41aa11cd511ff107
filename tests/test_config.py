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


# -- issue 12 item 9: configuration that would defeat the guarantees is refused, by key ----------

DEFEATING_VALUES = [
    # (the file, the key path the one-line error must name)
    ("[verification]\nhard_deadline = inf\n", "verification.hard_deadline"),
    ("[verification]\nhard_deadline = 601.0\n", "verification.hard_deadline"),
    ("[verification]\npush_deadline = inf\n", "verification.push_deadline"),
    ("[verification]\npush_deadline = 30.0\nhard_deadline = 20.0\n", "verification.push_deadline"),
    ("[verification]\nlookup_grace = inf\n", "verification.lookup_grace"),
    ("[protection]\nstop_confirm_deadline = inf\n", "protection.stop_confirm_deadline"),
    ("[protection]\nstop_confirm_deadline = 3600.0\n", "protection.stop_confirm_deadline"),
    ("[protection]\nstop_deadline = inf\n", "protection.stop_deadline"),
    ("[protection]\nstop_deadline = 1e9\n", "protection.stop_deadline"),
    ("[verification.backoff]\ninitial = 10.0\nmaximum = 5.0\n", "verification.backoff.initial"),
    ("[protection.stop_backoff]\ninitial = 6.0\n", "protection.stop_backoff.initial"),
    ("[protection.close_backoff]\ninitial = 1.0\nmaximum = 0.5\n", "protection.close_backoff.initial"),
    ("[supervisor.restart_backoff]\ninitial = 60.0\nmaximum = 1.0\n", "supervisor.restart_backoff.initial"),
    ("[verification.backoff]\nmaximum = inf\n", "verification.backoff.maximum"),
    ("[verification.backoff]\ninitial = 1e-9\nmaximum = 1e-9\n", "verification.backoff.initial"),
    ("[verification.backoff]\nmultiplier = inf\n", "verification.backoff.multiplier"),
    ("[supervisor]\nredis_check_interval = 1e-9\n", "supervisor.redis_check_interval"),
    ("[supervisor]\nredis_check_interval = inf\n", "supervisor.redis_check_interval"),
    ("[supervisor]\nrestart_window = inf\n", "supervisor.restart_window"),
    ("[supervisor]\nshutdown_grace = inf\n", "supervisor.shutdown_grace"),
    ("[audit]\ninterval = 0.001\n", "audit.interval"),
    ("[protection]\nstop_fill_timeout = 0.1\n", "protection.stop_fill_timeout"),
    ("[protection]\nstop_fill_timeout = inf\n", "protection.stop_fill_timeout"),
    ("[audit]\ninterval = inf\n", "audit.interval"),
    ("[streams]\nstale_after = inf\n", "streams.stale_after"),
    ("[risk]\nmin_stop_distance = 0.05\nmax_stop_distance = 0.01\n", "risk.min_stop_distance"),
    ("[risk]\nmax_notional = inf\n", "risk.max_notional"),
    ('[risk.max_qty]\n"BTC/USDT:USDT" = inf\n', "risk.max_qty[...]"),
    ('[redis]\nurl = "redis://:pw@127.0.0.1:6390/0"\npassword_env = "PG_REDIS_PW"\n', "redis.password_env"),
    ('[redis]\nurl = "redis://127.0.0.1:6390/0"\nssl_ca_certs = "/etc/ssl/certs/ca-certificates.crt"\n',
     "redis.ssl_ca_certs"),
    ('[redis]\nurl = "rediss://127.0.0.1:6390/0"\nssl_ca_certs = "/nonexistent/ca.pem"\n', "redis.ssl_ca_certs"),
    ('[redis]\nurl = "redis://127.0.0.1:6390/0"\ntls_insecure_skip_verify = true\n',
     "redis.tls_insecure_skip_verify"),
    ('[redis]\nurl = "rediss://127.0.0.1:6390/0?ssl_check_hostname=false"\n', "redis.url"),
    ('[redis]\nurl = "rediss://127.0.0.1:6390/0?ssl_cert_reqs=none"\n', "redis.url"),
    # A resend of a filled Binance entry inside its "does not exist" window is a second position.
    ('[venue]\nkind = "binanceusdm"\nresend_grace = 30.0\n', "venue.resend_grace"),
    ('[venue]\nkind = "bybit"\nresend_grace = 90.0\n', "venue.resend_grace"),
    ("[venue]\nresend_grace = 90.0\n", "venue.resend_grace"),
    # Binance closes a connection at 24 h itself: replacing it "later" is no rule at all.
    ('[venue]\nkind = "binanceusdm"\n[streams]\nmax_connection_age = 86400.0\n', "streams.max_connection_age"),
    ("[streams]\nmax_connection_age = -1.0\n", "streams.max_connection_age"),
]


@pytest.mark.parametrize(("text", "key"), DEFEATING_VALUES, ids=[key for _text, key in DEFEATING_VALUES])
def test_a_value_that_defeats_a_guarantee_is_refused_naming_its_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{path}: {key}: " in message
    assert "unknown key" not in message
    assert "\n" not in message


def test_sane_values_near_the_bounds_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[verification]\npush_deadline = 60.0\nhard_deadline = 600.0\n"
        "[verification.backoff]\ninitial = 5.0\nmaximum = 5.0\n"
        "[supervisor]\nredis_check_interval = 0.1\n"
        "[audit]\ninterval = 1.0\n"
        "[risk]\nmin_stop_distance = 0.01\nmax_stop_distance = 0.01\n"
        '[metrics]\nbind = "0.0.0.0"\n'
    )
    config = load_config(path)
    assert config.verification.hard_deadline == 600.0 and config.metrics.bind == "0.0.0.0"


def test_a_defeating_value_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[verification]\nhard_deadline = inf\n")
    result = subprocess.run(
        [sys.executable, "-m", "posguard", "--config", str(bad), "demo"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert "verification.hard_deadline: " in result.stderr
    assert result.stderr.strip().count("\n") == 0


# -- the Redis password from the environment, like the API secrets -------------------------------

def test_the_redis_password_may_come_from_the_environment_and_never_prints() -> None:
    from posguard.supervisor.config import redis_connection

    config = parse_config('[redis]\nurl = "rediss://posguard@127.0.0.1:6390/0"\npassword_env = "PG_REDIS_PW"\n')
    connection = redis_connection(config, environ={"PG_REDIS_PW": "r3dis-pw"})
    assert connection.password == "r3dis-pw"
    assert "r3dis-pw" not in repr(connection) and "r3dis-pw" not in str(connection)


def test_a_missing_redis_password_variable_names_the_key_and_the_variable() -> None:
    from posguard.supervisor.config import redis_connection

    config = parse_config('[redis]\nurl = "redis://127.0.0.1:6390/0"\npassword_env = "PG_REDIS_PW"\n')
    with pytest.raises(ConfigError, match=r"redis\.password_env: environment variable PG_REDIS_PW is not set"):
        redis_connection(config, environ={})
