"""Settings: TOML file, environment overrides, and messages that name the bad value."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from nodeharness import free_port

from pacs_node.config import ConfigError, load_settings
from pacs_node.routing.rules import RuleAction

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "pacs-node.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacs-node.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


def test_defaults_need_no_file_and_use_sqlite_under_the_data_dir() -> None:
    settings = load_settings()
    assert settings.node.ae_title == "PACS_NODE"
    assert settings.node.port == 11112
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("data/audit.sqlite3")
    assert "1.2.840.10008.5.1.4.1.1.20" in settings.dicom.accepted_sop_classes
    assert [r.name for r in settings.routing.rules] == ["nm-whole-body"]


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[node]
ae_title = "BONE_NODE"
port = 4242
[security]
allowed_calling_ae_titles = ["GAMMA_CAM"]
allowed_networks = ["10.1.0.0/16"]
[completion]
quiet_period_s = 3.5
[[routing.rules]]
name = "localizers"
action = "ignore"
[routing.rules.match]
series_description_regex = "(?i)localizer"
""",
    )
    settings = load_settings(path)
    assert settings.node.ae_title == "BONE_NODE"
    assert settings.node.port == 4242
    assert settings.security.allowed_calling_ae_titles == ("GAMMA_CAM",)
    assert settings.security.allowed_networks == (ipaddress.ip_network("10.1.0.0/16"),)
    assert settings.completion.quiet_period_s == 3.5
    assert settings.routing.rules[0].action is RuleAction.IGNORE


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[node]\nport = 4242\nae_title = "FROM_FILE"\n')
    monkeypatch.setenv("PACS_NODE_NODE__PORT", "5151")
    monkeypatch.setenv("PACS_NODE_SECURITY__ALLOWED_CALLING_AE_TITLES", '["CAM1","CAM2"]')
    settings = load_settings(path)
    assert settings.node.port == 5151
    assert settings.node.ae_title == "FROM_FILE"
    assert settings.security.allowed_calling_ae_titles == ("CAM1", "CAM2")


def test_command_line_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE_NODE__PORT", "5151")
    assert load_settings(None, node={"port": 6000}).node.port == 6000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[node]\nae_title = "THIS_TITLE_IS_TOO_LONG"', "node.ae_title = 'THIS_TITLE_IS_TOO_LONG'"),
        ('[node]\nae_title = "BAD\\\\AE"', "default repertoire"),
        ("[node]\nport = 70000", "node.port = 70000"),
        ('[node]\nhost = "not-an-ip"', "bind host 'not-an-ip' is not an IP address"),
        ('[security]\nallowed_networks = ["10.0.0.300/8"]', "security.allowed_networks.0"),
        ("[storage]\nmin_free_disk_mb = -1", "storage.min_free_disk_mb = -1"),
        ('[dicom]\naccepted_sop_classes = ["1.2.abc"]', "'1.2.abc' is not a valid DICOM UID"),
        ('[dicom]\naccepted_transfer_syntaxes = ["1.2.3"]', "not a known transfer syntax"),
        ("[completion]\nquiet_period_s = 0", "completion.quiet_period_s = 0"),
        ("[tls]\nenabled = true", "tls.certificate is required when TLS is enabled"),
        ("[node]\nportt = 1", "node.portt: Extra inputs are not permitted"),
        ('[pipeline]\nbroker_url = "amqp://x"', "is neither 'embedded' nor a Redis URL"),
        ('[pipeline]\nprofile = "turbo"', "pipeline.profile = 'turbo'"),
        ('[pipeline]\ncheckpoint = "/nonexistent.safetensors"', "is not a file"),
        ("[delivery]\ninitial_backoff_s = 60\nmax_backoff_s = 10", "below initial_backoff_s"),
        (
            '[[delivery.destinations]]\nname = "p"\nae_title = "PACS"\nhost = "h"\nport = 0',
            "delivery.destinations.0.port = 0",
        ),
        (
            '[[delivery.destinations]]\nname = "p"\nae_title = "PACS"\nhost = "h"\nport = 104\n'
            'certificate = "/nonexistent.crt"',
            "certificate '/nonexistent.crt' is not a readable file",
        ),
        (
            '[[routing.rules]]\nname = "r"\n[routing.rules.match]\nseries_description_regex = "("',
            "does not compile",
        ),
    ],
)
def test_each_invalid_value_is_named_with_the_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    found = problems(write(tmp_path, text))
    assert any(expected in p for p in found), found


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "[node]\nport = 0\nmax_associations = 0\n"))
    assert len(found) == 2
    assert any(p.startswith("node.port") for p in found)
    assert any(p.startswith("node.max_associations") for p in found)


def test_tls_files_must_exist(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[tls]\nenabled = true\ncertificate = "{tmp_path}/nope.pem"\n'
        f'private_key = "{tmp_path}/nope.key"\nrequire_client_certificate = true\n',
    )
    found = " ".join(problems(path))
    assert "nope.pem' is not a readable file" in found
    assert "nope.key' is not a readable file" in found
    assert "tls.ca_certificate is required" in found


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "absent.toml") == ["file not found"]
    assert problems(write(tmp_path, "[node\n"))[0].startswith("not valid TOML")


def test_example_config_in_deploy_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.routing.rules, "the example should show routing rules"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs_node.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli_names_the_problem_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nport = 99999\nae_title = "X"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "node.port = 99999" in result.stderr
    assert "less than or equal to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_cli_accepts_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, f'[storage]\ndata_dir = "{tmp_path}/data"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_check_config_loads_tls_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("not a key\n")
    path = write(
        tmp_path,
        f'[tls]\nenabled = true\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
        f'[storage]\ndata_dir = "{tmp_path}/data"\n',
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "tls: the certificate, key or CA file cannot be used" in result.stderr
    assert "Traceback" not in result.stderr
    served = run_cli("serve", "--config", str(path), "--port", str(free_port()))
    assert served.returncode == 2
    assert "cannot start: TLS certificate or key" in served.stderr
    assert "Traceback" not in served.stderr
