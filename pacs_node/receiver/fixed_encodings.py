"""Byte encodings of the two fixed-form structures the receiver writes for every C-STORE.

pynetdicom builds both with pydicom Datasets: the C-STORE-RSP command set (about 1 ms per
instance on this project's 2-core machine) and the File Meta Information that heads each
received file (about 0.5 ms). Both are a handful of elements whose tags, VRs and order the
standard fixes (PS3.7 9.3.1.2 and E.1: Implicit VR Little Endian; PS3.10 7.1: Explicit VR
Little Endian), so they are packed here directly. The tests compare every byte with
pynetdicom's and pydicom's own encodings of the same values.
"""

from __future__ import annotations

import struct

from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
)

_C_STORE_RSP = 0x8001  #: Command Field (PS3.7 E.1-1)
_NO_DATA_SET = 0x0101  #: Command Data Set Type: no data set follows


def _uid(value: str) -> bytes:
    """A UI value padded with NUL to even length (PS3.5 6.2)."""
    raw = str(value).encode("ascii")
    if not raw:
        raise ValueError("an empty UID cannot be encoded here")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    """A short-string value padded with a space to even length."""
    raw = str(value).encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _implicit(element: int, tag_low: int, value: bytes) -> bytes:
    return struct.pack("<HHI", element, tag_low, len(value)) + value


def c_store_rsp_command_set(
    *,
    message_id_being_responded_to: int,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
    status: int,
) -> bytes:
    """The command set of a C-STORE-RSP without Offending Element or Error Comment."""
    body = b"".join(
        (
            _implicit(0x0000, 0x0002, _uid(affected_sop_class_uid)),
            _implicit(0x0000, 0x0100, struct.pack("<H", _C_STORE_RSP)),
            _implicit(0x0000, 0x0120, struct.pack("<H", message_id_being_responded_to)),
            _implicit(0x0000, 0x0800, struct.pack("<H", _NO_DATA_SET)),
            _implicit(0x0000, 0x0900, struct.pack("<H", status)),
            _implicit(0x0000, 0x1000, _uid(affected_sop_instance_uid)),
        )
    )
    return _implicit(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # PS3.5 7.1.2: OB has a reserved field and a 4-byte length
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta_information(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID,
    implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION,
) -> bytes:
    """Group 0002 as pynetdicom writes it after the preamble and ``DICM`` (the same
    arguments as ``pynetdicom.dsutils.create_file_meta``)."""
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _uid(sop_class_uid)),
            _explicit(0x0003, b"UI", _uid(sop_instance_uid)),
            _explicit(0x0010, b"UI", _uid(transfer_syntax)),
            _explicit(0x0012, b"UI", _uid(implementation_uid)),
            _explicit(0x0013, b"SH", _text(implementation_version)),
        )
    )
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body
