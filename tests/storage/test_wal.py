"""The write-ahead log: replay, overwrite, rolling, snapshots, torn tails, corruption."""

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from native import walframe
from shards.raft.storage import (
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)
from shards.wal import WalCorruptionError, WriteAheadLog

SMALL_SEGMENT_BYTES = 4096


def batch(first, count, term=1, size=40):
    return [Entry(term, index, 0, b"%d:%d:" % (term, index) + bytes(size)) for index in range(first, first + count)]


def whole_log(wal):
    storage = wal.storage
    return storage.entries(storage.first_index(), storage.last_index() + 1)


def multi_segment_log(directory, entries=200):
    """A log of `entries` entries in batches of 10, spread over several small segments."""
    wal = WriteAheadLog.open(directory, segment_bytes=SMALL_SEGMENT_BYTES)
    for first in range(1, entries + 1, 10):
        wal.append(batch(first, 10))
    return wal


def reopen(wal, **options):
    wal.close()
    return WriteAheadLog.open(wal.directory, **options)


def test_a_new_log_is_empty(tmp_path):
    with WriteAheadLog.open(tmp_path / "wal") as wal:
        assert wal.storage.first_index() == 1 and wal.storage.last_index() == 0
        assert wal.storage.initial_state() == (HardState(), ConfState())
        assert len(wal.segment_paths) == 1


def test_entries_and_hard_state_survive_reopen_and_appending_continues(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    wal.append(batch(1, 10), HardState(term=1, vote=2, commit=0))
    wal.append(batch(11, 5), HardState(term=1, vote=2, commit=9))
    wal = reopen(wal)
    assert whole_log(wal) == batch(1, 15)
    assert wal.storage.hard_state == HardState(1, 2, 9)
    wal.append(batch(16, 3), HardState(1, 2, 15))
    wal = reopen(wal)
    assert whole_log(wal) == batch(1, 18)
    assert wal.storage.hard_state == HardState(1, 2, 15)
    wal.close()


def test_hard_state_alone_is_durable(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    wal.append([], HardState(term=5, vote=3, commit=0))
    assert reopen(wal).storage.hard_state == HardState(5, 3, 0)


def test_entries_overwritten_by_a_new_leader_read_back_as_the_latest_suffix(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    wal.append(batch(1, 10, term=1))
    wal.append(batch(6, 2, term=2))  # a new leader replaces 6.. with a shorter suffix
    expected = batch(1, 5, term=1) + batch(6, 2, term=2)
    assert whole_log(wal) == expected
    wal = reopen(wal)
    assert whole_log(wal) == expected
    wal.append(batch(8, 1, term=2))
    assert whole_log(reopen(wal)) == expected + batch(8, 1, term=2)


def test_segments_roll_and_replay_in_order(tmp_path):
    wal = WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES)
    for first in range(1, 301, 10):
        wal.append(batch(first, 10), HardState(1, 1, first - 1))
    assert len(wal.segment_paths) > 5
    names = [path.name for path in wal.segment_paths]
    assert names == sorted(names)
    wal = reopen(wal, segment_bytes=SMALL_SEGMENT_BYTES)
    assert whole_log(wal) == batch(1, 300)
    assert wal.storage.hard_state == HardState(1, 1, 290)
    wal.close()


def test_a_batch_larger_than_a_segment_is_written_whole(tmp_path):
    wal = WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES)
    big = batch(1, 100, size=200)  # about 24 KiB
    wal.append(big)
    wal.append(batch(101, 1))
    assert whole_log(reopen(wal, segment_bytes=SMALL_SEGMENT_BYTES)) == big + batch(101, 1)


def test_local_snapshot_keeps_later_entries_and_releases_covered_segments(tmp_path):
    wal = WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES)
    for first in range(1, 201, 10):
        wal.append(batch(first, 10), HardState(1, 1, first + 9))
    conf = ConfState(voters=(1, 2, 3), learners=(4,))
    wal.create_snapshot(150, conf, b"state", keep_entries=20)
    assert wal.storage.first_index() == 131  # 20 entries kept for slow followers
    before = len(wal.segment_paths)
    released = wal.release_to(150)
    assert released and not any(path.exists() for path in released)
    assert len(wal.segment_paths) == before - len(released)
    wal = reopen(wal, segment_bytes=SMALL_SEGMENT_BYTES)
    assert wal.storage.snapshot().meta == SnapshotMeta(150, 1, conf)
    assert wal.storage.initial_state() == (HardState(1, 1, 200), conf)
    assert whole_log(wal) == batch(151, 50)
    wal.close()


def test_release_keeps_segments_holding_entries_after_the_index(tmp_path):
    wal = multi_segment_log(tmp_path)
    wal.create_snapshot(15, ConfState((1,)), b"")
    wal.release_to(15)
    assert whole_log(reopen(wal, segment_bytes=SMALL_SEGMENT_BYTES)) == batch(16, 185)


def test_a_received_snapshot_replaces_the_log(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    wal.append(batch(1, 20, term=1))
    snapshot = Snapshot(SnapshotMeta(50, 3, ConfState((1, 2, 3))), b"leader state")
    wal.save_snapshot(snapshot)
    assert wal.storage.last_index() == 50 and wal.storage.first_index() == 51
    wal.append(batch(51, 5, term=3))
    wal = reopen(wal)
    assert wal.storage.snapshot().meta == snapshot.meta
    assert whole_log(wal) == batch(51, 5, term=3)
    # Entries from before the reset never come back, even when no later batch covers them.
    wal.save_snapshot(Snapshot(SnapshotMeta(60, 4, ConfState((1, 2, 3)))))
    assert whole_log(reopen(wal)) == []


def test_unsynced_appends_are_synced_on_request(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    for first in range(1, 50, 7):
        wal.append(batch(first, 7), sync=False)
    assert wal.fsync_count == 0
    wal.sync()
    wal.sync()  # nothing new to sync
    assert wal.fsync_count == 1
    assert whole_log(reopen(wal)) == batch(1, 49)


def test_a_batch_that_would_leave_a_gap_is_refused_before_it_is_written(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    wal.append(batch(1, 3))
    with pytest.raises(UnavailableError, match="gap"):
        wal.append(batch(10, 3))
    assert whole_log(reopen(wal)) == batch(1, 3)


def test_appending_after_close_is_an_error(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    wal.close()
    with pytest.raises(Exception, match="closed"):
        wal.append(batch(1, 1))


# --- crashes: torn tails and corruption ----------------------------------------------


def written_log(directory, batches=6):
    """A one-segment log of `batches` writes, each an entries frame and a hard state frame.

    Returns the segment's path and each frame's (start, payload end, end) offsets.
    """
    wal = WriteAheadLog.open(directory, segment_bytes=SMALL_SEGMENT_BYTES)
    for number in range(batches):
        wal.append(batch(number * 3 + 1, 3), HardState(1, 1, number * 3))
    (path,) = wal.segment_paths
    wal.close()
    records, _, _ = walframe.decode_frames(path.read_bytes())
    extents = []
    for _, offset, payload in records:
        payload_end = offset + walframe.HEADER_BYTES + len(payload)
        extents.append((offset, payload_end, offset + walframe.frame_bytes(len(payload))))
    return path, extents


def recovered_batches(wal):
    entries = whole_log(wal)
    assert len(entries) % 3 == 0 and entries == batch(1, len(entries)), "not whole batches"
    return len(entries) // 3


@pytest.mark.parametrize("crash", ["truncated", "zeroed"])
def test_torn_last_write_at_every_byte_is_cut_back_to_the_last_whole_record(tmp_path, crash):
    path, extents = written_log(tmp_path / "origin")
    pristine = path.read_bytes()
    entries_frame, hard_state_frame = extents[-2], extents[-1]  # the last write
    for cut in range(entries_frame[0], hard_state_frame[2]):
        directory = tmp_path / f"{crash}-{cut}"
        directory.mkdir()
        damaged = pristine[:cut] if crash == "truncated" else pristine[:cut] + bytes(len(pristine) - cut)
        (directory / path.name).write_bytes(damaged)

        def intact(frame):
            return damaged[frame[0] : frame[2]] == pristine[frame[0] : frame[2]]

        wal = WriteAheadLog.open(directory, segment_bytes=SMALL_SEGMENT_BYTES)
        assert recovered_batches(wal) == (6 if intact(entries_frame) else 5)
        assert wal.storage.hard_state.commit == (15 if intact(hard_state_frame) else 12)
        damaged_frames = [frame for frame in (entries_frame, hard_state_frame) if not intact(frame)]
        first_damaged = damaged_frames[0] if damaged_frames else (len(damaged),)
        if not any(damaged[first_damaged[0] :]):
            assert wal.torn_tail is None  # what was lost, if anything, reads as unwritten space
        else:
            assert wal.torn_tail.offset == first_damaged[0] and wal.torn_tail.path == directory / path.name
        next_index = wal.storage.last_index() + 1
        wal.append(batch(next_index, 3), HardState(1, 1, next_index - 1))
        wal = reopen(wal, segment_bytes=SMALL_SEGMENT_BYTES)
        assert whole_log(wal) == batch(1, next_index + 2) and wal.torn_tail is None
        wal.close()


def test_flipped_bytes_give_whole_records_or_an_error_naming_file_and_offset(tmp_path):
    path, extents = written_log(tmp_path / "origin")
    pristine = path.read_bytes()
    rng = random.Random(20261122)
    outcomes = set()
    for trial in range(300):
        position = rng.randrange(extents[-1][2] + 64)  # mostly frames, some preallocated space
        damaged = bytearray(pristine)
        damaged[position] ^= rng.randrange(1, 256)
        directory = tmp_path / f"flip-{trial}"
        directory.mkdir()
        (directory / path.name).write_bytes(damaged)
        frame = next((n for n, extent in enumerate(extents) if extent[0] <= position < extent[2]), None)
        if frame is None or position >= extents[frame][1]:
            expected = "intact"  # preallocated space or padding: nothing reads it
        elif frame == len(extents) - 1:
            expected = "torn"  # the very last frame: indistinguishable from a torn write
        else:
            expected = "corrupt"
        try:
            wal = WriteAheadLog.open(directory, segment_bytes=SMALL_SEGMENT_BYTES)
        except WalCorruptionError as error:
            assert expected == "corrupt", (position, frame, error)
            assert error.path == directory / path.name and error.offset == extents[frame][0]
            assert f"{error.path} at byte offset {error.offset}" in str(error)
            outcomes.add(expected)
            continue
        assert expected != "corrupt", (position, frame)
        assert recovered_batches(wal) == 6
        assert wal.storage.hard_state.commit == (12 if expected == "torn" else 15)
        wal.close()
        outcomes.add(expected)
    assert outcomes == {"intact", "torn", "corrupt"}


def test_damage_in_a_closed_segment_is_corruption(tmp_path):
    wal = multi_segment_log(tmp_path)
    first_segment = wal.segment_paths[0]
    wal.close()
    records, end, _ = walframe.decode_frames(first_segment.read_bytes())
    last_offset = records[-1][1]
    data = bytearray(first_segment.read_bytes())
    data[last_offset + walframe.HEADER_BYTES] ^= 0xFF  # the segment's last frame
    first_segment.write_bytes(data)
    with pytest.raises(WalCorruptionError) as caught:
        WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES)
    assert caught.value.path == first_segment and caught.value.offset == last_offset


@pytest.mark.parametrize(
    "record_type, payload, reason",
    [(9, b"?", "unknown record type 9"), (2, b"\x05\x00", "undecodable record"), (3, b"short", "undecodable")],
)
def test_a_checksummed_frame_we_never_write_is_corruption(tmp_path, record_type, payload, reason):
    wal = WriteAheadLog.open(tmp_path)
    wal.append(batch(1, 3))
    (path,) = wal.segment_paths
    wal.close()
    _, end, _ = walframe.decode_frames(path.read_bytes())
    with open(path, "r+b") as segment:
        segment.seek(end)
        segment.write(walframe.encode_frame(record_type, payload))
    with pytest.raises(WalCorruptionError, match=reason) as caught:
        WriteAheadLog.open(tmp_path)
    assert caught.value.offset == end


def test_a_missing_segment_is_corruption(tmp_path):
    wal = multi_segment_log(tmp_path)
    middle = wal.segment_paths[2]
    wal.close()
    middle.unlink()
    with pytest.raises(WalCorruptionError, match="missing"):
        WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES)


def test_an_unfinished_new_segment_is_discarded(tmp_path):
    wal = WriteAheadLog.open(tmp_path)
    wal.append(batch(1, 3))
    wal.close()
    (tmp_path / "0000000000000001-0000000000000004.wal.tmp").write_bytes(b"partial")
    wal = WriteAheadLog.open(tmp_path)
    assert whole_log(wal) == batch(1, 3)
    assert not list(tmp_path.glob("*.tmp"))
    wal.close()


WRITER = textwrap.dedent(
    """
    import sys
    from shards.raft.storage import Entry, HardState
    from shards.wal import WriteAheadLog

    wal = WriteAheadLog.open(sys.argv[1], segment_bytes=64 * 1024)
    index = wal.storage.last_index()
    while True:
        entries = [Entry(1, index + n, 0, b"value-%d" % (index + n)) for n in range(1, 51)]
        wal.append(entries, HardState(1, 1, index))
        index += 50
        print(index, flush=True)  # acknowledged: durable
    """
)


def test_kill_9_mid_write_loses_no_acknowledged_entry(tmp_path):
    """A real writer process killed at random points: every acknowledged entry is there."""
    rng = random.Random(5)
    acknowledged = 0
    for round_number in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
        )
        try:
            target = acknowledged + rng.randrange(500, 3000)
            for line in writer.stdout:
                acknowledged = int(line)
                if acknowledged >= target:
                    break
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait()
        with WriteAheadLog.open(tmp_path, segment_bytes=64 * 1024) as wal:
            last = wal.storage.last_index()
            assert last >= acknowledged, f"round {round_number}: lost {acknowledged - last} entries"
            entries = wal.storage.entries(1, last + 1)
            assert [entry.data for entry in entries] == [b"value-%d" % i for i in range(1, last + 1)]
            acknowledged = last
