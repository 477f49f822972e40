"""Checks before anything starts: `speechq up` refuses to start, and `speechq selfcheck` (run after an
install) fails, with what is wrong and the command that fixes it.

`up` stays fast: a model folder is checked for its layout and its checkpoint is opened lazily (mmap,
tensors not read); the GPU worker loads the models in full and reports a failure on its heartbeat
and on the jobs that wait for it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from shared.config import Settings

INSTALL = "bash deploy/install.sh"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str
    fix: str | None = None


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


# --- what `speechq up` needs ---------------------------------------------------------------------

def for_up(settings: Settings, flower: bool = True) -> list[Check]:
    checks = [data_folder(settings), ffmpeg_on_path()]
    checks += [model_folder(settings, name, directory, env) for name, directory, env in _models(settings)]
    checks += ports(settings, flower)
    if settings.redis_url:
        checks.append(broker_reachable(settings))
    if settings.database_url:
        checks.append(database_reachable(settings))
    checks.append(api_keys(settings))
    return checks


def api_keys(settings: Settings) -> Check:
    """Keys are optional only on loopback: an API that listens on any other address refuses to start until
    a live (not revoked) key exists. `speechq up` checks this, and so does the API itself as it starts."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from api import keys
    from shared.db import session_scope
    from shared.schema import ApiKey

    host = settings.api_host
    try:
        with session_scope(settings.database) as db:
            live = db.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0
    except SQLAlchemyError:  # no database or no table yet: a fresh install has no key
        live = 0
    if live:
        return Check("API keys", True, f"{live} live key(s); every request needs one")
    if keys.is_loopback(host):
        return Check("API keys", True, f"no live key; the API listens on loopback ({host}) only")
    return Check("API keys", False,
                 f"the API would listen on {host}, beyond this machine, and no API key exists: anyone who reaches "
                 "it could read every call", "speechq keys create --name admin --admin   (prints the key once), "
                 "or SPEECHQ_API_HOST=127.0.0.1")


def data_folder(settings: Settings) -> Check:
    folders = {"data folder": (settings.data_dir.resolve(), "SPEECHQ_DATA_DIR")}
    if settings.spool_dir is not None:
        folders["spool folder"] = (settings.spool, "SPEECHQ_SPOOL_DIR")
    for name, (path, env) in folders.items():
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path) as probe:
                probe.write(b"speechq")
        except OSError as exc:
            return Check(name, False, f"{path} is not a writable folder ({exc.strerror or exc})",
                         f"{env}=/a/writable/folder speechq up   (or make {path} writable for {_user()})")
    return Check("data folder", True, str(settings.data_dir.resolve()))


def ffmpeg_on_path() -> Check:
    path = shutil.which("ffmpeg")
    if path is None:
        return Check("ffmpeg", False, "ffmpeg is not on PATH (it decodes every format libsndfile cannot)",
                     f"sudo apt-get install -y ffmpeg   (or {INSTALL})")
    return Check("ffmpeg", True, path)


def _models(settings: Settings) -> list[tuple[str, Path, str]]:
    return [("SenseVoiceSmall", settings.sensevoice_dir, "SPEECHQ_SENSEVOICE_MODEL_DIR"),
            ("emotion2vec+ large", settings.emotion2vec_dir, "SPEECHQ_EMOTION2VEC_MODEL_DIR"),
            ("FSMN-VAD", settings.vad_model_dir, "SPEECHQ_VAD_MODEL_DIR")]


def model_folder(settings: Settings, name: str, directory: Path, env: str) -> Check:
    """The released layout (config.yaml, model.pt and the files configuration.json names), a config
    that parses, and a checkpoint that opens as tensors."""
    from shared.models import weights
    from shared.models.registry import one_line

    directory = Path(directory).resolve()
    label = f"model {name}"
    fix = _model_fix(settings, name, directory, env)
    if not directory.is_dir():
        return Check(label, False, f"no model folder at {directory}{_relative_note(settings, env)}", fix)
    missing = [n for n in ["config.yaml", "model.pt", *_named_files(directory)] if not (directory / n).is_file()]
    if missing:
        return Check(label, False, f"{directory} lacks {', '.join(missing)}", fix)
    try:
        config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return Check(label, False, f"{directory / 'config.yaml'} does not parse ({one_line(exc)})", fix)
    if not isinstance(config, dict) or "model" not in config:
        return Check(label, False, f"{directory / 'config.yaml'} names no model", fix)
    try:
        state = weights.load_state(directory / "model.pt")
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or foreign: all mean the same to the operator
        return Check(label, False, f"{directory / 'model.pt'} does not open as a checkpoint: corrupt or incomplete? "
                                   f"({one_line(exc)})", fix)
    tensors = sum(1 for k in state if k != weights.MARKER_KEY) if isinstance(state, dict) else 0
    if not tensors:
        return Check(label, False, f"{directory / 'model.pt'} holds no tensors", fix)
    random = weights.MARKER_KEY in state or (directory / weights.RANDOM_MARKER).exists()
    return Check(label, True, f"{directory} ({tensors} tensors{', RANDOM weights' if random else ''})")


def _named_files(directory: Path) -> list[str]:
    """The files a released folder's configuration.json says it holds (tokenizer, CMVN, ...)."""
    try:
        metas = json.loads((directory / "configuration.json").read_text(encoding="utf-8")).get("file_path_metas", {})
    except (OSError, ValueError, AttributeError):
        return []
    names: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, str) and value:
            names.append(value)

    walk(metas)
    return [n for n in dict.fromkeys(names) if n not in ("config.yaml", "model.pt")]


def _model_fix(settings: Settings, name: str, directory: Path, env: str) -> str:
    if name == "FSMN-VAD":
        if os.environ.get(env):
            return f"unset {env}   (speechq ships the FSMN-VAD folder), or point it at a complete folder"
        return f"{INSTALL}   (the FSMN-VAD folder ships with speechq; the install is incomplete)"
    which = "sensevoice" if name.startswith("SenseVoice") else "emotion2vec"
    return (f"speechq models pull --model {which}   (offline: speechq models import /path/to/{directory.name}; "
            f"random weights for a trial: speechq models init-random --size tiny; or set {env})")


def _relative_note(settings: Settings, env: str) -> str:
    if settings.data_dir.is_absolute() or settings.models_dir or os.environ.get(env):
        return ""
    return (f" (SPEECHQ_DATA_DIR is `{settings.data_dir}`, relative to the current directory {Path.cwd()}: "
            "start speechq where you started it before, or set SPEECHQ_DATA_DIR to an absolute path)")


def ports(settings: Settings, flower: bool = True) -> list[Check]:
    wanted = [("API", settings.api_host, settings.api_port, "SPEECHQ_API_PORT")]
    if flower:
        wanted.append(("Flower", "127.0.0.1", settings.flower_port, "SPEECHQ_FLOWER_PORT"))
    if not settings.redis_url:
        wanted.append(("embedded Valkey", "127.0.0.1", settings.embedded_redis_port, "SPEECHQ_EMBEDDED_REDIS_PORT"))
    checks, seen = [], {}
    for name, host, port, env in wanted:
        if port in seen:
            checks.append(Check(f"{name} port", False, f"port {port} is also the {seen[port]} port",
                                f"{env}=<another free port> speechq up"))
            continue
        seen[port] = name
        checks.append(port_free(name, host, port, env))
    return checks


def port_free(name: str, host: str, port: int, env: str) -> Check:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            busy = exc.errno in (98, 13)  # EADDRINUSE, EACCES
            what = "is in use by another process" if exc.errno == 98 else f"cannot be opened ({exc.strerror})"
            return Check(f"{name} port", False, f"{host}:{port} {what}",
                         f"{env}=<a free port> speechq up" + (f"   (who holds it: ss -ltnp 'sport = :{port}')"
                                                                 if busy else ""))
    return Check(f"{name} port", True, f"{host}:{port} free")


def broker_reachable(settings: Settings) -> Check:
    from shared import broker
    from shared.models.registry import one_line

    try:
        broker.ping(settings.broker)
    except Exception as exc:  # noqa: BLE001
        return Check("broker", False, f"REDIS_URL {_safe_url(settings.broker)} does not answer ({one_line(exc)})",
                     "start Redis/Valkey there, or unset REDIS_URL: speechq up then runs an embedded Valkey")
    return Check("broker", True, _safe_url(settings.broker))


def database_reachable(settings: Settings) -> Check:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from shared.db import database_for
    from shared.models.registry import one_line

    shown = make_url(settings.database).render_as_string(hide_password=True)
    try:
        with database_for(settings.database).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        return Check("database", False, f"DATABASE_URL {shown} is unreachable ({one_line(exc)})",
                     "start the database server, or unset DATABASE_URL: speechq up then uses SQLite in the data folder")
    return Check("database", True, shown)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses; show only the scheme
        return url.split("://", 1)[0] + "://…"


def _user() -> str:
    try:
        return os.getlogin()
    except OSError:
        return str(os.getuid())


# --- `speechq selfcheck`: the install works -------------------------------------------------------

def selfcheck(settings: Settings) -> list[Check]:
    torchaudio = torchaudio_library()
    checks = [torchaudio, ffmpeg_runs()]
    if torchaudio.ok:  # funasr imports torchaudio: the VAD check would only repeat its error
        checks.append(vad_runs(settings))
    else:
        checks.append(Check("FSMN-VAD", False, "not tried: torchaudio does not load", torchaudio.fix))
    return checks


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _load_torchaudio() -> None:
    """Import torchaudio and make sure its native library (libtorchaudio, _torchaudio) loaded."""
    import torchaudio  # noqa: F401 - the import loads the native library, or raises OSError
    from torchaudio import _extension

    if not _extension._IS_TORCHAUDIO_EXT_AVAILABLE:
        raise ImportError("torchaudio's native library (libtorchaudio) is missing from the installation")


def torchaudio_library() -> Check:
    from shared.models.registry import one_line

    torch_v, audio_v = _version("torch"), _version("torchaudio")
    versions = f"torch {torch_v}, torchaudio {audio_v}"
    fix = f"{INSTALL}   (reinstalls torch and torchaudio as uv.lock pins them)"
    try:
        _load_torchaudio()
    except (OSError, ImportError) as exc:
        if "undefined symbol" in str(exc) or _release(torch_v) != _release(audio_v):
            message = (f"torch and torchaudio versions disagree ({versions}): torchaudio's native library was "
                       f"built for another torch and does not load ({one_line(exc)})")
        else:
            message = f"torchaudio's native library does not load ({versions}; {one_line(exc)})"
        return Check("torchaudio", False, message, fix)
    return Check("torchaudio", True, f"native library loaded ({versions})")


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def ffmpeg_runs() -> Check:
    on_path = ffmpeg_on_path()
    if not on_path.ok:
        return on_path
    cmd = [on_path.message, "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
           "-ac", "1", "-ar", "16000", "-f", "f32le", "-"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("ffmpeg", False, f"{on_path.message} does not run ({exc})", "sudo apt-get install -y ffmpeg")
    if out.returncode != 0 or len(out.stdout) != 16000 * 4:
        detail = out.stderr.decode(errors="replace").strip()[-300:] or f"{len(out.stdout)} bytes of audio"
        return Check("ffmpeg", False, f"{on_path.message} does not decode a test tone ({detail})",
                     "sudo apt-get install --reinstall -y ffmpeg")
    return Check("ffmpeg", True, f"{on_path.message} decodes")


def vad_runs(settings: Settings) -> Check:
    """The vendored FSMN-VAD through funasr, as the ingest workers load it, on a second of synthetic audio."""
    import numpy as np

    from shared.models import registry

    directory = Path(settings.vad_model_dir).resolve()
    t = np.arange(16000) / 16000
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    audio = (0.1 * voiced).astype(np.float32)
    try:
        model = registry.load_automodel(directory)
        result = model.generate(input=audio, max_end_silence_time=800, disable_pbar=True)
        segments = result[0]["value"]
    except Exception as exc:  # noqa: BLE001 - any failure here means the install is broken
        return Check("FSMN-VAD", False, f"{directory} does not load or run ({registry.one_line(exc, 400)})",
                     _model_fix(settings, "FSMN-VAD", directory, "SPEECHQ_VAD_MODEL_DIR"))
    return Check("FSMN-VAD", True, f"{directory}: loaded, ran on 1 s of audio ({len(segments)} segment(s))")
