"""A scripted model behind an OpenAI-compatible Chat Completions endpoint on 127.0.0.1.

For drafts made in another process (a served or deployed flow run), where an in-process
`FunctionModel` cannot reach: the test names the model `openai-chat:scripted`, points
OPENAI_BASE_URL here (the `openai` SDK reads it, in that process too) and counts what arrived.
Only the part of the API a draft uses: one non-streamed completion answering with the output
tool pydantic-ai offers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

#: The model's name in settings: pydantic-ai's Chat Completions model, served here.
SCRIPTED_MODEL = "openai-chat:scripted"

Answer = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class ScriptedServer:
    """Answers each completion with `answer(<the conversation the draft sent>)`."""

    answer: Answer
    #: The conversation each request carried (drafting/agent.py's `conversation`, parsed).
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: The names of the tools each request offered the model.
    offered_tools: list[list[str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        def complete(body: dict[str, Any]) -> dict[str, Any]:
            tools = [tool["function"]["name"] for tool in body.get("tools", [])]
            (user,) = [m["content"] for m in body["messages"] if m["role"] == "user"]
            sent: dict[str, Any] = json.loads(str(user).split("\n", 1)[1])
            self.requests.append(sent)
            self.offered_tools.append(tools)
            call = {
                "id": f"call_{len(self.requests)}",
                "type": "function",
                "function": {"name": tools[-1], "arguments": json.dumps(self.answer(sent))},
            }
            return {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
            }

        return app
