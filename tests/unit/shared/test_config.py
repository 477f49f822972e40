from shared.config import Settings


def test_embedded_defaults(tmp_path, monkeypatch):
    for var in ("DATABASE_URL", "REDIS_URL", "SPEECHQ_DATABASE_URL", "SPEECHQ_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.database == f"sqlite:///{tmp_path.resolve()}/speechq.db"
    assert s.broker.startswith("redis://127.0.0.1:") and s.redis_url is None
    assert s.spool == (tmp_path / "spool").resolve()


def test_one_setting_away(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@db/speechq")
    monkeypatch.setenv("REDIS_URL", "redis://broker:6379/0")
    s = Settings()
    assert s.database == "postgresql+psycopg://u@db/speechq" and s.broker == "redis://broker:6379/0"
    assert Settings().labels("agent, customer ,") == ["agent", "customer"]
