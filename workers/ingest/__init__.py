"""The CPU side, queue "ingest": archives expanded member by member, recordings probed and decoded
per channel, FSMN-VAD, segments cut into length-bucketed GPU batches, and the reconciler."""
