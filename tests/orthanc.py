"""A real Orthanc (Debian's package) as the PACS, on loopback ports chosen by the test."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeharness import DCMTK_ENV, free_port, wait_for

HOST = "127.0.0.1"
AE_TITLE = "ORTHANC"


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM port and a small client of its REST API."""

    dicom_port: int
    http_port: int
    work: Path
    proc: subprocess.Popen[bytes]

    def get(self, path: str) -> Any:
        url = f"http://{HOST}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Orthanc's expanded series records of one study."""
        found = self.get_post("/tools/lookup", study_instance_uid)
        studies = [item["ID"] for item in found if item["Type"] == "Study"]
        return [s for study in studies for s in self.get(f"/studies/{study}/series")]

    def get_post(self, path: str, body: str) -> Any:
        request = urllib.request.Request(
            f"http://{HOST}:{self.http_port}{path}", data=body.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs of everything stored."""
        instances = self.get("/instances?expand")
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in instances}

    def log(self) -> str:
        return (self.work / "orthanc.log").read_text(errors="replace")


@contextmanager
def running_orthanc(
    work: Path,
    *,
    lua: str | None = None,
    check_called_ae: bool = False,
    dicom_port: int | None = None,
    modalities: dict[str, tuple[str, str, int]] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc in ``work``; stop it (and wait) on exit.

    Parameters
    ----------
    lua : str, optional
        A Lua script Orthanc runs (e.g. a ``ReceivedInstanceFilter`` that refuses).
    check_called_ae : bool
        Reject associations whose called AE title is not ``ORTHANC``.
    modalities : dict, optional
        Known peers, name → (AE title, host, port): Orthanc sends Storage Commitment
        reports to these only.
    """
    work.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "pacs-node-test",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": AE_TITLE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": check_called_ae,
        "DicomAlwaysAllowStore": True,
    }
    if modalities:
        config["DicomModalities"] = {name: list(peer) for name, peer in modalities.items()}
    if lua is not None:
        script = work / "filter.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    with (work / "orthanc.log").open("wb") as log:
        proc = subprocess.Popen(
            ["Orthanc", "--verbose", str(work / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )
    orthanc = Orthanc(dicom_port, http_port, work, proc)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with {proc.returncode}:\n{orthanc.log()}")
        try:
            orthanc.get("/system")
        except (urllib.error.URLError, OSError):
            return False
        return True

    try:
        wait_for(ready, 60, interval=0.1)
        yield orthanc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
