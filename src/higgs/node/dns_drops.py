"""Why the node's DNS forwarder dropped a query: the reason label of its drop counters.

Pure: maps what dnspython raised on a client's bytes to one :class:`DnsDropReason`. The
forwarder keeps ``dropped_malformed`` as the total and counts each drop by reason too
(``docs/protocol.md``, "DNS forwarder drops").
"""

from __future__ import annotations

from enum import StrEnum

import dns.message
import dns.name

__all__ = ["DnsDropReason", "reason_for"]


class DnsDropReason(StrEnum):
    SHORT = "short"  # fewer than the 12 header bytes
    BAD_NAME = (
        "bad_name"  # bad label length or type, compression loop or bad pointer, name too long
    )
    TRAILING_JUNK = "trailing_junk"  # bytes after the last record
    MALFORMED = "malformed"  # anything else dnspython refuses, e.g. ending inside a record
    NOT_A_QUERY = "not_a_query"  # the QR bit is set: a response sent to us
    QUESTION_COUNT = "question_count"  # not exactly one question


_NAME_ERRORS = (
    dns.name.BadPointer,
    dns.name.BadLabelType,
    dns.name.LabelTooLong,
    dns.name.NameTooLong,
    dns.name.EmptyLabel,
)


def reason_for(exc: BaseException) -> DnsDropReason:
    if isinstance(exc, dns.message.ShortHeader):
        return DnsDropReason.SHORT
    if isinstance(exc, _NAME_ERRORS):
        return DnsDropReason.BAD_NAME
    if isinstance(exc, dns.message.TrailingJunk):
        return DnsDropReason.TRAILING_JUNK
    return DnsDropReason.MALFORMED
