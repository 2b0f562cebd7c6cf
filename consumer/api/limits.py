"""Request body size limit, answered in the API's JSON error format (413).

A declared Content-Length over the limit is refused before anything is read; a body without one
(chunked) is counted while FastAPI reads it, and refused once it passes the limit. (FastAPI's own
``max_body_size`` answers in plain text, outside the app's exception handlers.)
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body = json.dumps(
            {"error": "body_too_large", "message": f"the body exceeds {max_bytes} bytes"},
            separators=(",", ":"),
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and (
                    not value.isdigit() or int(value) > self.max_bytes
                ):
                    await self._refuse(send, 413 if value.isdigit() else 400)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body, so the
                    # app's handler answers it as JSON.
                    raise HTTPException(413, f"the body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send, status: int) -> None:
        body = (
            self.body
            if status == 413
            else b'{"error":"bad_request","message":"bad Content-Length"}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
