"""Celery workers: CPU ingest (decode, VAD, packing) and GPU inference."""
