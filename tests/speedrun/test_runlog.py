"""speedrun.runlog.RunLog: one flushed JSON record a line, the offset a checkpoint keeps, and the truncation that
makes a resumed run's log the uninterrupted run's."""

import json

from speedrun.runlog import RunLog


def test_records_offset_and_resume(tmp_path):
    path = tmp_path / "log.jsonl"
    log = RunLog(str(path))
    log.write({"step": 0, "val_loss": 10.0})
    assert path.read_text() == '{"step": 0, "val_loss": 10.0}\n'  # flushed as written
    checkpoint_offset = log.offset
    assert checkpoint_offset == path.stat().st_size
    log.write({"step": 1, "train_loss": 9.0})  # written after the checkpoint: dropped on resume
    log.close()
    resumed = RunLog(str(path), offset=checkpoint_offset, resume=True)
    resumed.write({"step": 1, "train_loss": 9.5})
    resumed.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 0, "val_loss": 10.0}, {"step": 1, "train_loss": 9.5}]


def test_a_rank_without_a_path_writes_nothing(tmp_path):
    log = RunLog(None, offset=7, total=10)
    log.write({"step": 1})
    log.progress(1, loss="1.0")
    log.close()
    assert log.offset == 7 and list(tmp_path.iterdir()) == []
