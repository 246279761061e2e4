"""Job events: progress folding, the SSE frame, log lines, and the SDK's stream decoder."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from modelport.client._jobs import EventFollower
from modelport.client.errors import ConnectionFailed
from modelport.jobs.events import EventView, clean_payload, log_line, merge_progress, sse_frame

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_progress_takes_known_keys_and_accumulates_metrics() -> None:
    progress = merge_progress({}, {"type": "progress", "epoch": 1, "step": 10, "loss": 0.5, "eta_s": 9.0, "junk": 1})
    assert progress == {"epoch": 1, "step": 10, "loss": 0.5, "eta_s": 9.0}
    epoch = {"type": "epoch", "epoch": 1, "train": {"loss": 0.4, "accuracy": 0.8}, "validation": {"accuracy": 0.7}}
    progress = merge_progress(progress, epoch)
    assert progress["metrics"] == {"loss": 0.4, "accuracy": 0.8, "val_accuracy": 0.7}
    progress = merge_progress(progress, {"type": "finished", "metrics": {"test_accuracy": 0.75, "history": {"x": [1]}}})
    assert progress["metrics"]["test_accuracy"] == 0.75 and "history" not in progress["metrics"]


def test_sse_frame_has_id_event_and_one_line_of_json() -> None:
    frame = sse_frame(EventView(seq=7, at=AT, type="log", data={"message": "two\nlines"}))
    lines = frame.decode().split("\n")
    assert lines[:2] == ["id: 7", "event: log"] and lines[2].startswith("data: ") and lines[3:] == ["", ""]
    data = orjson.loads(lines[2][6:])
    assert data == {"message": "two\nlines", "seq": 7, "at": "2026-01-02T03:04:05+00:00", "type": "log"}


def test_log_lines_read_like_a_log() -> None:
    assert log_line(EventView(1, AT, "log", {"message": "hi", "level": "warning"})) == "2026-01-02 03:04:05 WARNING hi"
    line = log_line(
        EventView(2, AT, "epoch", {"epoch": 1, "train": {"loss": 0.123456}, "validation": {"accuracy": 0.5}})
    )
    assert line == "2026-01-02 03:04:05 epoch epoch=1 loss=0.1235 val_accuracy=0.5"


def test_payloads_are_json_safe_and_bounded() -> None:
    assert clean_payload({"type": "x", "seq": 1, "path": object.__name__, 3: 4}) == {"path": "object", "3": 4}
    huge = clean_payload({"type": "log", "message": "m" * 100_000})
    assert huge["truncated"] is True and len(huge["message"]) == 1000


def test_the_follower_decodes_a_stream_and_resumes_after_the_last_event() -> None:
    follow = EventFollower("http://x", "abc", None)
    assert follow.path == "/v1/jobs/abc/events" and "last-event-id" not in follow.headers()
    lines = [
        "retry: 1000",
        "",
        ": keep-alive",
        "",
        "id: 1",
        "event: status",
        'data: {"seq": 1, "type": "status",',
        'data:  "status": "running"}',
        "",
    ]
    got = [e for e in (follow.feed(line) for line in lines) if e is not None]
    assert got == [{"seq": 1, "type": "status", "status": "running"}]
    assert follow.headers()["last-event-id"] == "1" and not follow.done
    follow.feed('data: {"seq": 2, "type": "status", "status": "failed"}')
    assert follow.feed("") is not None and follow.done


def test_the_follower_gives_up_after_its_retries() -> None:
    follow = EventFollower("http://x", "abc", 5, retries=2)
    assert [follow.retry_delay(None), follow.retry_delay(None)] == [0.5, 1.0]
    with pytest.raises(ConnectionFailed, match="kept closing"):
        follow.retry_delay(None)
