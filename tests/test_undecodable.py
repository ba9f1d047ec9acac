"""Objects that do not decode.

dcmtk's storescu parses a file before sending it, so it cannot send broken bytes; pynetdicom's
SCU with chunked sending streams the data set bytes of a file untouched, which is what a
misbehaving console does. That is why this one test uses a pynetdicom peer.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from conftest import NodeFactory
from nodeharness import Node, echoscu
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

pytestmark = pytest.mark.slow

NM = "1.2.840.10008.5.1.4.1.1.20"


def raw_file(path: Path, transfer_syntax: str, body: bytes) -> tuple[Path, str]:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NM
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path.write_bytes(buffer.getvalue() + body)
    return path, str(meta.MediaStorageSOPInstanceUID)


@pytest.fixture
def chunked_send() -> Iterator[None]:
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def send_raw(node: Node, path: Path) -> int:
    ae = AE(ae_title="GAMMA_CAM")
    ae.add_requested_context(NM, ExplicitVRLittleEndian)
    ae.add_requested_context(NM, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


@pytest.mark.usefixtures("chunked_send")
def test_undecodable_and_uid_less_data_sets_are_refused(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    corrupt_deflate, _ = raw_file(
        tmp_path / "deflate.dcm", DeflatedExplicitVRLittleEndian, b"this is not a deflate stream"
    )
    assert send_raw(node, corrupt_deflate) == 0xC210
    junk, _ = raw_file(tmp_path / "junk.dcm", ExplicitVRLittleEndian, bytes(range(256)) * 4)
    assert send_raw(node, junk) == 0xA900

    first, second = node.audit("events", "--state", "rejected")
    assert first["status"] == "0xC210"
    assert "does not decode" in first["reason"]
    assert second["status"] == "0xA900"
    assert "lacks" in second["reason"]
    assert node.audit("instances") == []
    assert echoscu(node).returncode == 0
