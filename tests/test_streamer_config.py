"""``otf2d stream --config FILE`` and the log formats, through the real command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from otf2d.core.errors import ConfigError
from otf2d.streamer.cli import add_args, config_from_args

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_args(parser)
    return parser.parse_args(list(argv))


def write_config(path: Path, body: str) -> Path:
    path.write_text("[streamer]\n" + body)
    return path


def test_the_file_sets_the_settings_and_flags_win(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "s.toml",
        f'watch_dirs = ["{tmp_path}"]\nengine = "tcp://gpu:5555"\nsession = "krios1-g3"\nwindow = 4\n'
        "poll_interval_s = 3\nverify_pixels = false\n",
    )
    loaded = config_from_args(parse("--config", str(config), "--window", "2"))
    assert loaded.watch_dirs == (tmp_path,) and loaded.engine == "tcp://gpu:5555"
    assert loaded.window == 2 and loaded.poll_interval_s == 3.0 and loaded.verify_pixels is False
    assert loaded.ledger_path.name == "stream-krios1-g3.sqlite"  # the default, from the file's session
    assert loaded.batch_size == 256  # the dataclass default where neither says
    flags_only = config_from_args(parse("--watch", str(tmp_path), "--engine", "tcp://e:1", "--session", "s"))
    assert flags_only.window == 8 and flags_only.observer == "auto"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('watch_dirs = ["/d"]\nengine = "tcp://e:1"\nsesion = "x"\n', r"unknown key\(s\) \['sesion'\]"),
        ('watch_dirs = ["/d"]\nengine = "tcp://e:1"\nsession = "x"\nwindow = "8"\n', r"\[streamer\]\.window"),
        ('watch_dirs = []\nengine = "tcp://e:1"\nsession = "x"\n', r"\[streamer\]\.watch_dirs"),
        ('watch_dirs = ["/d"]\nengine = "tcp://e:1"\nsession = "x"\nonce = true\n', r"unknown key"),
        ('watch_dirs = ["/d"\n', "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    config = write_config(tmp_path / "bad.toml", body)
    with pytest.raises(ConfigError, match=message) as info:
        config_from_args(parse("--config", str(config)))
    assert str(config) in str(info.value)


def test_required_settings_are_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --watch, --engine, --session"):
        config_from_args(parse())
    config = write_config(tmp_path / "s.toml", 'engine = "tcp://e:1"\n')
    with pytest.raises(ConfigError, match=rf"needs --watch, --session or in \[streamer\] of {re.escape(str(config))}"):
        config_from_args(parse("--config", str(config)))
    (tmp_path / "none.toml").write_text("[engine]\n")
    with pytest.raises(ConfigError, match="no \\[streamer\\] table"):
        config_from_args(parse("--config", str(tmp_path / "none.toml")))


def _run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    stderr = (tmp_path / "stderr.log").open("w")
    try:
        return subprocess.run(
            [sys.executable, "-m", "otf2d.core.cli", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={**os.environ, **(env or {})},
            check=False,
        )
    finally:
        stderr.close()


def _config(tmp_path: Path) -> Path:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    return write_config(
        tmp_path / "s.toml",
        f'watch_dirs = ["{watch}"]\nengine = "tcp://127.0.0.1:9"\nsession = "g1"\n'
        f'ledger_path = "{tmp_path / "ledger.sqlite"}"\n',
    )


def test_stream_config_runs_and_logs_json(tmp_path: Path) -> None:
    result = _run(["-v", "--log-format", "json", "stream", "--config", str(_config(tmp_path)), "--once"], tmp_path)
    lines = (tmp_path / "stderr.log").read_text().splitlines()
    assert result.returncode == 0, lines
    records = [json.loads(line) for line in lines]
    assert records and all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    assert any("everything found has been delivered" in r["message"] for r in records)
    assert (tmp_path / "ledger.sqlite").exists()  # the ledger path of the file


def test_under_journald_lines_carry_no_timestamp_of_their_own(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    log = tmp_path / "stderr.log"
    log.touch()
    stat = os.stat(log)  # systemd sets JOURNAL_STREAM to stderr's device:inode
    _run(["-v", "stream", "--config", config, "--once"], tmp_path, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    journal = log.read_text().splitlines()
    assert journal and all(re.match(r"^(INFO|WARNING|ERROR|DEBUG) ", line) for line in journal), journal
    _run(["-v", "stream", "--config", config, "--once"], tmp_path, {"JOURNAL_STREAM": "1:2"})
    terminal = log.read_text().splitlines()
    assert terminal and all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in terminal), terminal
