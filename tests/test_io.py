"""ftclip.io: atomic writes leave the usual file mode, not mkstemp's owner-only 0600."""

from __future__ import annotations

import os
import stat

from ftclip.io import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_writes_get_the_umask_mode_like_open(tmp_path):
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        files = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_json(tmp_path / "b.json", {"a": 1}),
                 atomic_write(tmp_path / "c.bin", lambda tmp: open(tmp, "wb").close())]
    finally:
        os.umask(old)
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o644
    assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [want] * 3
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["a.txt", "b.json", "c.bin", "plain.txt"]  # no temp left


def test_overwriting_keeps_the_new_content(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"completed": ["a"]})
    atomic_write_json(path, {"completed": ["a", "b"]})
    assert path.read_text().count('"b"') == 1
