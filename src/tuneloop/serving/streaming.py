"""Streamed answers: `stream=true` in OpenAI's server-sent events, chunk by chunk as the decode loop makes them.

A chat stream is `chat.completion.chunk` objects: the first carries the
assistant's role, then one per piece of text (`delta.content`), then one with
the `finish_reason`; with `stream_options.include_usage` every chunk has
`usage: null` and one more chunk (no choices) carries the usage. A completion
stream is `text_completion` objects with `choices[0].text`. The stream ends
with `data: [DONE]`. An error after the stream has begun is sent as one
`data: {"error": {...}}` event (the `openai` SDK raises it), then the stream
ends.

When the client goes away the response stops and the generation is
cancelled: the decode loop drops the sequence before its next step and its
place in the batch (and in admission) is free again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse

from tuneloop.serving.decode import Cancelled, Generation


class Stream:
    """A running generation whose pieces of text arrive on the event loop."""

    def __init__(self, generation: Generation, queue: asyncio.Queue):
        self.generation, self._queue = generation, queue

    async def deltas(self) -> AsyncIterator[str]:
        while True:
            piece = await self._queue.get()
            if piece is None:
                return
            yield piece

    def cancel(self) -> None:
        self.generation.cancel()


async def begin(engine, kind: str, payload, args: dict) -> Stream:
    """Start `engine`'s answer with its pieces queued for this event loop (tokenizing off the loop)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    g = await anyio.to_thread.run_sync(lambda: engine.start(kind, payload, **args, on_delta=put,
                                                            on_done=lambda: put(None)))
    return Stream(g, queue)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def events(kind: str, model: str, stream: Stream, include_usage: bool, fingerprint: str | None = None,
           edit: Callable[[str], str] | None = None, rid: str | None = None,
           finished: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
    """The SSE body of `stream`: chunks, the finish, usage if asked, `[DONE]`. `edit` may rewrite each piece
    (fault injection); `finished()` is awaited once the answer is complete, before its last chunks go out (so
    a client that sees the end can already refer to the answer)."""
    rid = rid or uuid.uuid4().hex[:24]
    created = int(time.time())
    head = {"id": f"chatcmpl-{rid}" if kind == "chat" else f"cmpl-{rid}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created, "model": model, "system_fingerprint": fingerprint}

    def chunk(text: str | None = None, finish: str | None = None, role: bool = False) -> dict:
        if kind == "chat":
            delta: dict = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice], **({"usage": None} if include_usage else {})}

    async def body() -> AsyncIterator[bytes]:
        if kind == "chat":
            yield _sse(chunk(role=True))
        async for piece in stream.deltas():
            yield _sse(chunk(edit(piece) if edit else piece))
        try:
            out = stream.generation.result(0)
        except Cancelled:
            return
        except Exception as e:  # the status line is sent: the error goes in the stream
            from tuneloop.errors import UserError

            etype = "invalid_request_error" if isinstance(e, UserError) else "server_error"
            msg = str(e) if isinstance(e, UserError) else f"internal error ({type(e).__name__}); the server log " \
                                                          "has the details"
            yield _sse({"error": {"message": msg, "type": etype, "param": None, "code": None}})
            return
        if finished is not None:
            await finished()
        yield _sse(chunk(finish=out.finish_reason))
        if include_usage:
            yield _sse({**head, "choices": [], "usage": {
                "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                "total_tokens": out.prompt_tokens + out.completion_tokens}})
        yield b"data: [DONE]\n\n"

    return body()


class StreamedResponse(StreamingResponse):
    """An SSE response that runs `cleanup()` when it is over, however it ended: finished, failed, or a client
    that went away (before the first byte included, when the body never starts)."""

    def __init__(self, content, cleanup: Callable[[], Awaitable[None]], headers: dict | None = None):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


async def respond(stack, engine, kind: str, payload, args: dict, *, model: str, include_usage: bool,
                  headers: dict | None = None, fingerprint: str | None = None,
                  edit: Callable[[str], str] | None = None,
                  on_end: Callable[[Generation], Any] | None = None, rid: str | None = None) -> StreamedResponse:
    """Start `engine`'s answer and return its SSE response. `stack` (an entered AsyncExitStack) holds what the
    request keeps until its answer ends (its admission, its slot); the response closes it then, with the
    generation's error if it failed (a client that went away is not a failure). `on_end(generation)` runs
    first (metrics, keeping the answer; it may be a coroutine function). `rid`: the id's hex part. A start that fails (a prompt too long for the context) raises here,
    before any byte is sent, and leaves `stack` to the caller."""
    st = await begin(engine, kind, payload, args)
    ran = []

    async def end() -> None:  # once: when the answer is complete, else when the response is over
        if on_end is not None and not ran:
            ran.append(True)
            done = on_end(st.generation)
            if inspect.isawaitable(done):
                await done

    async def cleanup() -> None:
        st.cancel()  # nothing if it has ended; else the loop drops it before its next step
        g = st.generation
        failed = g.done and g.error is not None and not isinstance(g.error, Cancelled)
        try:
            await end()
        finally:
            exc = g.error if failed else None
            await stack.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    return StreamedResponse(events(kind, model, st, include_usage, fingerprint, edit, rid, end), cleanup, headers)
