"""Call analytics built on stored results, on the CPU: the conversation (turns and overlaps), call metrics,
PII redaction. Definitions: docs/METRICS.md. The database side (when they are computed and where they are
stored) is `shared.analytics.store`; everything else here is pure and works on `Utterance` rows."""


def flat_metrics(db, file_ids):
    """{file id: a flat dict of the file's call metrics}, for exports (see `store.flat_metrics`)."""
    from shared.analytics import store

    return store.flat_metrics(db, file_ids)
