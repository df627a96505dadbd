"""Two services that log from their handlers, for the log tests: run one with
`microweave run tests/integration/services/logged.py:front` (or `:back`).

`front`'s `Front.Relay` calls `back`'s `Back.Note` (another process, found through the registry),
so a test sees the trace id it sent in both processes' logs. `Back.Fail` raises an exception
nobody meant for the caller, with a message over several lines, to see its traceback logged in
one JSON line under the correlation id the caller is told. With LOGGED_OWN_LOGGING set, the
module sets up logging itself, as a user may (which `microweave run` and `Service.run` keep).
"""

from __future__ import annotations

import logging
import os

import msgspec

from microweave import Service


class Note(msgspec.Struct):
    text: str = ""


log = logging.getLogger("logged.handlers")
if os.environ.get("LOGGED_OWN_LOGGING"):
    logging.basicConfig(level=logging.INFO, format="OWN %(levelname)s %(message)s")

back = Service("logged-back")
front = Service("logged-front")


@back.handler
class Back:
    async def note(self, req: Note) -> Note:
        # a message with a newline, unicode and a non-str argument: still one JSON line
        log.info("noted %r\nsecond line é ✓ %s", req.text, {"n": 1}, extra={"note_length": len(req.text)})
        return Note(text=f"noted {req.text}")

    async def fail(self, req: Note) -> Note:
        raise RuntimeError(f"the handler broke on {req.text!r}\nwith a second line")


@front.handler
class Front:
    async def relay(self, req: Note) -> Note:
        log.info("relaying %s", req.text)
        return await front.client.call("logged-back", "Back.Note", req, response=Note)
