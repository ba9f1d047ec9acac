"""C-STORE response statuses this node sends (PS3.4 B.2.3, PS3.7 C.4.2)."""

from enum import IntEnum


class StoreStatus(IntEnum):
    """Status values of a C-STORE response."""

    SUCCESS = 0x0000  #: stored durably and audited (PS3.4 B.2.3)
    SOP_CLASS_NOT_SUPPORTED = 0x0122  #: refused: SOP class not allowed here (PS3.7 C.4.2.1)
    PROCESSING_FAILURE = 0x0110  #: the node could not record the object (PS3.7 C.4.2.1)
    OUT_OF_RESOURCES = 0xA700  #: refused: out of resources, disk below the floor (PS3.4 B.2.3)
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  #: required attributes missing or wrong
    CANNOT_UNDERSTAND = 0xC210  #: the data set does not decode (PS3.4 B.2.3, Cxxx range)
