"""Sending derived series to PACS: C-STORE SCU, response statuses and the retry policy."""

from pacs_node.sender.retry import RetryPolicy
from pacs_node.sender.scu import Destination, InstanceResult, SendReport, store_files
from pacs_node.sender.status import StoreOutcome, classify_store_status, describe_store_status

__all__ = [
    "Destination",
    "InstanceResult",
    "RetryPolicy",
    "SendReport",
    "StoreOutcome",
    "classify_store_status",
    "describe_store_status",
    "store_files",
]
