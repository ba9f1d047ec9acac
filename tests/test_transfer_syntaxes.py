"""Compressed, big-endian and non-ASCII objects from dcmtk arrive intact and decodable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import NodeFactory
from nodeharness import storescu
from pydicom import dcmread

from pacs_node.synth import synthetic_scan_dataset, write_nm

pytestmark = pytest.mark.slow

# (dcmtk converter and its options, storescu proposal option, transfer syntax UID)
CODECS = {
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], "-xs", "1.2.840.10008.1.2.4.70"),
    "jpeg-ls-lossless": (["dcmcjpls", "+el"], "-xt", "1.2.840.10008.1.2.4.80"),
    "rle": (["dcmcrle"], "-xr", "1.2.840.10008.1.2.5"),
    "deflate": (["dcmconv", "+td"], "-xd", "1.2.840.10008.1.2.1.99"),
    "implicit": (["dcmconv", "+ti"], "-xi", "1.2.840.10008.1.2"),
    "big-endian": (["dcmconv", "+tb"], "-xb", "1.2.840.10008.1.2.2"),
}


def test_each_syntax_is_stored_as_sent_and_decodes_to_the_same_counts(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    ds = synthetic_scan_dataset(11, 0, unicode_name=True)
    source = write_nm(tmp_path / "source.dcm", ds)
    counts = ds.pixel_array
    sent: dict[str, str] = {}
    for name, (converter, proposal, syntax) in CODECS.items():
        encoded = tmp_path / f"{name}.dcm"
        subprocess.run([*converter, str(source), str(encoded)], check=True, capture_output=True)
        variant = dcmread(encoded)
        assert variant.file_meta.TransferSyntaxUID == syntax
        # The same object under a new SOP Instance UID per syntax (dcmodify keeps encoding).
        subprocess.run(["dcmodify", "-nb", "-gin", str(encoded)], check=True, capture_output=True)
        uid = str(dcmread(encoded, stop_before_pixels=True).SOPInstanceUID)
        sent[uid] = syntax
        result = storescu(node, encoded, extra=(proposal,))
        assert result.returncode == 0, f"{name}: {result.stderr}"

    rows = {r["sop_instance_uid"]: r for r in node.audit("instances")}
    assert set(rows) == set(sent)
    for uid, syntax in sent.items():
        row = rows[uid]
        assert row["transfer_syntax_uid"] == syntax
        stored = dcmread(node.data_dir / "spool" / row["spool_path"])
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert np.array_equal(stored.pixel_array, counts), syntax
        assert stored.PatientName == ds.PatientName  # ISO_IR 192 name survives
