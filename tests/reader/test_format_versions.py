"""A header's version decides the error's kind, by type, not by its message.

A version above FORMAT_VERSION is a journal this library is too old for
(JournalFormatError, "upgrade"); version 0 is not a version at all, so the
header is damaged (JournalCorrupt, never "a newer format"). Start-up's scan,
read_journal and follow_journal all say the same.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from support.journal import storage_from

from memable_log import JournalCorrupt, JournalFormatError
from memable_log._core.format import (
    FORMAT_VERSION,
    SegmentHeader,
    pack_header,
    segment_name,
)
from memable_log._core.framing import encode_frame
from memable_log._storage.segments import scan
from memable_log.reader import follow_journal, read_journal

SEG1 = segment_name(1)


def journal_with_version(version: int) -> dict[str, bytes]:
    """One empty segment whose header (valid checksum) says ``version``."""
    return {SEG1: pack_header(SegmentHeader(version, 0, 0x1234, 1, 1))}


def write(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)


def never_sleeps(seconds: float) -> None:
    raise AssertionError("the follower waited instead of refusing the segment")


def test_version_zero_is_corruption_at_start_up() -> None:
    with pytest.raises(JournalCorrupt) as info:
        scan(storage_from(journal_with_version(0)))
    assert type(info.value) is JournalCorrupt
    assert (info.value.offset, info.value.reason) == (0, "unknown format version 0")


def test_a_newer_version_is_a_format_error_at_start_up() -> None:
    with pytest.raises(JournalFormatError, match=r"newer than this library reads.*upgrade"):
        scan(storage_from(journal_with_version(FORMAT_VERSION + 1)))


def test_version_zero_is_corruption_when_reading(journal_dir: Path) -> None:
    write(journal_dir, journal_with_version(0))
    with pytest.raises(JournalCorrupt) as info:
        list(read_journal(journal_dir))
    assert type(info.value) is JournalCorrupt
    assert "newer" not in str(info.value)


def test_version_zero_is_corruption_when_following(journal_dir: Path) -> None:
    write(journal_dir, journal_with_version(0))
    follower = follow_journal(journal_dir, sleep=never_sleeps)
    with pytest.raises(JournalCorrupt) as info:
        next(follower)
    assert type(info.value) is JournalCorrupt
    assert info.value.file == str(journal_dir / SEG1)
    assert info.value.reason == "unknown format version 0"


def test_a_newer_version_is_a_format_error_when_following(journal_dir: Path) -> None:
    write(journal_dir, journal_with_version(FORMAT_VERSION + 1))
    follower = follow_journal(journal_dir, sleep=never_sleeps)
    with pytest.raises(JournalFormatError, match="upgrade"):
        next(follower)


def test_a_newer_version_in_a_later_segment_is_a_format_error_when_following(
    journal_dir: Path,
) -> None:
    """The follower meets the second segment's header only after the first's seal."""
    files = journal_with_version(FORMAT_VERSION)
    seal = encode_frame(msgpack.packb([0, 1]), 0x1234, batch_start=True, batch_end=True)
    files[SEG1] += seal
    files[segment_name(2)] = pack_header(SegmentHeader(FORMAT_VERSION + 1, 0, 0x1234, 2, 1))
    write(journal_dir, files)
    with pytest.raises(JournalFormatError):
        list(read_journal(journal_dir))
    with pytest.raises(JournalFormatError, match="upgrade") as info:
        next(follow_journal(journal_dir, sleep=never_sleeps))
    assert info.value.file == str(journal_dir / segment_name(2))
