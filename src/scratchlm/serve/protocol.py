"""The OpenAI wire format the server speaks: request bodies (validated by FastAPI into these pydantic
models), response bodies and the error shape. Harmless fields the server does not implement (`user`,
`metadata`, `store`, ...) are accepted and ignored (as vLLM does), so clients that send them keep working;
fields that would change the answer and are not implemented (`response_format`, `logit_bias`, ...) are refused
by serve/validate.py, naming the field. Tools (`tools`, `tool_choice`, assistant `tool_calls`, role `tool`) are
implemented: docs/tools.md. Every bound here is what the engine can honour, so a request that passes
validation does not fail later for a reason the schema could state."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

MAX_N = 16  # samples per prompt: each holds KV blocks, so a bound keeps one request from filling the pool
MAX_STOP = 16
MAX_STOP_CHARS = 256  # one stop string: the engine matches every stop string against each sample's tail
MAX_MESSAGES = 1024  # a chat's messages: more would not fit any context this server has
MAX_TOP_LOGPROBS = 20  # OpenAI's own limit
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
MIN_TOP_P = 1e-6  # smaller values act as this one: only the most likely token is kept
MAX_TOOLS = 128  # OpenAI's own limit on `tools`
MAX_TOOL_CALLS = 128  # calls in one assistant message of the history
MAX_TOOLS_CHARS = 65536  # the tools' JSON: it goes into the system turn, so it must fit the context too
MAX_SCHEMA_DEPTH = 32  # nesting of one tool's parameters schema
GREEDY_BELOW = 1e-5  # a temperature this small samples greedily (as vLLM does): dividing by it overflows


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _TopRequest(BaseModel):
    # Unknown top-level fields are kept (in model_extra) so validate.py can refuse those that change the answer.
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    """One part of a message whose content is a list (only text parts are understood)."""

    type: Literal["text"] = "text"
    text: str


class FunctionCall(_Request):
    """The function part of a call in the history: `arguments` is a JSON string, as OpenAI sends it."""

    name: StrictStr
    arguments: StrictStr


class ToolCallIn(_Request):
    """A call the assistant made earlier in the conversation."""

    id: Optional[StrictStr] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    """A message of the conversation: an assistant's may carry `tool_calls`, a `tool` message answers one."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    tool_calls: Optional[list[ToolCallIn]] = Field(None, max_length=MAX_TOOL_CALLS)
    tool_call_id: Optional[StrictStr] = None
    name: Optional[StrictStr] = None

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Request):
    """`stream_options`: include_usage adds a last chunk with the token counts."""

    include_usage: StrictBool = False


class _Sampling(_TopRequest):
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0, description="extension (vLLM): 0 turns it off")
    # Below 0.01 the penalised logits overflow to inf and sampling has no distribution left.
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=10, description="extension (vLLM)")
    # OpenAI's: logit -= frequency_penalty × count + presence_penalty × (count > 0), over the completion's tokens
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    min_p: Optional[float] = Field(None, ge=0, le=1, description="extension (vLLM): 0 turns it off")
    max_tokens: Optional[int] = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Union[str, list[str], None] = Field(None, description=f"up to {MAX_STOP} strings of at most "
                                              f"{MAX_STOP_CHARS} characters")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None

    def stop_list(self) -> list[str]:
        """`stop` as a list without empty strings."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatTemplateKwargs(_Request):
    """`chat_template_kwargs`: enable_thinking=false makes the model answer without a `<think>` block."""

    enable_thinking: StrictBool = True


class FunctionDef(BaseModel):
    """A function the model may call: its name, what it does, and a JSON schema of its arguments."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key (`parameter`) is an error, not a silently lost schema

    name: StrictStr
    description: Optional[StrictStr] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[StrictBool] = None


class ToolDef(BaseModel):
    """One entry of `tools`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Request):
    name: StrictStr


class NamedToolChoice(_Request):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`: the reply is a call to that function."""

    type: Literal["function"]
    function: NamedFunction


class Scaling(BaseModel):
    """Extension `scaling`: sample `samples` replies from one shared prefill and answer with one of them, picked by
    a majority vote on the answer (`self_consistency`, the answer read as `answer`: "text", "number" or a synth task
    name) or by the server's reward model (`best_of`, needs `scratchlm serve --reward-run`). docs/serving.md."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silently different pick

    method: Literal["self_consistency", "best_of"]
    samples: StrictInt = Field(..., ge=1, le=MAX_N, description="also at most the server's --max-num-seqs")
    answer: StrictStr = Field("text", description="self_consistency: how the vote reads an answer")


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    chat_template_kwargs: Optional[ChatTemplateKwargs] = None
    tools: Optional[list[ToolDef]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[StrictBool] = None
    scaling: Optional[Scaling] = None


class CompletionRequest(_Sampling):
    """POST /v1/completions: a text prompt or token ids (one prompt; a list of them is a batch)."""

    model: Optional[str] = None
    prompt: Union[str, list[str], list[StrictInt], list[list[StrictInt]]]
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: StrictBool = False


# ---------------------------------------------------------------------------------------------------
# Responses


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # the model's JSON text: like OpenAI's, not guaranteed to parse


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None
    tool_calls: Optional[list[ToolCallOut]] = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort", "tool_calls"]] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sources: Optional[list[str]] = None  # `serve --rag-db`: the chunks put into the prompt (source#chunk)
    scaling: Optional[dict[str, Any]] = None  # extension `scaling`: the samples, their answers/scores, the pick


class DeltaFunction(BaseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None


class DeltaToolCall(BaseModel):
    """A streamed piece of a call: the first carries index, id, type and name; the next ones argument text."""

    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: DeltaFunction


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None
    tool_calls: Optional[list[DeltaToolCall]] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort", "tool_calls"]] = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None
    sources: Optional[list[str]] = None  # `serve --rag-db`: on the first chunk, the chunks put into the prompt


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[Optional[float]] = []
    top_logprobs: list[Optional[dict[str, float]]] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort"]] = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "scratchlm"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorInfo
