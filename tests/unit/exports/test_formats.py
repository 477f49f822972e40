"""Exports: every row, in order, in each format; bounded memory on a 10,000-file job."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import zipfile

import pytest

from shared import exports
from shared.db import session_factory
from tests.unit.exports.conftest import TEXT, make_job


def collect(fmt, url, job_id, file_id=None, page_rows=50) -> bytes:
    return b"".join(exports.stream(fmt, session_factory(url), job_id, file_id, page_rows))


def test_jsonl_rows_in_results_order(sqlite_url):
    job = make_job(sqlite_url, n_files=3, segments_per_channel=2)
    lines = [json.loads(x) for x in collect("jsonl", sqlite_url, job, page_rows=5).decode().splitlines()]
    assert len(lines) == 3 * 2 * 2
    assert [(r["file"], r["start_s"]) for r in lines] == sorted((r["file"], r["start_s"]) for r in lines)
    first = lines[0]
    assert first["file"] == "call-00000.wav" and first["channel"] == "agent" and first["start_s"] == 0.0
    assert first["end_s"] == 1.5 and first["language"] == "en" and first["emotion"] == "NEUTRAL"
    assert first["emotion2vec_label"] == "unknown" and first["emotion2vec_score"] == 0.7
    assert lines[1]["channel"] == "customer" and lines[1]["start_s"] == 2.0
    assert len({r["segment_id"] for r in lines}) == len(lines)
    assert lines[1]["words"] == [{"w": "thank", "start_s": 2.0, "end_s": 2.3}]


def test_csv_has_a_header_and_every_row(sqlite_url):
    job = make_job(sqlite_url, n_files=4)
    table = list(csv.DictReader(io.StringIO(collect("csv", sqlite_url, job, page_rows=3).decode())))
    assert len(table) == 8
    assert table[0]["file"] == "call-00000.wav" and table[0]["text"].endswith(" 0 0 0")
    assert json.loads(table[0]["emotion2vec_scores"]) == {"unknown": 0.7, "happy": 0.3}
    assert json.loads(table[0]["words"]) == [{"w": "thank", "start_s": 0.0, "end_s": 0.3}]


def test_subtitles_merge_both_channels_with_speakers(sqlite_url):
    job = make_job(sqlite_url, n_files=2, segments_per_channel=2)
    file_id = f"f{1:031d}"
    srt = collect("srt", sqlite_url, job, file_id).decode()
    cues = srt.strip().split("\n\n")
    assert len(cues) == 4
    assert cues[0].splitlines() == ["1", "00:00:00,000 --> 00:00:01,500", f"[agent] {TEXT} 1 0 0"]
    assert cues[1].splitlines()[1] == "00:00:02,000 --> 00:00:03,500" and "[customer]" in cues[1]
    assert all(" 1 " in c for c in cues)  # only file 1's turns
    vtt = collect("vtt", sqlite_url, job, file_id).decode()
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n<v agent>")
    assert vtt.count("<v customer>") == 2
    with pytest.raises(ValueError, match="per call"):
        exports.stream("srt", session_factory(sqlite_url), job)


def test_zip_holds_each_call_in_each_format(sqlite_url):
    job = make_job(sqlite_url, n_files=3)
    with zipfile.ZipFile(io.BytesIO(collect("zip", sqlite_url, job))) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"call-{i:05d}.wav.{ext}" for i in range(3) for ext in ("jsonl", "csv", "srt", "vtt"))
        assert zf.testzip() is None
        rows = [json.loads(x) for x in zf.read("call-00002.wav.jsonl").decode().splitlines()]
        assert [r["channel"] for r in rows] == ["agent", "customer"] and {r["file"] for r in rows} == {"call-00002.wav"}


def test_a_duplicate_shows_its_originals_segments(sqlite_url):
    from sqlalchemy import update

    from shared.schema import File

    job = make_job(sqlite_url, n_files=2)
    with session_factory(sqlite_url)() as db, db.begin():  # call-00001 is the same audio as call-00000
        db.execute(update(File).where(File.id == f"f{1:031d}").values(duplicate_of=f"f{0:031d}"))
        from sqlalchemy import delete

        from shared.schema import Segment
        db.execute(delete(Segment).where(Segment.file_id == f"f{1:031d}"))
    lines = [json.loads(x) for x in collect("jsonl", sqlite_url, job).decode().splitlines()]
    assert [(r["file"], r["text"][-6:]) for r in lines] == [
        ("call-00000.wav", " 0 0 0"), ("call-00000.wav", " 0 1 0"),
        ("call-00001.wav", " 0 0 0"), ("call-00001.wav", " 0 1 0")]


def peak_while_streaming(fmt: str, url: str, job: str) -> tuple[int, int, int, int]:
    """(peak bytes traced, bytes out, chunks, CRLF line ends) of one export."""
    total = lines = count = 0
    tracemalloc.start()
    try:
        for chunk in exports.stream(fmt, session_factory(url), job, page_rows=1000):
            total += len(chunk)
            lines += chunk.count(b"\r\n")
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, total, count, lines


@pytest.mark.timeout(900)
def test_ten_thousand_files_stream_in_bounded_memory(sqlite_url, tmp_path):
    """20,000 rows: the export is complete, and the peak of Python memory while it streams does not grow with
    the job: the same as for a job of 1,000 files (a page of rows at a time, never the job). A zip also keeps
    its central directory (about 0.5 KB per member, 4 members per call)."""
    small_url = f"sqlite:///{tmp_path / 'small.db'}"
    small = make_job(small_url, n_files=1_000)
    small_peak, *_ = peak_while_streaming("csv", small_url, small)
    n = 10_000
    job = make_job(sqlite_url, n_files=n)
    peak, total, count, lines = peak_while_streaming("csv", sqlite_url, job)
    assert lines == 1 + 2 * n and count > 10  # every row, in many chunks
    assert peak < small_peak * 1.5 + 1024 * 1024, f"csv: peak {peak / 1e6:.1f} MB for 10,000 files, " \
                                                    f"{small_peak / 1e6:.1f} MB for 1,000"
    assert peak < total, f"csv: peak {peak / 1e6:.1f} MB for an export of {total / 1e6:.1f} MB"
    peak, total, count, _ = peak_while_streaming("zip", sqlite_url, job)
    bound = small_peak * 1.5 + 1024 * 4 * n
    assert count > 10 and peak < bound, f"zip: peak {peak / 1e6:.1f} MB for an export of {total / 1e6:.1f} MB"
    # Complete: every file appears, the last one included.
    files = set()
    for chunk in exports.stream("jsonl", session_factory(sqlite_url), job, page_rows=1000):
        files.update(json.loads(x)["file"] for x in chunk.splitlines())
    assert len(files) == n and f"call-{n - 1:05d}.wav" in files


def test_call_metrics_and_words_come_last(sqlite_url):
    """Columns other parts add (call metrics from shared.analytics, words where stored) follow the segment's
    own; the CSV header holds every call's metric names, not only the first call's."""
    from sqlalchemy import insert

    from shared.schema import CallMetrics

    job = make_job(sqlite_url, n_files=2)
    with session_factory(sqlite_url)() as db, db.begin():
        db.execute(insert(CallMetrics), [
            dict(file_id=f"f{0:031d}", job_id=job, version=1, metrics={"talk_s": 3.0, "channels": [
                {"index": 0, "label": "agent", "talk_s": 1.5, "languages_s": {"en": 1.5}}]}),
            dict(file_id=f"f{1:031d}", job_id=job, version=1, metrics={"talk_s": 2.5, "interruptions": 1})])
    table = list(csv.DictReader(io.StringIO(collect("csv", sqlite_url, job).decode())))
    header = list(table[0])
    assert header[:len(exports.rows.BASE_COLUMNS)] == exports.rows.BASE_COLUMNS
    tail = header[len(exports.rows.BASE_COLUMNS):]
    assert {"talk_s", "channel.agent.talk_s", "channel.agent.languages_s.en", "interruptions"} <= set(tail)
    assert [r["talk_s"] for r in table] == ["3.0", "3.0", "2.5", "2.5"]
    assert table[2]["interruptions"] == "1" and table[0]["interruptions"] == ""
    lines = [json.loads(x) for x in collect("jsonl", sqlite_url, job).decode().splitlines()]
    assert lines[0]["channel.agent.languages_s.en"] == 1.5 and list(lines[0])[-1] in tail
