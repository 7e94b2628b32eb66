"""LocalHost: the Host interface on this machine, with subprocess (the control-plane node by default)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from provision.config import Secret
from provision.errors import CommandTimeout, ProvisionError, TransportError
from provision.hosts.common import (
    INSTALL_SCRIPT,
    TMP_SUFFIX,
    Background,
    FileSource,
    HostBase,
    OnCommand,
    sha256_file,
)


class LocalHost(HostBase):
    """Runs argv lists with subprocess; sudo only when not already root."""

    is_local = True

    def __init__(self, name: str | None = None, address: str = "127.0.0.1", *,
                 sudo_password: str | Secret | None = None, on_command: OnCommand | None = None):
        super().__init__(name or socket.gethostname(), address, sudo_password=sudo_password,
                         on_command=on_command)

    def _is_root(self) -> bool:
        return os.geteuid() == 0

    def _exec(self, argv: list[str], stdin: bytes | None, timeout: float | None,
              display: str) -> tuple[int, bytes, bytes]:
        if isinstance(stdin, FileSource):
            stdin = b"".join(stdin.chunks())
        with self._tracked(argv) as running:
            try:  # a session of its own: interrupt() and timeouts end all of it
                p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
            except FileNotFoundError:
                return 127, b"", f"{argv[0]}: command not found\n".encode()
            except PermissionError:
                return 126, b"", f"{argv[0]}: permission denied\n".encode()
            running.sid, running.cancel = p.pid, p.kill
            try:
                out, err = p.communicate(stdin or b"", timeout=timeout)
            except subprocess.TimeoutExpired:
                self._end_sessions([running])
                with contextlib.suppress(OSError):  # sudo's process is not ours to signal
                    p.kill()
                try:
                    out, err = p.communicate(timeout=5)
                except subprocess.TimeoutExpired:  # a child in another group still holds the pipes
                    out, err = b"", b""
                raise CommandTimeout(f"{self.name}: `{display}` did not finish within {timeout:g} s",
                                     "re-run to continue; raise the timeout if the step is legitimately slow",
                                     self.mask(out.decode(errors="replace")),
                                     self.mask(err.decode(errors="replace"))) from None
            return p.returncode, out, err

    def _start(self, argv: list[str], stdin: bytes, display: str) -> LocalBackground:
        # its own session: a Ctrl-C meant for provision must not end it before provision releases it
        try:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        except OSError as e:
            raise TransportError(f"{self.name}: cannot start `{display}`: {e.strerror or e}",
                                 "check that the command exists on this machine") from None
        bg = LocalBackground(self.name, display, p)
        if stdin:
            bg.send(stdin)
        return bg

    def put(self, local: Path, remote: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        """Copy a file; skip when the target already has the same sha256. True when bytes were copied."""
        local = Path(local)
        sha = sha256_file(local)
        if sudo and not self._is_root():
            if self._skip_if_same(remote, sha, mode, sudo=True) is None:
                return False
            fd, staged = tempfile.mkstemp(prefix="provision-stage-")
            os.close(fd)
            try:
                shutil.copyfile(local, staged)
                self.run(["sh", "-c", INSTALL_SCRIPT, "sh", f"{mode:o}", staged, remote, sha], sudo=True)
            finally:
                if os.path.exists(staged):
                    os.unlink(staged)
        else:
            if self._skip_local(remote, sha, mode):
                return False
            self._copy_verified(local, remote, sha, mode)
        self.stats.files_sent += 1
        self.stats.bytes_sent += local.stat().st_size
        return True

    def _skip_local(self, remote: str, sha: str, mode: int) -> bool:
        target = Path(remote)
        if not target.is_file() or sha256_file(target) != sha:
            return False
        if target.stat().st_mode & 0o7777 != mode:
            os.chmod(target, mode)
        self.stats.files_skipped += 1
        return True

    def _copy_verified(self, local: Path, remote: str, sha: str, mode: int) -> None:
        target = Path(remote)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + TMP_SUFFIX)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 until verified
        with os.fdopen(fd, "wb") as out, open(local, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        if sha256_file(tmp) != sha:
            tmp.unlink()
            raise ProvisionError(f"{self.name}: {remote}: checksum mismatch after copy",
                                 "the disk may be full or failing; check `df` and `dmesg`, then re-run")
        os.chmod(tmp, mode)
        os.replace(tmp, target)

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = local.with_name(local.name + TMP_SUFFIX)
        shutil.copyfile(remote, tmp)
        os.replace(tmp, local)

    def close(self) -> None:
        """Nothing to release; present so LocalHost and SSHHost are interchangeable."""


class LocalBackground(Background):
    """Host.start on this machine: a child process with pipes."""

    def __init__(self, host: str, display: str, proc: subprocess.Popen):
        super().__init__(host, display)
        self.proc = proc

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _read(self, timeout: float) -> bytes | None:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return os.read(self.proc.stdout.fileno(), 65536) if ready else None

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def _wait(self, timeout: float) -> int | None:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc
