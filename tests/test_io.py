"""compress/io.py, the output helper every stage writes through: which outputs are refused, and
what the atomic writer does to regular files, special files, symlinks, permissions and failures.

Everything is written under tmp_path except the /dev/null case, which runs behind a guard that
refuses any rename onto a special file, so even a broken writer (a mutant under `make mutation`)
cannot replace the machine's /dev/null."""
import dataclasses
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from compress.errors import ArtifactError, UserError
from compress.io import atomic_path, check_outputs, existing_file, sidecar, write_json


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.fixture
def no_rename_onto_special_files(monkeypatch):
    """os.replace that refuses a destination which exists and is not a regular file."""
    real_replace = os.replace

    def guarded(src, dst, *args, **kwargs):
        try:
            st = os.stat(dst)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise AssertionError(f"rename onto the special file {dst}")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", guarded)


def names_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ----------------------------------------------------------------------------- check_outputs

def test_distinct_outputs_pass_and_come_back_as_paths_with_parents_created(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"x")
    a = tmp_path / "deep" / "er" / "out.onnx"
    b = str(tmp_path / "other" / "out.onnx.json")
    outs = check_outputs([a, None, b], [src, None])
    assert outs == [a, Path(b)]
    assert all(isinstance(o, Path) for o in outs)
    assert a.parent.is_dir() and Path(b).parent.is_dir()
    assert not a.exists() and not Path(b).exists()  # only the folders are created


def test_no_outputs_is_fine(tmp_path):
    assert check_outputs([None], [tmp_path / "in"]) == []
    assert check_outputs([]) == []


@pytest.mark.parametrize("spelling", ["same", "detour", "symlink", "hardlink", "relative"])
def test_output_that_is_the_input_under_any_spelling_is_refused(tmp_path, spelling, monkeypatch):
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    if spelling == "same":
        out = tmp_path / "model.safetensors"
    elif spelling == "detour":
        out = tmp_path / "sub" / ".." / "model.safetensors"
    elif spelling == "symlink":
        out = tmp_path / "link.safetensors"
        out.symlink_to(src)
    elif spelling == "hardlink":
        out = tmp_path / "hard.safetensors"
        os.link(src, out)
    else:
        monkeypatch.chdir(tmp_path / "sub")
        out = Path("../model.safetensors")
    with pytest.raises(UserError, match=r"^output .* is the same file as input .*model\.safetensors; choose another"):
        check_outputs([out], [src])
    assert src.read_bytes() == b"weights"


def test_the_input_may_come_in_any_position(tmp_path):
    src = tmp_path / "b.json"
    src.write_text("{}")
    with pytest.raises(UserError, match="same file as input"):
        check_outputs([tmp_path / "a.onnx", src], [tmp_path / "other.safetensors", src])


def test_a_new_output_spelled_like_a_new_input_is_the_same_file(tmp_path):
    # neither exists yet (e.g. a report not written so far): equal after resolving
    with pytest.raises(UserError, match="same file as input"):
        check_outputs([tmp_path / "x" / ".." / "r.json"], [tmp_path / "r.json"])


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(UserError, match=r"^two outputs would be written to the same file .*out\.onnx; choose"):
        check_outputs([out, tmp_path / "x" / ".." / "out.onnx"])
    assert not out.parent.joinpath("x").exists()  # refused before any folder is created
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(UserError, match="two outputs"):
        check_outputs([tmp_path / "first.onnx", real, link])


def test_different_files_are_not_confused(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("{}")
    b.write_text("{}")  # same content, different files
    assert check_outputs([a], [b]) == [a]
    assert check_outputs([tmp_path / "new1"], [tmp_path / "new2"]) == [tmp_path / "new1"]


def test_a_directory_output_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"^output .* is a directory; give a file name$"):
        check_outputs([tmp_path / "new.onnx", tmp_path])


def test_no_folder_is_created_when_a_later_output_is_refused(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"x")
    with pytest.raises(UserError):
        check_outputs([tmp_path / "made" / "out.onnx", src], [src])
    assert not (tmp_path / "made").exists()


# ----------------------------------------------------------------------------- existing_file

def test_existing_file(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"x")
    assert existing_file(str(f), "a model") == f
    assert isinstance(existing_file(f, "a model"), Path)
    with pytest.raises(UserError, match=r"^.*nope\.onnx: no such file$"):
        existing_file(tmp_path / "nope.onnx", "an ONNX model")
    with pytest.raises(ArtifactError, match=r": is a directory, expected an ONNX model$"):
        existing_file(tmp_path, "an ONNX model", ArtifactError)
    with pytest.raises(ArtifactError, match="no such file"):
        existing_file(tmp_path / "nope", "x", ArtifactError)


# ----------------------------------------------------------------------------- atomic_path: regular files

def test_new_file_is_written_under_a_hidden_temporary_name_in_the_same_folder(tmp_path):
    out = tmp_path / "sub" / "report.json"
    with atomic_path(out) as tmp:
        assert tmp != out and tmp.parent == out.parent  # same folder: the rename cannot cross devices
        assert tmp.name.startswith(".report.json.") and tmp.name.endswith(".tmp")  # hidden; *.tmp is ignored by git
        assert tmp.exists() and not out.exists()
        tmp.write_text("new")
    assert out.read_text() == "new"
    assert names_in(out.parent) == {"report.json"}  # no temporary file left


def test_replaced_file_gets_the_new_content_and_nothing_else_is_left(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("old")
    with atomic_path(str(out)) as tmp:
        assert out.read_text() == "old"  # untouched while the new content is written
        tmp.write_text("new")
    assert out.read_text() == "new" and names_in(tmp_path) == {"m.onnx"}


def test_a_failure_leaves_the_old_file_untouched(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("old")
    out.chmod(0o640)
    inode = out.stat().st_ino
    with pytest.raises(RuntimeError, match="export failed"):
        with atomic_path(out) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("export failed")
    assert out.read_text() == "old" and out.stat().st_ino == inode
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert names_in(tmp_path) == {"m.onnx"}  # the temporary file is deleted


def test_a_failure_creates_nothing(tmp_path):
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("x")
            raise KeyError("boom")
    assert names_in(tmp_path) == set()


def test_a_writer_that_removed_its_temporary_file_fails_cleanly(tmp_path):
    out = tmp_path / "m.json"
    out.write_text("old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(out) as tmp:
            tmp.unlink()
    assert out.read_text() == "old" and names_in(tmp_path) == {"m.json"}


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o000, 0o666)])
def test_a_new_file_gets_the_permissions_of_a_plain_open(tmp_path, umask, mask, mode):
    umask(mask)
    out = tmp_path / f"m{mask:o}.json"
    with atomic_path(out) as tmp:
        tmp.write_text("{}")
    assert stat.S_IMODE(out.stat().st_mode) == mode  # not mkstemp's 0600
    with open(tmp_path / "plain", "w"):
        pass
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode  # what open() gives, for comparison
    assert os.umask(mask) == mask  # the umask is left as it was


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755])
def test_a_replaced_file_keeps_its_permissions(tmp_path, umask, mode):
    umask(0o022)
    out = tmp_path / "m.onnx"
    out.write_text("old")
    out.chmod(mode)
    with atomic_path(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and stat.S_IMODE(out.stat().st_mode) == mode


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match=r"^output .*d is a directory; give a file name$"):
        with atomic_path(tmp_path / "d"):
            pass  # pragma: no cover - never reached
    assert names_in(tmp_path / "d") == set()


# ----------------------------------------------------------------------------- atomic_path: links and special files

def test_an_output_symlink_stays_a_link_and_its_target_gets_the_content(tmp_path):
    target = tmp_path / "real" / "m.onnx"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "m.onnx"
    link.symlink_to(target)
    with atomic_path(link) as tmp:
        assert tmp.parent == target.parent  # written beside the target, renamed onto the target
        tmp.write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert names_in(tmp_path) == {"real", "m.onnx"} and names_in(target.parent) == {"m.onnx"}


def test_a_relative_symlink_chain_is_followed(tmp_path):
    (tmp_path / "a").mkdir()
    target = tmp_path / "a" / "t.json"
    target.write_text("old")
    (tmp_path / "mid.json").symlink_to("a/t.json")
    (tmp_path / "top.json").symlink_to("mid.json")
    with atomic_path(tmp_path / "top.json") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "top.json").is_symlink() and (tmp_path / "mid.json").is_symlink()
    assert target.read_text() == "new"


def test_a_dangling_symlink_creates_its_target(tmp_path, umask):
    umask(0o022)
    (tmp_path / "out").mkdir()
    link = tmp_path / "m.json"
    link.symlink_to(tmp_path / "out" / "new.json")
    with atomic_path(link) as tmp:
        tmp.write_text("x")
    assert link.is_symlink() and (tmp_path / "out" / "new.json").read_text() == "x"
    assert stat.S_IMODE((tmp_path / "out" / "new.json").stat().st_mode) == 0o644


def test_a_fifo_is_written_in_place_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so opening for writing cannot block
    try:
        with atomic_path(fifo) as p:
            assert Path(p) == fifo
            with open(p, "w") as f:
                f.write("hello")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert os.read(reader, 100) == b"hello"
    finally:
        os.close(reader)
    assert names_in(tmp_path) == {"pipe.json"}


def test_write_json_through_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_json(fifo, {"a": 1})
        assert json.loads(os.read(reader, 1000)) == {"a": 1}
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_dev_null_is_written_in_place_and_stays_a_device(no_rename_onto_special_files):
    before = os.stat(os.devnull)
    with atomic_path(os.devnull) as p:
        assert str(p) == os.devnull
        with open(p, "w") as f:
            f.write("discarded")
    write_json(os.devnull, {"discarded": True})
    after = os.stat(os.devnull)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode)


def test_the_guard_itself_refuses_a_rename_onto_a_fifo(tmp_path, no_rename_onto_special_files):
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    (tmp_path / "f").write_text("x")
    with pytest.raises(AssertionError, match="special file"):
        os.replace(tmp_path / "f", fifo)
    os.replace(tmp_path / "f", tmp_path / "g")  # regular renames go through


# ----------------------------------------------------------------------------- write_json, sidecar

@dataclasses.dataclass
class _Point:
    x: int
    y: list


class _Reportish:
    def to_dict(self):
        return {"kind": "report"}

    def tolist(self):  # to_dict wins over tolist
        return ["not", "this"]


def test_write_json_is_indented_utf8_with_a_final_newline(tmp_path):
    obj = {"b": [1, 2], "a": {"é": "ü"}}
    out = write_json(str(tmp_path / "r.json"), obj)
    assert out == tmp_path / "r.json" and isinstance(out, Path)
    raw = out.read_bytes()
    assert raw.endswith(b"}\n") and raw.count(b"\n") > 3  # one value per line, readable in a diff
    assert b'\n  "b": [\n    1,' in raw  # two-space indentation, keys in the order given
    assert json.loads(raw.decode("utf-8")) == obj


def test_write_json_serialises_our_objects(tmp_path):
    obj = {"arr": np.arange(3), "scalar": np.float64(0.5), "path": Path("/x/y.onnx"), "point": _Point(1, [2]),
           "report": _Reportish()}
    data = json.loads(write_json(tmp_path / "r.json", obj).read_text())
    assert data == {"arr": [0, 1, 2], "scalar": 0.5, "path": "/x/y.onnx", "point": {"x": 1, "y": [2]},
                    "report": {"kind": "report"}}


@pytest.mark.parametrize("bad", [object(), _Point, {1, 2}])
def test_write_json_refuses_what_it_cannot_serialise_and_writes_nothing(tmp_path, bad):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(TypeError, match=r"^not JSON serialisable: (object|type|set)$"):
        write_json(out, {"x": bad})
    assert out.read_text() == "old" and names_in(tmp_path) == {"r.json"}


def test_sidecar_appends_to_the_full_name():
    assert sidecar("runs/base.onnx") == Path("runs/base.onnx.json")
    assert sidecar(Path("/a/b/m.safetensors"), ".eval-test.json") == Path("/a/b/m.safetensors.eval-test.json")
    assert sidecar("plain") == Path("plain.json")
    assert isinstance(sidecar("x.onnx"), Path)


def test_missing_parent_folders_are_created(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "a" / "b" / "c" / "m.json"
    with atomic_path(out) as tmp:
        tmp.write_text("x")
    assert out.read_text() == "x" and names_in(out.parent) == {"m.json"}
    write_json(tmp_path / "d" / "e" / "r.json", [1])
    assert json.loads((tmp_path / "d" / "e" / "r.json").read_text()) == [1]
