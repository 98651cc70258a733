"""OpenAI wire format: request and response models for chat completions and completions.

Validation happens here, at the edge: a request that passes these models is well-typed, so
handlers check only what needs the model (prompt length, adapter compatibility).

Every OpenAI field is either honoured or refused: a field loramux does not implement is accepted
only with the value that asks for nothing (null, 0, an empty list), anything else is a 400 that
names it (code `unsupported_parameter`), so a client never believes it got what it did not.
Fields outside OpenAI's API are ignored, as vLLM does, and logged.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

log = logging.getLogger(__name__)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what vLLM's samplers take as a seed (torch.long)
MAX_TOKEN_ID = 2**31 - 1


def _neutral(*allowed: Any) -> AfterValidator:
    """A field loramux does not honour: only the values in `allowed` (which ask for nothing)
    pass; anything else is refused, naming the field."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        raise PydanticCustomError(
            "unsupported_parameter",
            "`{field}` is not supported by this server; leave it out (or send {allowed})",
            {"field": info.field_name, "allowed": " or ".join(map(_json, allowed))})

    return AfterValidator(check)


def _json(value: Any) -> str:
    return json.dumps(value)


def _unsupported(*allowed: Any) -> Any:
    return Field(default=None, description="Not supported by loramux: accepted only as "
                 + " or ".join(map(_json, allowed)) + "; any other value is a 400.")


NotNull = Annotated[Any, _neutral(None)]
EmptyList = Annotated[list[Any] | None, _neutral(None, [])]
NoneOrNull = Annotated[str | dict[str, Any] | None, _neutral(None, "none")]


def _logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    """Keys must be token ids; even then the field is refused, as no engine applies it yet."""
    for key, bias in (value or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) <= MAX_TOKEN_ID:
            raise PydanticCustomError("invalid_value", "`logit_bias` keys must be integer token "
                                      "ids, got {key!r}", {"key": key[:40]})
        if not -100 <= bias <= 100:
            raise PydanticCustomError("invalid_value", "`logit_bias` values must be in "
                                      "[-100, 100], got {bias}", {"bias": bias})
    if value:
        raise PydanticCustomError("unsupported_parameter", "`logit_bias` is not supported by "
                                  "this server; leave it out (or send null or an empty object)")
    return value


LogitBias = Annotated[dict[str, float] | None, AfterValidator(_logit_bias)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=512)
    # Unset (or null): the model's generation config, else OpenAI's 1 (see model_defaults.py).
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="Default: the base model's generation "
        "config (`temperature`), else 1.")
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Default: the base model's generation config "
        "(`top_p`), else 1.")
    n: int = Field(default=1, ge=1, le=16)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=512)
    # vLLM's extension, used by benchmarks so every server generates the same number of tokens.
    ignore_eos: bool = False
    # Sampling fields vLLM's engine applies, as on vLLM's server (its load generator,
    # vllm.benchmarks.serve, sends repetition_penalty 1.0 on every completion request; many
    # clients send top_k -1, min_p 0 and the penalties 0). Unset: the base model's generation
    # config, else the neutral value (model_defaults.py). The reference engine has no processors
    # for the OpenAI penalties: there a value other than 0 is a 400 (`Handlers._sampling`).
    top_k: int | None = Field(
        default=None, ge=-1, description="vLLM's extension: sample from the k most likely "
        "tokens; -1 or 0: all. Default: the base model's generation config, else all.")
    min_p: float | None = Field(
        default=None, ge=0.0, le=1.0, description="vLLM's extension: drop tokens less likely "
        "than min_p times the most likely one. Default: the base model's generation config, "
        "else 0 (none).")
    repetition_penalty: float | None = Field(
        default=None, gt=0.0, le=2.0, description="vLLM's extension: above 1 penalises tokens "
        "already in the prompt or the output. Default: the base model's generation config "
        "(`repetition_penalty`), else 1 (none).")
    presence_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, description="Default 0. The vLLM engine applies it; the "
        "reference engine (transformers) accepts only 0.")
    frequency_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, description="Default 0. The vLLM engine applies it; the "
        "reference engine (transformers) accepts only 0.")
    logit_bias: LogitBias = Field(default=None, description="Not supported by loramux: keys "
                                  "must be integer token ids, and only null or {} is accepted.")
    # vLLM's sampling extension that loramux's engines do not apply.
    min_tokens: NotNull = _unsupported(None)
    best_of: Annotated[int | None, _neutral(None, 1)] = _unsupported(None, 1)

    @model_validator(mode="before")
    @classmethod
    def _note_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            ignored = [str(k)[:40] for k in data if k not in cls.model_fields]
            if ignored:
                log.info("request fields ignored (not part of OpenAI's API): %s",
                         ", ".join(ignored[:20]))
        return data

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None

    tools: EmptyList = _unsupported(None, [])
    tool_choice: NoneOrNull = _unsupported(None, "none")
    functions: EmptyList = _unsupported(None, [])
    function_call: NoneOrNull = _unsupported(None, "none")
    parallel_tool_calls: NotNull = _unsupported(None)
    audio: NotNull = _unsupported(None)
    modalities: Annotated[list[str] | None, _neutral(None, ["text"])] = _unsupported(
        None, ["text"])
    prediction: NotNull = _unsupported(None)
    reasoning_effort: NotNull = _unsupported(None)
    verbosity: NotNull = _unsupported(None)
    web_search_options: NotNull = _unsupported(None)
    store: Annotated[bool | None, _neutral(None, False)] = _unsupported(None, False)
    metadata: Annotated[dict[str, Any] | None, _neutral(None, {})] = _unsupported(None, {})
    service_tier: Annotated[str | None, _neutral(None, "auto", "default")] = _unsupported(
        None, "auto", "default")

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        return self

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: Annotated[bool, _neutral(False)] = Field(
        default=False, description="Not supported by loramux: accepted only as false.")
    suffix: Annotated[str | None, _neutral(None, "")] = _unsupported(None, "")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("prompt must be one string (batches: send one request each)")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def prompt_chars(self) -> int:
        return len(self.prompt_text())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loramux"
    root: str | None = None
    parent: str | None = None
    # loramux extensions: what a client needs to know before it sends traffic.
    digest: str | None = None
    resident: bool = False
    aliases: list[str] = Field(default_factory=list)
    quantization_mismatch: str | None = None
    refused: str | None = None  # why this server will not serve it (listed on request only)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AdapterAction(BaseModel):
    model: str = Field(min_length=1, max_length=512)


# -- responses, as documented in /openapi.json (the handlers build the same shapes) ----------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: every non-2xx answer of this server, and a failed stream's last
    event before `data: [DONE]`."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


ChatMessage.model_rebuild()
