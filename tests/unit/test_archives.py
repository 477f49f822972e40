import io
import tarfile
import zipfile

import pytest

from workers.archives import MemberRejected, is_archive, members, safe_name


def test_safe_name():
    assert safe_name("a/b/c.wav") == "a/b/c.wav"
    for bad in ("../x.wav", "/etc/passwd", "a/../../x", "..\\win.wav"):
        with pytest.raises(MemberRejected):
            safe_name(bad)


def test_tar_links_and_devices_are_rejected(tmp_path):
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tf:
        data = b"RIFF...."
        info = tarfile.TarInfo("ok.wav")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        dev = tarfile.TarInfo("dev.wav")
        dev.type = tarfile.CHRTYPE
        tf.addfile(dev)
    got = {name: opener for name, opener in members(path)}
    assert callable(got["ok.wav"])
    assert isinstance(got["link.wav"], MemberRejected) and isinstance(got["dev.wav"], MemberRejected)


def test_zip_bomb_ratio_is_rejected(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.wav", b"\0" * 5_000_000)
    ((name, opener),) = list(members(path))
    assert isinstance(opener, MemberRejected) and "compression ratio" in str(opener)


def test_is_archive_by_name_or_magic():
    assert is_archive("x.tar.gz", b"")
    assert is_archive("upload", b"PK\x03\x04rest")
    assert not is_archive("call.wav", b"RIFF")


def test_non_utf8_member_names_become_valid_text(tmp_path):
    path = tmp_path / "latin1.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\xe9/appel.wav")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    ((name, _),) = list(members(path))
    clean = safe_name(name)
    assert clean == "caf\ufffd/appel.wav"
    clean.encode("utf-8")  # storable in PostgreSQL


def test_encrypted_zip_member_is_rejected(tmp_path):
    path = tmp_path / "secret.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("call.wav", b"RIFF" + b"\0" * 100)
    raw = bytearray(path.read_bytes())
    # Set the 'encrypted' flag (bit 0) in the local header and in the central directory entry.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        raw[at + offset] |= 0x01
    path.write_bytes(bytes(raw))
    ((name, opener),) = list(members(path))
    assert isinstance(opener, MemberRejected) and "encrypted" in str(opener)
