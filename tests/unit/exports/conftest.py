"""A job written straight into a SQLite database: files, two channels each, segments and results."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from shared.db import migrate, session_factory
from shared.schema import Channel, File, FileState, Job, JobState, Result, Segment, SegmentState

TEXT = "thank you for calling, how can I help you today with your account"


def make_job(url: str, n_files: int, segments_per_channel: int = 1, job_id: str = "j" * 32) -> str:
    """`n_files` calls: agent and customer alternate, 2 s turns, each segment with a result."""
    migrate(url)
    with session_factory(url)() as db, db.begin():
        db.execute(insert(Job), [dict(id=job_id, state=JobState.done, name="exports", files_total=n_files,
                                      files_done=n_files)])
        files, channels, segments, results = [], [], [], []
        for i in range(n_files):
            fid = f"f{i:031d}"
            files.append(dict(id=fid, job_id=job_id, name=f"call-{i:05d}.wav", path="/x", state=FileState.done,
                              duration_s=60.0, num_channels=2))
            for ch, label in enumerate(("agent", "customer")):
                cid = f"c{i:030d}{ch}"
                channels.append(dict(id=cid, file_id=fid, index=ch, label=label))
                for k in range(segments_per_channel):
                    sid = f"s{i:026d}{ch}{k:04d}"
                    start = (2 * k + ch) * 2000
                    segments.append(dict(id=sid, job_id=job_id, file_id=fid, channel_id=cid, start_ms=start,
                                         end_ms=start + 1500, state=SegmentState.done))
                    results.append(dict(segment_id=sid, job_id=job_id, text=f"{TEXT} {i} {ch} {k}", language="en",
                                        emotion="NEUTRAL", event="Speech", emotion2vec_label="<unk>",
                                        emotion2vec_scores={"<unk>": 0.7, "happy": 0.3},
                                        words=[{"w": "thank", "start_s": start / 1000, "end_s": start / 1000 + 0.3}]))
        for table, values in ((File, files), (Channel, channels), (Segment, segments), (Result, results)):
            for start in range(0, len(values), 5000):
                db.execute(insert(table), values[start:start + 5000])
    return job_id


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'speechq.db'}"
