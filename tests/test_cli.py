"""The tinyzip command line: zstd/xz habits, stdin/stdout, files, errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from tinyzip import cli

SAMPLE = b"".join(
    b"2026-11-23 10:%02d:%02d INFO  dfs.DataNode: Receiving block blk_%d src: /10.250.19.%d:54106\n"
    % (i // 60, i % 60, 7 * i * i + 3, i % 251)
    for i in range(200)
)


def run(*args: str, stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinyzip", *args], input=stdin, capture_output=True, cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def logfile(tmp_path: Path) -> Path:
    path = tmp_path / "app.log"
    path.write_bytes(SAMPLE)
    return path


def test_stdin_to_stdout_roundtrip() -> None:
    packed = run(stdin=SAMPLE)
    assert packed.returncode == 0, packed.stderr
    assert packed.stdout[:4] == b"\x89TZP"
    unpacked = run("-d", stdin=packed.stdout)
    assert unpacked.returncode == 0, unpacked.stderr
    assert unpacked.stdout == SAMPLE
    dashed = run("-d", "-", stdin=packed.stdout)
    assert dashed.stdout == SAMPLE


def test_compress_adds_suffix_keeps_input_and_decompress_strips_it(logfile: Path) -> None:
    assert cli.main(["-q", "-m", "zstd", str(logfile)]) == 0
    archive = logfile.with_name("app.log.tzp")
    assert archive.is_file() and logfile.is_file()
    logfile.unlink()
    assert cli.main(["-q", "-d", str(archive)]) == 0
    assert logfile.read_bytes() == SAMPLE
    assert archive.is_file()


def test_subcommand_forms_match_flags(logfile: Path, tmp_path: Path) -> None:
    assert cli.main(["compress", "-q", "-m", "zstd", str(logfile), "-o", str(tmp_path / "a.tzp")]) == 0
    assert cli.main(["decompress", "-q", str(tmp_path / "a.tzp"), "-o", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b").read_bytes() == SAMPLE


def test_rm_removes_input_only_after_success(logfile: Path) -> None:
    assert cli.main(["-q", "-m", "zstd", "--rm", str(logfile)]) == 0
    assert not logfile.exists()
    archive = logfile.with_name("app.log.tzp")
    assert cli.main(["-q", "-d", "--rm", str(archive)]) == 0
    assert not archive.exists() and logfile.read_bytes() == SAMPLE


def test_existing_output_is_not_overwritten_without_force(logfile: Path, capsys) -> None:
    archive = logfile.with_name("app.log.tzp")
    archive.write_bytes(b"precious")
    assert cli.main([str(logfile)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert archive.read_bytes() == b"precious"
    assert cli.main(["-q", "-m", "zstd", "-f", str(logfile)]) == 0
    assert archive.read_bytes()[:4] == b"\x89TZP"


def test_stdout_flag_writes_to_stdout(logfile: Path, capfdbinary) -> None:
    assert cli.main(["-q", "-m", "zstd", "-c", str(logfile)]) == 0
    packed = capfdbinary.readouterr().out
    assert not logfile.with_name("app.log.tzp").exists()
    archive = logfile.with_name("x.tzp")
    archive.write_bytes(packed)
    assert cli.main(["-q", "-dc", str(archive)]) == 0
    assert capfdbinary.readouterr().out == SAMPLE


def test_refuses_to_write_compressed_data_to_a_terminal(logfile: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdout", _FakeTty())
    assert cli.main(["-c", str(logfile)]) == 1
    assert "terminal" in capsys.readouterr().err


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_recursive_compresses_every_file_and_skips_archives(tmp_path: Path) -> None:
    (tmp_path / "logs" / "sub").mkdir(parents=True)
    for name in ["logs/a.log", "logs/sub/b.log", "logs/sub/c.log"]:
        (tmp_path / name).write_bytes(SAMPLE[: 100 + len(name)])
    assert cli.main(["-q", "-m", "zstd", "-r", str(tmp_path / "logs")]) == 0
    assert cli.main(["-q", "-m", "zstd", "-r", str(tmp_path / "logs")]) == 1  # outputs exist now
    archives = sorted(p.name for p in (tmp_path / "logs").rglob("*.tzp"))
    assert archives == ["a.log.tzp", "b.log.tzp", "c.log.tzp"]
    for name in ["logs/a.log", "logs/sub/b.log", "logs/sub/c.log"]:
        (tmp_path / name).unlink()
    assert cli.main(["-q", "-d", "-r", str(tmp_path / "logs")]) == 0
    assert (tmp_path / "logs/sub/c.log").read_bytes() == SAMPLE[: 100 + len("logs/sub/c.log")]


def test_directory_without_recursive_is_an_error(tmp_path: Path, capsys) -> None:
    assert cli.main([str(tmp_path)]) == 1
    assert "use -r" in capsys.readouterr().err


def test_list_shows_sizes_ratio_and_model(logfile: Path, capsys) -> None:
    assert cli.main(["-q", "-m", "cm", str(logfile)]) == 0
    capsys.readouterr()
    assert cli.main(["list", str(logfile) + ".tzp"]) == 0
    out = capsys.readouterr().out
    assert "Uncompressed" in out and str(len(SAMPLE)) in out and " cm " in out
    assert cli.main(["-l", str(logfile) + ".tzp"]) == 0


def test_test_command_accepts_good_and_rejects_damaged(logfile: Path, capsys) -> None:
    assert cli.main(["-q", "-m", "zstd", str(logfile)]) == 0
    archive = logfile.with_name("app.log.tzp")
    assert cli.main(["test", str(archive)]) == 0
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x10
    archive.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["-t", str(archive)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tinyzip: {archive}: ") and err.count("\n") == 1


def test_missing_input_is_one_line_error(tmp_path: Path) -> None:
    result = run(str(tmp_path / "nope.log"))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("tinyzip: ") and "No such file" in err and err.count("\n") == 1


def test_decompress_needs_the_suffix_or_an_output(logfile: Path, capsys) -> None:
    assert cli.main(["-d", str(logfile)]) == 1
    assert "unknown suffix" in capsys.readouterr().err


def test_already_compressed_input_is_skipped_with_a_warning(logfile: Path, capsys) -> None:
    assert cli.main(["-q", "-m", "zstd", str(logfile)]) == 0
    assert cli.main([str(logfile) + ".tzp"]) == 2
    assert "already has .tzp suffix" in capsys.readouterr().err


def test_output_with_several_inputs_is_rejected(logfile: Path, tmp_path: Path, capsys) -> None:
    assert cli.main([str(logfile), str(logfile), "-o", str(tmp_path / "x")]) == 1
    assert "one input" in capsys.readouterr().err


def test_unknown_model_is_one_line_error(logfile: Path, capsys) -> None:
    assert cli.main(["-m", "no-such-model", str(logfile)]) == 1
    err = capsys.readouterr().err
    assert "no-such-model" in err and err.count("\n") == 1
    assert not logfile.with_name("app.log.tzp").exists()


def test_threads_flag_is_accepted(logfile: Path) -> None:
    assert cli.main(["-q", "-m", "zstd", "-T", "1", "-c", str(logfile)]) == 0


def test_help_lists_subcommands_and_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ["compress", "decompress", "test", "list", "info", "train", "bench", "examples:"]:
        assert word in out


def test_python_dash_m_and_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith(b"tinyzip ")
