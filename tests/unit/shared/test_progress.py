"""Job counters and the failure a task ends with."""

from shared import progress


def test_files_failed_names_the_files_and_pickles():
    import pickle

    exc = progress.FilesFailed.of([(f"calls.zip/{i}.wav", "empty file (0 bytes)") for i in range(7)], 9)
    assert str(exc).startswith("7 of 9 file(s) failed: calls.zip/0.wav: empty file (0 bytes); calls.zip/1.wav")
    assert str(exc).endswith("and 2 more")
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)  # crosses the prefork pool to the worker's parent
