"""SSHHost: the Host interface over ONE paramiko connection per node per run.

Why paramiko directly (fabric is on paramiko too): every knob that matters here must be ours, not a
default — the host-key policy (fabric installs AutoAddPolicy), TCP_NODELAY (48 ms → 5 ms per command),
dead-link detection (TCP_USER_TIMEOUT + keepalives, so a cut cable is an error, not a hang), and
sudo's password on stdin only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from provision.config import Secret
from provision.errors import CommandFailed, CommandTimeout, HostKeyError, ProvisionError, TransportError
from provision.hosts.common import (
    RECEIVE_SCRIPT,
    SESSION_WRAP,
    SID_MARK,
    TMP_SUFFIX,
    Background,
    FileSource,
    HostBase,
    OnCommand,
    Running,
    sha256_file,
)

CHUNK = 32768  # one SFTP write request; paramiko pipelines them
# Seconds sent data may stay unacknowledged before the link counts as dead (TCP_USER_TIMEOUT). Each lost
# segment is retransmitted about 6 times in 15 s, so a slow or lossy link that still delivers does not
# trip it; a cut cable is reported in about 15-18 s (measured, tests/hosts/test_faults.py).
DEAD_LINK_TIMEOUT = 15.0


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko PKey: `SHA256:base64-without-padding`."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def default_known_hosts() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


class SSHHost(HostBase):
    """A node reached over SSH. Connects on first use; the one transport serves every command and SFTP."""

    def __init__(self, address: str, *, user: str, port: int = 22, name: str | None = None,
                 identity: str | Path | None = None, password: str | Secret | None = None,
                 sudo_password: str | Secret | None = None, known_hosts: str | Path | None = None,
                 system_known_hosts: str | Path | None | bool = True, accept_new_host_keys: bool = False,
                 accept_host_keys: Iterable[str] = (), connect_timeout: float = 15.0,
                 dead_link_timeout: float = DEAD_LINK_TIMEOUT, nodelay: bool = True, look_for_keys: bool | None = None,
                 allow_agent: bool | None = None, on_command: OnCommand | None = None):
        pw = password.reveal() if isinstance(password, Secret) else password
        super().__init__(name or address, address, sudo_password=sudo_password if sudo_password else pw,
                         on_command=on_command, secrets=[pw] if pw else ())
        self.user = user
        self.port = port
        self.identity = str(identity) if identity else None
        self._password = pw
        self.known_hosts = Path(known_hosts) if known_hosts else None
        if system_known_hosts is True:
            self.system_known_hosts: Path | None = default_known_hosts()
        else:
            self.system_known_hosts = Path(system_known_hosts) if system_known_hosts else None
        self.accept_new_host_keys = accept_new_host_keys
        self.accept_host_keys = {_norm_fp(f) for f in accept_host_keys}
        self.connect_timeout = connect_timeout
        self.dead_link_timeout = dead_link_timeout
        self.nodelay = nodelay
        self.look_for_keys = (self.identity is None) if look_for_keys is None else look_for_keys
        self.allow_agent = (self.identity is None) if allow_agent is None else allow_agent
        self._client = None
        self._sftp = None
        self._lock = threading.Lock()

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}" + (f":{self.port}" if self.port != 22 else "")

    def _is_root(self) -> bool:
        return self.user == "root"

    # -- connection ------------------------------------------------------------------------------
    @property
    def known_hosts_in_use(self) -> Path:
        """Where an accepted key is appended: --known-hosts FILE if given, else ~/.ssh/known_hosts."""
        return self.known_hosts or self.system_known_hosts or default_known_hosts()

    def connect(self):
        """Open the one connection (idempotent). Returns the paramiko Transport."""
        with self._lock:
            if self._client is not None:
                t = self._client.get_transport()
                if t is not None and t.is_active():
                    return t
                raise self._lost_error("")
            self._client = self._open()
            return self._client.get_transport()

    def _open(self):
        import paramiko

        sock = self._socket()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_strict_policy(self))
        if self.system_known_hosts and self.system_known_hosts.is_file():
            client.load_system_host_keys(str(self.system_known_hosts))
        if self.known_hosts and self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        try:
            client.connect(self.address, port=self.port, username=self.user, password=self._password,
                           key_filename=self.identity, look_for_keys=self.look_for_keys,
                           allow_agent=self.allow_agent, sock=sock, timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout)
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise self._changed_key_error(e.key, e.expected_key) from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise TransportError(f"{self.name}: SSH login as {self.target} was refused ({e})",
                                 "check the user, --identity KEYFILE or --ask-pass, and that the key is in "
                                 f"~{self.user}/.ssh/authorized_keys on the node") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            why = str(e) or ("the server closed the connection" if isinstance(e, EOFError) else type(e).__name__)
            raise TransportError(f"{self.name}: SSH handshake with {self.target} failed: {why}",
                                 "check that sshd runs on the node and the port is right") from None
        transport = client.get_transport()
        # a keepalive every few seconds gives TCP unacknowledged data to time out even while a command is silent
        transport.set_keepalive(max(1, round(self.dead_link_timeout / 5)))
        self.stats.connections += 1
        return client

    def _socket(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.address, self.port), timeout=self.connect_timeout)
        except OSError as e:
            raise TransportError(f"{self.name}: cannot reach {self.target}: {e.strerror or e}",
                                 "check the address and port, that the node is up and sshd listens, "
                                 "and that no firewall blocks it") from None
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # unacknowledged data for this long = link is dead
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.dead_link_timeout * 1000))
        return sock

    def _changed_key_error(self, got, expected) -> HostKeyError:
        host = known_hosts_name(self.address, self.port)
        files = [str(p) for p in (self.system_known_hosts, self.known_hosts) if p and p.is_file()]
        removes = " or ".join(f"ssh-keygen -R {shlex.quote(host)} -f {shlex.quote(f)}" for f in files)
        return HostKeyError(
            f"{self.name}: the SSH host key of {host} has CHANGED: known_hosts has {expected.get_name()} "
            f"{fingerprint(expected)}, the server now offers {got.get_name()} {fingerprint(got)}. "
            "Someone may be intercepting the connection (man-in-the-middle), or the node was reinstalled",
            f"refusing to connect. If you know the node was reinstalled, remove the old entry ({removes}), "
            "then re-run and verify the new fingerprint on the node's console "
            "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)")

    def _accept_key(self, client, hostname: str, key) -> None:
        """Called by the policy for a key no known_hosts file has: accept it or raise HostKeyError."""
        fp = fingerprint(key)
        known_other = bool(client.get_host_keys().lookup(hostname)
                           or client._system_host_keys.lookup(hostname))
        if fp not in self.accept_host_keys and not (self.accept_new_host_keys and not known_other):
            extra = " (known_hosts has a different key type for it)" if known_other else ""
            raise HostKeyError(
                f"{self.name}: unknown SSH host key for {hostname}{extra}: {key.get_name()} {fp}",
                f"verify it on the node (ssh-keygen -lf /etc/ssh/ssh_host_{_short_type(key)}_key.pub), then "
                f"re-run with `--accept-host-key {fp}`"
                + ("" if known_other else " (or `--accept-new-host-keys` to trust new nodes on first use)"))
        self._append_known_host(hostname, key)

    def _append_known_host(self, hostname: str, key) -> None:
        path = self.known_hosts_in_use
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            if f.tell() > 0 and not path.read_bytes().endswith(b"\n"):
                f.write("\n")
            f.write(line)

    # -- commands --------------------------------------------------------------------------------
    def _lost_error(self, display: str, cause: BaseException | None = None) -> TransportError:
        """The link is gone: say where, and what the transport saw (EOF from the node, a reset, a timeout)."""
        what = f" while running `{display}`" if display else ""
        if cause is None and self._client is not None and self._client.get_transport() is not None:
            cause = self._client.get_transport().get_exception()
        why = f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else (
            f" ({type(cause).__name__})" if cause is not None else "")
        return TransportError(f"lost connection to {self.name} ({self.target}){what}{why}; re-run to continue",
                              "check the node and the network link; every stage is safe to re-run")

    def _exec(self, argv: list[str], stdin: bytes | None, timeout: float | None,
              display: str) -> tuple[int, bytes, bytes]:
        import paramiko

        transport = self.connect()
        with self._tracked(argv) as running:
            try:
                # a dead link shows here as no answer to the channel open: wait no longer than the command may run
                chan = transport.open_session(timeout=min(self.connect_timeout, timeout or self.connect_timeout))
                running.cancel = chan.close
                chan.exec_command(shlex.join([*SESSION_WRAP, *argv]))
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise self._lost_error(display, e) from None
            try:
                return self._collect(chan, transport, stdin, timeout, display, running)
            finally:
                chan.close()

    def _collect(self, chan, transport, stdin: bytes | None, timeout: float | None,
                 display: str, running: Running) -> tuple[int, bytes, bytes]:
        feeder = None
        if isinstance(stdin, FileSource):
            feeder = threading.Thread(target=_feed_chunks, args=(chan, stdin.chunks()), daemon=True)
            feeder.start()
        elif stdin:
            if len(stdin) <= 1 << 16:
                chan.sendall(stdin)
                chan.shutdown_write()
            else:  # large input: feed from a thread so a full output window cannot deadlock us
                feeder = threading.Thread(target=_feed, args=(chan, stdin), daemon=True)
                feeder.start()
        else:
            chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while chan.recv_ready():
                out += chan.recv(CHUNK)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(CHUNK)
            if not running.sid:
                err = _take_sid(err, running)
            if chan.exit_status_ready():
                _drain_to_eof(chan, out, err)
                if not running.sid:
                    err = _take_sid(err, running, final=True)
                status = chan.recv_exit_status()
                if status == -1 and not transport.is_active():
                    raise self._lost_error(display)
                return status, bytes(out), bytes(err)
            if not transport.is_active():
                raise self._lost_error(display)
            if chan.closed:
                # sshd sends exit-status, EOF and CLOSE together: paramiko's thread may handle all three between
                # the exit-status check above and here. Closing sets the status event, so the next pass returns
                # the status (-1 when none came, e.g. a command killed by a signal): a finished command is never
                # a lost connection.
                continue
            if deadline is not None and time.monotonic() > deadline:
                self._end_sessions([running])  # nothing keeps running on the node after we gave up on it
                raise CommandTimeout(f"{self.name}: `{display}` did not finish within {timeout:g} s",
                                     "re-run to continue; raise the timeout if the step is legitimately slow",
                                     self.mask(_text(out)), self.mask(_text(err)))
            select.select([chan], [], [], 0.2)

    def _start(self, argv: list[str], stdin: bytes, display: str) -> SSHBackground:
        """A channel on the one connection, left open: when this process exits or dies the connection
        closes, sshd closes the command's stdin, and the command sees EOF."""
        import paramiko

        transport = self.connect()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(shlex.join(argv))
            if stdin:
                chan.sendall(stdin)
        except (paramiko.SSHException, OSError, EOFError):
            raise self._lost_error(display) from None
        return SSHBackground(self, chan, display)

    # -- files -----------------------------------------------------------------------------------
    def _sftp_client(self):
        import paramiko

        if self._sftp is None:
            self.connect()
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError):
                raise self._lost_error("sftp") from None
            self.stats.round_trips += 1
        return self._sftp

    def put(self, local: Path, remote: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        """Stream a file through one command's stdin into a temp name; the node verifies sha256 and
        renames. Skips when the remote file already matches; resumes an interrupted transfer.

        Two round trips per file (probe, transfer); with sudo the same command runs under sudo, so no
        staging copy is needed. Measured faster than SFTP and than the scp CLI (see scripts/bench_ssh.py).
        """
        local = Path(local)
        sha = sha256_file(local)
        found = self._skip_if_same(remote, sha, mode, sudo=sudo)
        if found is None:
            return False
        size = local.stat().st_size
        partial = int(found.get("partial", "0"))
        offset = partial if 0 < partial <= size else 0
        argv = ["sh", "-c", RECEIVE_SCRIPT, "sh", f"{mode:o}", remote, sha, str(offset)]
        try:
            self.run(argv, sudo=sudo, stdin=FileSource(local, offset))  # type: ignore[arg-type]
        except CommandFailed as e:
            if not (offset and e.exit_status == 3):
                raise
            offset = 0  # the partial file was bad: start over once
            self.run(argv[:-1] + ["0"], sudo=sudo, stdin=FileSource(local, 0))  # type: ignore[arg-type]
        self.stats.bytes_sent += size - offset
        self.stats.files_sent += 1
        return True

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = local.with_name(local.name + TMP_SUFFIX)
        try:
            self._sftp_client().get(remote, str(tmp))
        except FileNotFoundError:
            raise ProvisionError(f"{self.name}: {remote} does not exist", "check the path on the node") from None
        self.stats.round_trips += 1
        os.replace(tmp, local)

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(OSError, EOFError):
                self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()


class SSHBackground(Background):
    """Host.start over SSH: one open channel."""

    def __init__(self, host: SSHHost, chan, display: str):
        super().__init__(host.name, display)
        self._host = host
        self.chan = chan

    def send(self, data: bytes) -> None:
        self.chan.sendall(data)

    def _read(self, timeout: float) -> bytes | None:
        if self.chan.recv_ready():
            return self.chan.recv(CHUNK)
        if self.chan.eof_received or self.chan.closed:
            return b""
        transport = self.chan.get_transport()
        if transport is None or not transport.is_active():
            raise self._host._lost_error(self.display)
        select.select([self.chan], [], [], timeout)
        return None

    def _close_stdin(self) -> None:
        self.chan.shutdown_write()

    def _wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        try:
            while not self.chan.exit_status_ready() and not self.chan.closed and time.monotonic() < deadline:
                select.select([self.chan], [], [], 0.1)
                while self.chan.recv_ready():
                    self.chan.recv(CHUNK)
            return self.chan.recv_exit_status() if self.chan.exit_status_ready() else None
        finally:
            self.chan.close()


def _take_sid(err: bytearray, running: Running, final: bool = False) -> bytearray:
    """Take the wrapper's `provision-sid:N` line out of stderr (a login script may print before it)."""
    at = err.find(SID_MARK)
    end = err.find(b"\n", at)
    if at < 0 or end < 0:
        if final:
            running.sid = -1  # the command ended without saying it: nothing to wait for
        return err
    value = bytes(err[at + len(SID_MARK):end])
    running.sid = int(value) if value.isdigit() else -1
    return err[:at] + err[end + 1:]


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _feed_chunks(chan, chunks) -> None:
    with contextlib.suppress(OSError, EOFError):  # the main loop reports the lost link
        for chunk in chunks:
            chan.sendall(chunk)
        chan.shutdown_write()


EOF_GRACE = 10.0   # seconds the rest of a finished command's output may take to arrive


def _drain_to_eof(chan, out: bytearray, err: bytearray) -> None:
    """Read what is left after the exit status: sshd sends exit-status when it reaps the command, which can
    be before the last of its output has crossed the channel window (seen with 8 parallel commands on one
    connection: stderr cut at 7 x 32 KiB). EOF, not the exit status, ends the output."""
    deadline = time.monotonic() + EOF_GRACE
    while True:
        while chan.recv_ready():
            out += chan.recv(CHUNK)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(CHUNK)
        if (chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready()) or chan.closed \
                or time.monotonic() > deadline:
            return
        select.select([chan], [], [], 0.05)


def _feed(chan, data: bytes) -> None:
    with contextlib.suppress(OSError, EOFError):  # the main loop reports the lost link
        chan.sendall(data)
        chan.shutdown_write()


def _norm_fp(fp: str) -> str:
    fp = fp.strip()
    if not fp.startswith("SHA256:"):
        fp = "SHA256:" + fp
    return fp.rstrip("=")


def _short_type(key) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(name, "ecdsa" if "ecdsa" in name else name)


def _strict_policy(host: SSHHost):
    """A paramiko policy that never auto-adds: an unknown key passes only by fingerprint or accept-new."""
    import paramiko

    class StrictPolicy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            host._accept_key(client, hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return StrictPolicy()
