"""What the user sees (stderr) and what the log file keeps, with secrets masked in both.

Screen: `==> [20] Import offline images` headers and `node: message` lines; a spinner on a terminal,
plain lines otherwise (CI logs, pipes). Log file: every screen line plus every command a host ran
(masked argv, exit status, duration, output), so a failure can be explained after the fact.
Successful command output goes to the log only; a failed command's tail reaches the screen through
the error the runner reports.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from provision.config import Secret


def default_log_path(now: _dt.datetime | None = None) -> Path:
    """$PROVISION_LOG_DIR, else /var/log/provision as root, else ~/.local/state/provision (XDG);
    the file is provision-<timestamp>.log."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = f"provision-{stamp}.log"
    if os.environ.get("PROVISION_LOG_DIR"):
        return Path(os.environ["PROVISION_LOG_DIR"]) / name
    if os.geteuid() == 0:
        return Path("/var/log/provision") / name
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "provision" / name


class Masker:
    """Replaces every secret value in a text with the mask. Longest first, so overlapping secrets stay hidden."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Any, extra: Iterable[str] = ()) -> Masker:
        import dataclasses

        values = list(extra)
        if dataclasses.is_dataclass(settings):
            for f in dataclasses.fields(settings):
                v = getattr(settings, f.name)
                if isinstance(v, Secret) and v:
                    values.append(v.reveal())
        return cls(values)

    @property
    def secrets(self) -> list[str]:
        return list(self._secrets)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, Secret.MASK)
        return text


class LogFile:
    """An append-only log, mode 0600 (it names hosts and users even with secrets masked). Thread-safe."""

    def __init__(self, path: Path, masker: Masker):
        self.path = Path(path)
        self._mask = masker
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8", errors="replace")

    def write(self, text: str) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        body = self._mask(text)
        with self._lock:
            if self._file.closed:
                return
            for ln in body.splitlines() or [""]:
                self._file.write(f"{stamp} {ln}\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def open_log(path: str | Path | None, masker: Masker) -> tuple[LogFile | None, str]:
    """The log file, or None and a warning when it cannot be created (the run goes on without one)."""
    target = Path(path) if path else default_log_path()
    try:
        return LogFile(target, masker), ""
    except OSError as e:
        return None, f"cannot write the log file {target}: {e.strerror}; continuing without a log"


class Console:
    """Screen output on stderr (rich on a terminal, plain otherwise), mirrored to the log file."""

    STYLES: ClassVar[dict[str, str]] = {"ok": "green", "warn": "yellow", "error": "bold red", "header": "bold cyan", "dim": "dim"}

    def __init__(self, *, log: LogFile | None = None, masker: Masker | None = None, verbose: bool = False,
                 stream: IO[str] | None = None, tty: bool | None = None):
        self.log = log
        self.mask = masker or Masker()
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._lock = threading.RLock()
        self._rich: Any = None
        if self.tty:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, highlight=False, soft_wrap=True)

    @property
    def log_path(self) -> str:
        return str(self.log.path) if self.log else ""

    # --- screen lines -----------------------------------------------------------------------

    def line(self, text: str, style: str = "") -> None:
        text = self.mask(text)
        with self._lock:
            if self._rich is not None:
                from rich.text import Text

                self._rich.print(Text(text, style=self.STYLES.get(style, "")))
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
        if self.log:
            self.log.write(text)

    def header(self, number: int, title: str, note: str = "") -> None:
        self.line(f"==> [{number:02d}] {title}{f'  ({note})' if note else ''}", "header")

    def node(self, node: str, text: str, style: str = "") -> None:
        for i, ln in enumerate(text.splitlines() or [""]):
            self.line(f"{node}: {ln}" if i == 0 else f"{' ' * len(node)}  {ln}", style)

    def warn(self, text: str) -> None:
        self.line(f"warning: {text}", "warn")

    def error(self, text: str) -> None:
        self.line(f"error: {text}", "error")

    def debug(self, text: str) -> None:
        """Log only; on screen with -v."""
        if self.verbose:
            self.line(text, "dim")
        elif self.log:
            self.log.write(self.mask(text))

    def command(self, node: str, display: str, exit_status: int | str, seconds: float, stdout: str = "",
                stderr: str = "") -> None:
        """One command a host ran: a line on screen with -v, everything in the log."""
        from provision import facts
        from provision.hosts.common import brief_display

        display = brief_display(display)  # a script by its first line only, never its text
        if facts.is_probe_script(display):  # the batched fact script: its output decoded
            stdout = facts.readable_output(stdout)
        head = f"{node}: $ {display}  -> exit {exit_status} in {seconds:.2f}s"
        if self.verbose:
            self.line(head, "dim")  # mirrored to the log too
        if self.log:
            parts = [] if self.verbose else [head]
            for label, text in (("stdout", stdout), ("stderr", stderr)):
                if text and text.strip():
                    parts.append(f"  [{label}]")
                    parts.extend("    " + ln for ln in text.rstrip().splitlines())
            if parts:
                self.log.write(self.mask("\n".join(parts)))

    def on_command(self, node: str, display: str, result: Any, seconds: float) -> None:
        """A host's `on_command` callback: every command it runs, in the log (on screen with -v)."""
        self.command(node, display, result.exit_status, seconds, result.stdout, result.stderr)

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner while nodes work (terminal only); plain output shows nothing extra."""
        if self._rich is None:
            yield
            return
        with self._rich.status(self.mask(text)):
            yield

    def confirm(self, question: str) -> bool:
        """Ask on the terminal; anything but y/yes is no."""
        with self._lock:
            self.stream.write(self.mask(question) + " ")
            self.stream.flush()
            answer = sys.stdin.readline()
        if self.log:
            self.log.write(f"{question} {answer.strip()!r}")
        return answer.strip().lower() in ("y", "yes")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A plain aligned table (also what the log gets); rich draws it on a terminal."""
        if self._rich is not None:
            from rich.table import Table

            t = Table(*headers, show_edge=False, pad_edge=False)
            for r in rows:
                t.add_row(*(self.mask(c) for c in r))
            with self._lock:
                self._rich.print(t)
            if self.log:
                self.log.write(format_table(headers, rows))
            return
        for ln in format_table(headers, rows).splitlines():
            self.line(ln)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(ln.rstrip() for ln in out)


def duration(seconds: float) -> str:
    """3m12s, 45s, 1h02m: how the summary says how long things took."""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class LoggedHost:
    """Wraps a Host so every command is logged (masked) with exit status, duration and output, and so
    errors leaving it carry masked text only. Everything else passes through."""

    def __init__(self, host: Any, console: Console):
        self._host = host
        self._console = console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def _display(self, argv: Sequence[Any]) -> str:
        from provision.hosts.base import masked_argv

        return masked_argv(list(argv), self._console.mask.secrets)

    def run(self, argv: Sequence[Any], **kw: Any) -> Any:
        from provision.errors import CommandFailed

        display = self._display(argv) + ("  (sudo)" if kw.get("sudo") else "")
        t = time.monotonic()
        try:
            result = self._host.run(argv, **kw)
        except CommandFailed as e:
            self._console.command(self.name, display, e.exit_status, time.monotonic() - t, e.stdout, e.stderr)
            m = self._console.mask
            raise CommandFailed(e.node, m(e.argv_display), e.exit_status, m(e.stdout), m(e.stderr),
                                m(e.hint)) from None
        except Exception as e:
            self._console.command(self.name, display, f"error ({type(e).__name__}: {self._console.mask(str(e))})",
                                  time.monotonic() - t)
            raise
        self._console.command(self.name, display, result.exit_status, time.monotonic() - t,
                              result.stdout, result.stderr)
        return result

    def _transfer(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        t = time.monotonic()
        try:
            result = fn(*args, **kw)
        except Exception as e:
            self._console.command(self.name, what, f"error ({type(e).__name__})", time.monotonic() - t)
            raise
        self._console.command(self.name, what, 0, time.monotonic() - t)
        return result

    def put(self, local: Any, remote: str, **kw: Any) -> Any:
        return self._transfer(f"put {local} -> {remote}", self._host.put, local, remote, **kw)

    def put_bytes(self, data: bytes, remote: str, **kw: Any) -> Any:
        return self._transfer(f"put {len(data)} bytes -> {remote}", self._host.put_bytes, data, remote, **kw)

    def get(self, remote: str, local: Any) -> Any:
        return self._transfer(f"get {remote} -> {local}", self._host.get, remote, local)
