"""The protocol-neutral request and reply model every stage reads.

Each door (Chat Completions, Responses, Anthropic Messages) has an adapter in
(its body -> ``Request``) and out (``Reply`` / ``Chunk`` -> its JSON or SSE); each
provider serialises ``Request`` for its upstream and parses the answer back. Stages
(prompts, grounding, cache, guardrails, limits, cost, the traffic record) read and
write only these types.

Plain slots dataclasses, not pydantic: one request builds a handful of them on the hot
path. A message the chat adapter parsed keeps its source dict (``Message.raw``) and is
sent on as it came until a stage changes it through the model's API.
"""

from gateway.model.reply import END, Choice, ChoiceDelta, Chunk, Reply, ToolCallDelta, Usage
from gateway.model.request import (
    Image,
    Message,
    Opaque,
    Part,
    Request,
    ResponseFormat,
    Text,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)

__all__ = [
    "END", "Choice", "ChoiceDelta", "Chunk", "Image", "Message", "Opaque", "Part", "Reply", "Request", "ResponseFormat",
    "Text", "Tool", "ToolCall", "ToolCallDelta", "ToolChoice", "ToolResult", "Usage",
]
