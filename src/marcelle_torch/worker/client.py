"""A Feathers client over Socket.IO, as Marcelle's own web client talks to the backend.

@marcellejs/backend 0.6.5 is a Feathers 4 app on Socket.IO 2 (Engine.IO protocol 3), which
python-socketio 4.x speaks (5.x speaks only Socket.IO 3+: its connections drop within a
minute and every event arrives twice). Feathers' socket protocol
(@feathersjs/transport-commons): the client emits ``find|get|create|update|patch|remove``
with ``(service, [id], [data], query)`` and an acknowledgement that Feathers calls with
``(error)`` or ``(null, result)``; the service events arrive as ``"<service> <event>"``,
e.g. ``"runs created"``, ``"runs patched"``. The last argument is the *query* (Feathers
puts it into ``params.query``), not a params object.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import socketio

from ..errors import MarcelleTorchError

log = logging.getLogger(__name__)

if not socketio.__version__.startswith("4."):
    raise ImportError(
        f"python-socketio {socketio.__version__} is installed; the Marcelle backend (Socket.IO 2) needs "
        "python-socketio 4.x: pip install 'python-socketio[client]>=4.6,<5' 'python-engineio>=3.14,<4'"
    )


class BackendError(MarcelleTorchError):
    """The backend answered a call with a Feathers error (``name``, e.g. NotFound, and ``code``)."""

    status = 502
    code = "backend_error"

    def __init__(self, name: str, message: str, code: int | None = None):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.http_code = code


class BackendUnavailable(MarcelleTorchError):
    """Not connected, or no answer in time."""

    status = 503
    code = "backend_unavailable"


class FeathersClient:
    """Calls Feathers service methods over one Socket.IO connection, which reconnects by
    itself. Event handlers run on the connection's reader thread: they must not block (or
    call the backend); hand work to another thread."""

    def __init__(self, url: str, timeout: float = 30.0, reconnection_delay_max: float = 5.0):
        self.url = url
        self.timeout = timeout
        self.sio = socketio.Client(
            reconnection=True,
            reconnection_attempts=0,
            reconnection_delay=0.5,
            reconnection_delay_max=reconnection_delay_max,
            logger=False,
            engineio_logger=False,
        )
        # Packets go out one at a time (the client's ack ids are not locked); the answers are
        # awaited outside the lock, so a slow call does not hold up the others.
        self._lock = threading.Lock()
        # Calls waiting for their answer: a dropped connection answers them at once
        # (python-socketio 4.6 forgets their callbacks and would let each wait its whole timeout).
        self._waiting: dict[int, tuple[threading.Event, dict]] = {}
        self._on_disconnect: Callable[[], None] | None = None
        self.sio.on("disconnect", self._dropped)

    # -- connection

    def connect(self, query: dict[str, str] | None = None) -> None:
        """Connect once; raises BackendUnavailable if the backend does not answer. ``query``
        goes into the handshake URL (the server reads it as ``socket.handshake.query``; the
        client's reconnections keep it)."""
        url = f"{self.url}?{urllib.parse.urlencode(query)}" if query else self.url
        try:
            self.sio.connect(url, transports=["websocket"])
        except (socketio.exceptions.ConnectionError, ValueError) as exc:
            raise BackendUnavailable(f"cannot connect to the Marcelle backend at {self.url}: {exc}") from None

    @property
    def connected(self) -> bool:
        return self.sio.connected

    def disconnect(self) -> None:
        # The reader thread warns that the socket closed once we close it ourselves; that is
        # no news, and would land after the worker's last line (e.g. its one-line error).
        logging.getLogger("engineio.client").setLevel(logging.ERROR)
        # python-socketio 4.6 (client.py): disconnect() does not end a reconnection loop that
        # is under way (only the library's own SIGINT handler does, by setting this event), and
        # that loop's thread is not a daemon: with the backend down, the process could not exit.
        self.sio._reconnect_abort.set()
        try:
            self.sio.disconnect()
        except Exception:  # already gone
            pass

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        if event == "disconnect":
            self._on_disconnect = handler
        else:
            self.sio.on(event, handler)

    def _dropped(self) -> None:
        for done, box in list(self._waiting.values()):
            box["dropped"] = True
            done.set()
        if self._on_disconnect is not None:
            self._on_disconnect()

    # -- service methods

    def call(self, method: str, service: str, *args: Any, timeout: float | None = None) -> Any:
        if not self.sio.connected:
            raise BackendUnavailable("not connected to the Marcelle backend")
        done = threading.Event()
        box: dict[str, Any] = {"answer": None, "dropped": False}

        def acknowledged(*answer: Any) -> None:
            box["answer"] = answer
            done.set()

        key = id(box)
        self._waiting[key] = (done, box)
        try:
            with self._lock:
                if not self.sio.connected:  # dropped before this call was registered
                    raise BackendUnavailable("not connected to the Marcelle backend")
                try:
                    self.sio.emit(method, (service, *args), callback=acknowledged)
                except (socketio.exceptions.SocketIOError, OSError) as exc:
                    raise BackendUnavailable(f"{method} {service}: {exc}") from None
            if not done.wait(timeout or self.timeout):
                raise BackendUnavailable(f"no answer to {method} {service} within {timeout or self.timeout:.0f}s")
        finally:
            self._waiting.pop(key, None)
        answer = box["answer"]
        if answer is None:  # the connection dropped first: the call may or may not have applied
            raise BackendUnavailable(f"connection to the Marcelle backend lost during {method} {service}")
        # Feathers acknowledges with (error) or (null, result).
        error, result = (answer[0] if answer else None), (answer[1] if len(answer) > 1 else None)
        if error:
            if isinstance(error, dict):
                raise BackendError(error.get("name", "Error"), error.get("message", str(error)), error.get("code"))
            raise BackendError("Error", str(error))
        return result

    def find(self, service: str, query: dict | None = None) -> Any:
        return self.call("find", service, query or {})

    def get(self, service: str, id_: str, query: dict | None = None) -> Any:
        return self.call("get", service, id_, query or {})

    def create(self, service: str, data: Any, query: dict | None = None) -> Any:
        return self.call("create", service, data, query or {})

    def patch(self, service: str, id_: str | None, data: dict, query: dict | None = None) -> Any:
        return self.call("patch", service, id_, data, query or {})

    def remove(self, service: str, id_: str | None, query: dict | None = None) -> Any:
        return self.call("remove", service, id_, query or {})

    def authenticate(self, email: str, password: str) -> dict:
        """Log this connection in (strategy local); later calls act as that user."""
        return self.create("authentication", {"strategy": "local", "email": email, "password": password})


def is_not_found(exc: Exception) -> bool:
    return isinstance(exc, BackendError) and (exc.name == "NotFound" or exc.http_code == 404)
