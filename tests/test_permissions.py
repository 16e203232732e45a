"""A data dir open to other users is refused, as ssh refuses a readable private key.

Each case makes a real data dir (an in-process server creates it), opens one
part of it to others with chmod, and starts `tcpmq serve` as a process: it
must exit 2 with one line naming the file and the chmod that fixes it. `tcpmq
token` reads the same secret: it refuses the same, and creates nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import running_server
from processes import run_cli, serve
from tcpmq.auth import SECRET_FILE
from tcpmq.storage.store import STORE_DIR
from tcpmq.users import USERS_FILE
from test_data_dir import ping, serve_to_the_end


async def made_data_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    async with running_server(data_dir):
        pass
    return data_dir


@pytest.mark.parametrize(
    ("part", "mode", "problem", "fix"),
    [
        (SECRET_FILE, 0o604, "readable by others", "chmod 600"),
        (SECRET_FILE, 0o620, "writable by its group", "chmod 600"),
        (USERS_FILE, 0o644, "readable by others", "chmod 600"),
        (USERS_FILE, 0o602, "writable by others", "chmod 600"),
        (STORE_DIR, 0o770, "writable by its group", "chmod go-w"),
        ("", 0o707, "writable by others", "chmod o-w"),
    ],
)
async def test_serve_refuses_a_data_dir_open_to_others(
    tmp_path: Path, part: str, mode: int, problem: str, fix: str
) -> None:
    data_dir = await made_data_dir(tmp_path)
    path = data_dir / part if part else data_dir
    path.chmod(mode)
    code, err = await serve_to_the_end(data_dir)
    assert code == 2, err
    assert err == (
        f"tcpmq: not starting: {path} is {problem} (mode {mode:04o}); fix: {fix} {path}\n"
    )


async def test_group_readable_secrets_and_the_fix_start(tmp_path: Path) -> None:
    data_dir = await made_data_dir(tmp_path)
    # A backup group may read the secrets; a data dir others may read is no one's business.
    (data_dir / SECRET_FILE).chmod(0o640)
    (data_dir / USERS_FILE).chmod(0o640)
    data_dir.chmod(0o755)
    (data_dir / STORE_DIR).chmod(0o755)
    async with serve(data_dir) as process:
        assert (await ping(process.host, process.port))["ok"] is True


async def test_token_refuses_a_secret_others_can_read(tmp_path: Path) -> None:
    data_dir = await made_data_dir(tmp_path)
    secret = data_dir / SECRET_FILE
    secret.chmod(0o644)
    code, out, err = await run_cli("token", "admin", "--data-dir", str(data_dir))
    assert (code, out) == (2, "")
    assert err == (
        f"tcpmq: not reading the secret: {secret} is readable by others (mode 0644); "
        f"fix: chmod 600 {secret}\n"
    )
    secret.chmod(0o600)
    code, out, err = await run_cli("token", "admin", "--data-dir", str(data_dir))
    assert code == 0, err
    assert out.count(".") == 2  # a JWT: header.claims.signature


async def test_token_creates_no_data_dir_and_no_secret(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, out, err = await run_cli("token", "admin", "--data-dir", str(missing))
    assert (code, out) == (1, "")
    assert err.startswith(f"tcpmq: {missing} does not exist: no broker's data dir at {missing}")
    assert not missing.exists()

    # A directory that holds no broker's files (a typo in --data-dir) stays empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = await run_cli("token", "admin", "--data-dir", str(empty))
    assert code == 1
    assert err.startswith(f"tcpmq: {empty / SECRET_FILE} does not exist")
    assert list(empty.iterdir()) == []
