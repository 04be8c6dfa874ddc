"""The Responses API's requests (`POST /v1/responses`) validated and translated into chat requests.

See `gateway.inbound.responses` for what is translated, refused and dropped. Every refusal is an
`InvalidRequest` naming the offending field by its dotted path (`input.2.content.0.type`).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.inbound.responses_render import (
    CUSTOM_INPUT,
    CUSTOM_TOOL,
    FUNCTION_TOOL,
    TOOL_SEARCH,
    TOOL_SEARCH_NAME,
    ToolOrigin,
    chat_tool_call,
    chat_tool_name,
    custom_tool_call_item,
    function_call_item,
)

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_SUMMARIES = frozenset({"auto", "concise", "detailed"})
_VERBOSITIES = frozenset({"low", "medium", "high"})
_IMAGE_DETAILS = frozenset({"low", "high", "auto", "original"})
_SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority"})
_TRUNCATIONS = frozenset({"auto", "disabled"})
_ITEM_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "tool_search_call": "tsc",
    "tool_search_output": "tso",
    "reasoning": "rs",
}
_CHAT_ONLY = "this gateway's upstreams speak chat completions, which have no equivalent"
_UNSERVED_ITEMS = {
    "item_reference": "items are not looked up by id here; send the item itself, or continue the "
    "conversation with 'previous_response_id'",
}
# Said of a hosted tool that a client offers by default, with how to leave it out.
_HOSTED_HINTS = {
    "web_search": " Leave it out of 'tools' (the Codex CLI: set web_search = \"disabled\" in config.toml).",
}
_GRAMMAR_SYNTAXES = frozenset({"lark", "regex"})


# The request's fields other than its input.


def refuse_unsupported(body: dict[str, Any]) -> None:
    if optional_bool(body, "background"):
        if optional_bool(body, "stream"):
            raise InvalidRequest(
                "A background response is not streamed: leave out 'stream' and poll "
                "GET /v1/responses/{id} until its status is completed.",
                param="stream",
            )
        if optional_bool(body, "store") is False:
            raise InvalidRequest("A background response must be stored: leave out 'store'.", param="store")
    if body.get("conversation") is not None:
        raise InvalidRequest(
            "Conversations are not supported; continue a conversation with 'previous_response_id'.",
            param="conversation",
        )
    if body.get("prompt") is not None:
        raise InvalidRequest(
            "Prompt templates are not supported; send 'instructions' and 'input' instead.", param="prompt"
        )


def translate_fields(
    body: dict[str, Any], items: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, ToolOrigin]]:
    """The Response's echoed fields, the chat request's fields (all but its messages), and what each
    chat function stands for. `items`, the normalized input, may hold tools a tool search loaded."""
    offered = _offered_tools(body, items or [])
    tools, chat_tools = offered.echoed, offered.chat
    tool_choice, chat_tool_choice = _tool_choice(body)
    text, response_format, verbosity = _text(body)
    reasoning, effort = _reasoning(body)
    echo = _echoed(body, tools=tools, tool_choice=tool_choice, text=text, reasoning=reasoning)
    optional_bool(body, "store")
    optional_bool(body, "stream")
    _optional_list(body, "include")
    chat: dict[str, Any] = {"model": echo["model"]}
    if chat_tools:  # chat upstreams refuse tool_choice and parallel_tool_calls without tools
        chat["tools"] = chat_tools
        chat["tool_choice"] = chat_tool_choice
        chat["parallel_tool_calls"] = optional_bool(body, "parallel_tool_calls")
    chat["max_tokens"] = echo["max_output_tokens"]
    chat["response_format"] = response_format
    chat["reasoning_effort"] = effort
    chat["verbosity"] = verbosity
    for same in ("temperature", "top_p", "user", "service_tier", "prompt_cache_key", "safety_identifier"):
        chat[same] = echo[same]
    return echo, {key: value for key, value in chat.items() if value is not None}, offered.origins


def _echoed(
    body: dict[str, Any],
    *,
    tools: list[dict[str, Any]],
    tool_choice: str | dict[str, Any],
    text: dict[str, Any],
    reasoning: dict[str, Any],
) -> dict[str, Any]:
    """The request's fields as a Response repeats them, with the API's defaults."""
    return {
        "model": _required_str(body, "model"),
        "instructions": optional_str(body, "instructions") or None,
        "max_output_tokens": _optional_int(body, "max_output_tokens", minimum=1),
        "max_tool_calls": _optional_int(body, "max_tool_calls", minimum=1),
        "metadata": _metadata(body),
        "parallel_tool_calls": optional_bool(body, "parallel_tool_calls") is not False,
        "previous_response_id": optional_str(body, "previous_response_id"),
        "prompt_cache_key": optional_str(body, "prompt_cache_key"),
        "reasoning": reasoning,
        "safety_identifier": optional_str(body, "safety_identifier"),
        "service_tier": _optional_choice(body, "service_tier", _SERVICE_TIERS),
        "temperature": _optional_number(body, "temperature", 0, 2),
        "text": text,
        "tool_choice": tool_choice,
        "tools": tools,
        "top_logprobs": _optional_int(body, "top_logprobs", minimum=0),
        "top_p": _optional_number(body, "top_p", 0, 1),
        "truncation": _optional_choice(body, "truncation", _TRUNCATIONS) or "disabled",
        "user": optional_str(body, "user"),
    }


class _ToolSet:
    """The tools offered to the upstream: as the Response echoes them, as chat functions, and what
    each chat function stands for (by its chat name)."""

    def __init__(self) -> None:
        self.echoed: list[dict[str, Any]] = []
        self.chat: list[dict[str, Any]] = []
        self.origins: dict[str, ToolOrigin] = {}

    def add(self, tool: object, path: str, *, loaded: bool = False) -> None:
        """One tool of the request (`loaded`: of a tool search's output, not echoed, and skipped if
        a tool of the same chat name is already offered)."""
        if not isinstance(tool, dict):
            raise invalid(path, "expected an object")
        kind = _required_str(tool, "type", path)
        if kind == "namespace":
            self._add_namespace(tool, path, loaded=loaded)
            return
        if kind == "tool_search" and not loaded:
            self._add_tool_search(tool, path)
            return
        echoed, function, origin = _named_tool(tool, kind, path, namespace=None)
        self._offer(function, origin, f"{path}.name", loaded=loaded)
        if not loaded:
            self.echoed.append(echoed)

    def _add_namespace(self, tool: dict[str, Any], path: str, *, loaded: bool) -> None:
        namespace = _required_str(tool, "name", path)
        description = optional_str(tool, "description", path)
        inner = _optional_list(tool, "tools", path)
        if inner is None:
            raise _missing(f"{path}.tools")
        echoed_inner = []
        for n, member in enumerate(inner):
            member_path = f"{path}.tools.{n}"
            if not isinstance(member, dict):
                raise invalid(member_path, "expected an object")
            kind = _required_str(member, "type", member_path)
            if kind not in (FUNCTION_TOOL, CUSTOM_TOOL):
                raise InvalidRequest(
                    f"A namespace can only hold 'function' and 'custom' tools here, not '{kind}'.",
                    param=f"{member_path}.type",
                )
            echoed, function, origin = _named_tool(member, kind, member_path, namespace=namespace)
            self._offer(function, origin, f"{member_path}.name", loaded=loaded)
            echoed_inner.append(echoed)
        if not loaded:
            echoed_namespace = {"type": "namespace", "name": namespace, "description": description or ""}
            self.echoed.append({**echoed_namespace, "tools": echoed_inner})

    def _add_tool_search(self, tool: dict[str, Any], path: str) -> None:
        execution = optional_str(tool, "execution", path) or "server"
        if execution != "client":
            raise InvalidRequest(
                f"A tool search run by the server cannot be served here: {_CHAT_ONLY}; only one the "
                "client runs ('execution': 'client') can.",
                param=f"{path}.execution",
            )
        description = optional_str(tool, "description", path)
        parameters = _optional_dict(tool, "parameters", path) or {"type": "object", "properties": {}}
        function: dict[str, Any] = {"name": TOOL_SEARCH_NAME, "parameters": parameters}
        if description is not None:
            function["description"] = description
        self._offer(function, ToolOrigin(TOOL_SEARCH, TOOL_SEARCH_NAME), f"{path}.type", loaded=False)
        echoed = {"type": "tool_search", "execution": "client", "description": description}
        self.echoed.append({**echoed, "parameters": parameters})

    def _offer(self, function: dict[str, Any], origin: ToolOrigin, param: str, *, loaded: bool) -> None:
        name = function["name"]
        if name in self.origins:
            if loaded:
                return
            raise InvalidRequest(
                f"Two tools would both be offered to the upstream as the function '{name}'; rename one.",
                param=param,
            )
        self.origins[name] = origin
        self.chat.append({"type": "function", "function": function})


def _named_tool(
    tool: dict[str, Any], kind: str, path: str, *, namespace: str | None
) -> tuple[dict[str, Any], dict[str, Any], ToolOrigin]:
    """A function or custom tool: as echoed, as a chat function, and what that function stands for."""
    if kind == FUNCTION_TOOL:
        name = _required_str(tool, "name", path)
        function = {
            "name": name,
            "description": optional_str(tool, "description", path),
            "parameters": _optional_dict(tool, "parameters", path),
            "strict": optional_bool(tool, "strict", path),
        }
        chat = {k: v for k, v in function.items() if v is not None}
        chat["name"] = chat_tool_name(name, namespace)
        return {"type": "function", **function}, chat, ToolOrigin(FUNCTION_TOOL, name, namespace)
    if kind == CUSTOM_TOOL:
        return _custom_tool(tool, path, namespace)
    why = _CHAT_ONLY + "; only 'function', 'custom', 'namespace' and client 'tool_search' tools are"
    raise InvalidRequest(
        f"Tools of type '{kind}' cannot be served here: {why}.{_HOSTED_HINTS.get(kind, '')}",
        param=f"{path}.type",
    )


def _custom_tool(
    tool: dict[str, Any], path: str, namespace: str | None
) -> tuple[dict[str, Any], dict[str, Any], ToolOrigin]:
    """A custom (freeform) tool, offered as a function of one string parameter; a grammar its input
    must follow is spelled out in the function's description."""
    name = _required_str(tool, "name", path)
    description = optional_str(tool, "description", path)
    text_format = _optional_dict(tool, "format", path) or {"type": "text"}
    kind = _required_str(text_format, "type", f"{path}.format")
    echoed: dict[str, Any] = {"type": "custom", "name": name, "description": description}
    notes = [description] if description else []
    if kind == "grammar":
        syntax = _optional_choice(text_format, "syntax", _GRAMMAR_SYNTAXES, f"{path}.format")
        definition = _required_str(text_format, "definition", f"{path}.format")
        notes.append(
            f"The `{CUSTOM_INPUT}` string must follow this {syntax or 'lark'} grammar:\n{definition}"
        )
        echoed["format"] = {"type": "grammar", "syntax": syntax or "lark", "definition": definition}
    elif kind == "text":
        echoed["format"] = {"type": "text"}
    else:
        raise invalid(f"{path}.format.type", "expected 'text' or 'grammar'")
    parameter = {"type": "string", "description": "The tool's input, as free text (not JSON)."}
    parameters = {
        "type": "object",
        "properties": {CUSTOM_INPUT: parameter},
        "required": [CUSTOM_INPUT],
        "additionalProperties": False,
    }
    function: dict[str, Any] = {"name": chat_tool_name(name, namespace), "parameters": parameters}
    if notes:
        function["description"] = "\n\n".join(notes)
    return echoed, function, ToolOrigin(CUSTOM_TOOL, name, namespace)


def _offered_tools(body: dict[str, Any], items: list[dict[str, Any]]) -> _ToolSet:
    """The request's tools, then those the input's tool search outputs loaded."""
    offered = _ToolSet()
    for n, tool in enumerate(_optional_list(body, "tools") or []):
        offered.add(tool, f"tools.{n}")
    for position, item in enumerate(items):  # one item per element of `input`, in its order
        if item["type"] == "tool_search_output":
            for n, tool in enumerate(item["tools"]):
                offered.add(tool, f"input.{position}.tools.{n}", loaded=True)
    return offered


def _tool_choice(body: dict[str, Any]) -> tuple[str | dict[str, Any], str | dict[str, Any] | None]:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise invalid("tool_choice", "expected 'auto', 'none', 'required' or a function")
        return choice, choice
    if not isinstance(choice, dict):
        raise invalid("tool_choice", "expected a string or an object")
    kind = _required_str(choice, "type", "tool_choice")
    if kind not in (FUNCTION_TOOL, CUSTOM_TOOL):
        raise InvalidRequest(
            f"tool_choice of type '{kind}' cannot be served here: {_CHAT_ONLY}; name a function or a "
            "custom tool instead.",
            param="tool_choice.type",
        )
    name = _required_str(choice, "name", "tool_choice")
    namespace = optional_str(choice, "namespace", "tool_choice")
    echoed = {"type": kind, "name": name, **({"namespace": namespace} if namespace else {})}
    return echoed, {"type": "function", "function": {"name": chat_tool_name(name, namespace)}}


def _text(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """`text` as echoed, the chat response_format it asks for, and its verbosity."""
    text = _optional_dict(body, "text") or {}
    verbosity = _optional_choice(text, "verbosity", _VERBOSITIES, "text")
    text_format = _optional_dict(text, "format", "text") or {"type": "text"}
    kind = _required_str(text_format, "type", "text.format")
    echoed: dict[str, Any] = {"format": {"type": kind}}
    response_format: dict[str, Any] | None = None
    if kind == "json_object":
        response_format = {"type": "json_object"}
    elif kind == "json_schema":
        schema = {
            "name": _required_str(text_format, "name", "text.format"),
            "schema": _required_dict(text_format, "schema", "text.format"),
            "description": optional_str(text_format, "description", "text.format"),
            "strict": optional_bool(text_format, "strict", "text.format"),
        }
        schema = {key: value for key, value in schema.items() if value is not None}
        echoed["format"].update(schema)
        response_format = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise invalid("text.format.type", "expected 'text', 'json_object' or 'json_schema'")
    if verbosity is not None:
        echoed["verbosity"] = verbosity
    return echoed, response_format, verbosity


def _reasoning(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    reasoning = _optional_dict(body, "reasoning") or {}
    effort = _optional_choice(reasoning, "effort", _EFFORTS, "reasoning")
    summary = _optional_choice(reasoning, "summary", _SUMMARIES, "reasoning")
    _optional_choice(reasoning, "generate_summary", _SUMMARIES, "reasoning")
    return {"effort": effort, "summary": summary}, effort


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    metadata = _optional_dict(body, "metadata") or {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise invalid(f"metadata.{key}", "expected a string")
    return metadata


# The input: its items normalized (as they are stored and listed), then as chat messages.


def input_items(body: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """The request's input as Responses items, each with an id (the client's, or a new one)."""
    if "input" not in body or body["input"] is None:
        raise _missing("input")
    value = body["input"]
    if isinstance(value, str):
        return [_message_item(f"msg_{base}_in0", "user", [{"type": "input_text", "text": value}])]
    if not isinstance(value, list):
        raise invalid("input", "expected a string or a list of items")
    return [_input_item(item, f"input.{n}", f"{base}_in{n}") for n, item in enumerate(value)]


def _input_item(item: object, path: str, id_tail: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise invalid(path, "expected an object")
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise invalid(f"{path}.type", "expected a string")
    if kind not in _ITEM_PREFIXES:
        why = _UNSERVED_ITEMS.get(kind, _CHAT_ONLY)
        message = f"Input items of type '{kind}' cannot be served here: {why}."
        raise InvalidRequest(message, param=f"{path}.type")
    item_id = optional_str(item, "id", path) or f"{_ITEM_PREFIXES[kind]}_{id_tail}"
    if kind == "message":
        role = _required_str(item, "role", path)
        if role not in _ROLES:
            raise invalid(f"{path}.role", "expected 'user', 'assistant', 'system' or 'developer'")
        return _message_item(item_id, role, _content_parts(item, role, path))
    if kind == "function_call":
        call_id = _required_str(item, "call_id", path)
        name = _required_str(item, "name", path)
        arguments = _required_str(item, "arguments", path, non_empty=False)
        namespace = optional_str(item, "namespace", path)
        return function_call_item(item_id, call_id, name, arguments, "completed", namespace)
    if kind == "custom_tool_call":
        call_id = _required_str(item, "call_id", path)
        name = _required_str(item, "name", path)
        text = _required_str(item, "input", path, non_empty=False)
        namespace = optional_str(item, "namespace", path)
        return custom_tool_call_item(item_id, call_id, name, text, "completed", namespace)
    if kind in ("function_call_output", "custom_tool_call_output"):
        call_id = _required_str(item, "call_id", path)
        output = _tool_output(item, path)
        return {"id": item_id, "type": kind, "call_id": call_id, "output": output, "status": "completed"}
    if kind in ("tool_search_call", "tool_search_output"):
        return _tool_search_item(item, kind, item_id, path)
    return _reasoning_input(item, item_id, path)


def _tool_search_item(item: dict[str, Any], kind: str, item_id: str, path: str) -> dict[str, Any]:
    """A client-executed tool search's call, or its output (the tools it loaded, validated here and
    offered to the upstream from then on); a search the server ran cannot have happened here."""
    execution = optional_str(item, "execution", path) or "client"
    if execution != "client":
        raise InvalidRequest(
            f"Tool searches run by the server cannot be served here: {_CHAT_ONLY}.",
            param=f"{path}.execution",
        )
    call_id = _required_str(item, "call_id", path)
    kept = {"id": item_id, "type": kind, "call_id": call_id, "execution": "client", "status": "completed"}
    if kind == "tool_search_call":
        if "arguments" not in item:
            raise _missing(f"{path}.arguments")
        return {**kept, "arguments": item["arguments"]}
    tools = _optional_list(item, "tools", path)
    if tools is None:
        raise _missing(f"{path}.tools")
    checked = _ToolSet()  # refused here, where the tool is, if it cannot be offered
    for n, tool in enumerate(tools):
        checked.add(tool, f"{path}.tools.{n}", loaded=True)
    return {**kept, "tools": tools}


def _message_item(item_id: str, role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": role, "status": "completed", "content": content}


def _reasoning_input(item: dict[str, Any], item_id: str, path: str) -> dict[str, Any]:
    """A reasoning item, kept as sent for the input items' list (it is not sent upstream)."""
    summary = _optional_list(item, "summary", path) or []
    kept = {"id": item_id, "type": "reasoning", "summary": summary}
    for key in ("content", "encrypted_content"):
        if item.get(key) is not None:
            kept[key] = item[key]
    return kept


def _content_parts(item: dict[str, Any], role: str, path: str) -> list[dict[str, Any]]:
    content = item.get("content")
    if content is None:
        raise _missing(f"{path}.content")
    if isinstance(content, str):
        content = [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{path}.content", "expected a string or a list of parts")
    return [_content_part(part, role, f"{path}.content.{n}") for n, part in enumerate(content)]


def _content_part(part: object, role: str, path: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise invalid(path, "expected an object")
    kind = _required_str(part, "type", path)
    if kind in ("input_text", "output_text"):
        text = _required_str(part, "text", path, non_empty=False)
        if role == "assistant":
            return {"type": "output_text", "text": text, "annotations": []}
        return {"type": "input_text", "text": text}
    if kind == "refusal" and role == "assistant":
        return {"type": "refusal", "refusal": _required_str(part, "refusal", path, non_empty=False)}
    if kind == "input_image" and role == "user":
        return _image_part(part, path)
    if kind in ("input_image", "input_file", "input_audio", "refusal"):
        raise InvalidRequest(
            f"Content parts of type '{kind}' cannot be sent in a {role} message here.", param=f"{path}.type"
        )
    raise invalid(f"{path}.type", "expected 'input_text', 'output_text' or 'input_image'")


def _image_part(part: dict[str, Any], path: str) -> dict[str, Any]:
    if part.get("file_id") is not None:
        raise InvalidRequest(
            "Images cannot be sent by file id here (the gateway has no Files API); send an image URL "
            "or a base64 data URL in 'image_url'.",
            param=f"{path}.file_id",
        )
    url = _required_str(part, "image_url", path)
    detail = _optional_choice(part, "detail", _IMAGE_DETAILS, path) or "auto"
    return {"type": "input_image", "image_url": url, "detail": detail}


def _tool_output(item: dict[str, Any], path: str) -> str | list[dict[str, Any]]:
    output = item.get("output")
    if output is None:
        raise _missing(f"{path}.output")
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise invalid(f"{path}.output", "expected a string or a list of parts")
    parts = []
    for n, part in enumerate(output):
        part_path = f"{path}.output.{n}"
        if not isinstance(part, dict):
            raise invalid(part_path, "expected an object")
        kind = _required_str(part, "type", part_path)
        if kind not in ("input_text", "output_text"):
            raise InvalidRequest(
                f"Tool outputs can only hold text here (chat tool messages carry text), not '{kind}'.",
                param=f"{part_path}.type",
            )
        parts.append({"type": "input_text", "text": _required_str(part, "text", part_path, non_empty=False)})
    return parts


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages for normalized input items (reasoning items are dropped)."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append(_chat_message(item["role"], item["content"]))
        elif kind in ("function_call", "custom_tool_call", "tool_search_call"):
            _add_tool_call(messages, item)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item["output"]
            content = output if isinstance(output, str) else "".join(part["text"] for part in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
        elif kind == "tool_search_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _loaded(item)})
    return messages


def _loaded(item: dict[str, Any]) -> str:
    """What a tool search's output tells the model: the tools it made callable."""
    names: list[str] = []
    for tool in item["tools"]:
        inner = tool.get("tools") if tool.get("type") == "namespace" else [tool]
        namespace = tool.get("name") if tool.get("type") == "namespace" else None
        names.extend(chat_tool_name(member["name"], namespace) for member in inner)
    return "Tools now available: " + ", ".join(names) + "." if names else "No tools were found."


def _chat_message(role: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    if role == "assistant":
        text = "".join(part.get("text") or part.get("refusal") or "" for part in parts)
        return {"role": "assistant", "content": text}
    chat_role = "system" if role == "developer" else role
    texts = [part["text"] for part in parts if part["type"] == "input_text"]
    if len(texts) == len(parts) and (len(texts) == 1 or chat_role == "system"):
        # System text as one string: many chat servers (llama.cpp's among them) take no parts there.
        return {"role": chat_role, "content": "\n\n".join(texts)}
    return {"role": chat_role, "content": [_chat_part(part) for part in parts]}


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "input_text":
        return {"type": "text", "text": part["text"]}
    image: dict[str, Any] = {"url": part["image_url"]}
    if part["detail"] in ("low", "high"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _add_tool_call(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    """A tool call joins the assistant message right before it, or starts one."""
    call = chat_tool_call(item)
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        if last["content"] == "":
            last["content"] = None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


# Validating fields: each refusal names the field by its dotted path.


def invalid(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {problem}.", param=param)


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)


def _path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _required_str(obj: dict[str, Any], key: str, path: str = "", *, non_empty: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        raise _missing(_path(path, key))
    if not isinstance(value, str):
        raise invalid(_path(path, key), "expected a string")
    if non_empty and not value:
        raise invalid(_path(path, key), "expected a non-empty string")
    return value


def _required_dict(obj: dict[str, Any], key: str, path: str = "") -> dict[str, Any]:
    value = _optional_dict(obj, key, path)
    if value is None:
        raise _missing(_path(path, key))
    return value


def optional_str(obj: dict[str, Any], key: str, path: str = "") -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise invalid(_path(path, key), "expected a string")


def optional_bool(obj: dict[str, Any], key: str, path: str = "") -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise invalid(_path(path, key), "expected a boolean")


def _optional_int(obj: dict[str, Any], key: str, *, minimum: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(key, "expected an integer")
    if value < minimum:
        raise invalid(key, f"expected at least {minimum}")
    return value


def _optional_number(obj: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(key, "expected a number")
    if not low <= value <= high:
        raise invalid(key, f"expected a number from {low} to {high}")
    return value


def _optional_dict(obj: dict[str, Any], key: str, path: str = "") -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise invalid(_path(path, key), "expected an object")


def _optional_list(obj: dict[str, Any], key: str, path: str = "") -> list[Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, list):
        return value
    raise invalid(_path(path, key), "expected a list")


def _optional_choice(obj: dict[str, Any], key: str, choices: frozenset[str], path: str = "") -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(f"'{choice}'" for choice in sorted(choices))
        raise invalid(_path(path, key), f"expected one of {expected}")
    return value
