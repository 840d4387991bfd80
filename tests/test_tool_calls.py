"""Tool calls in the template and out of generated text: the exact rendering (tools in the system turn, calls in
the assistant's, results grouped in a user turn), the loss mask (calls learnt, results not), parity of our ids with
transformers' apply_chat_template(messages, tools=...) on the saved tokenizer, and the parser, whole and streamed
(every split of the text reassembles to the whole-text parse)."""

from __future__ import annotations

import json

import pytest

from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer
from scratchlm.tokenizer.tool_parser import ToolCallStream, final_arguments, parse_tool_calls
from scratchlm.tokenizer.tools import TOOLS_HEAD, TOOLS_TAIL, call_prefix, check_tools, format_call

CALC = {"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic; 计算",
                                          "parameters": {"type": "object", "properties": {
                                              "expression": {"type": "string", "description": "like 2*(3+4)"}},
                                              "required": ["expression"]}}}
DATE = {"type": "function", "function": {"name": "today", "description": "The current date",
                                          "parameters": {"type": "object", "properties": {}}}}
TOOLS = [CALC, DATE]

LOOP = [
    {"role": "system", "content": "You are a helpful agent."},
    {"role": "user", "content": "What is 12*34, and what day is it?"},
    {"role": "assistant", "content": "I will use tools.", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*34"}}},
        {"id": "c2", "type": "function", "function": {"name": "today", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "408"},
    {"role": "tool", "tool_call_id": "c2", "content": "2026-12-07"},
    {"role": "assistant", "content": "12*34 = 408; today is 2026-12-07."},
]

CHATS = {
    "no tools": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "tools, no system": [{"role": "user", "content": "12*34?"}],
    "tool loop": LOOP,
    "call without content": [{"role": "user", "content": "sum"}, {"role": "assistant", "content": None, "tool_calls": [
        {"name": "calculator", "arguments": {"expression": "1+1"}}]}, {"role": "tool", "content": "2"}],
    "results apart": [{"role": "user", "content": "a"}, {"role": "tool", "content": "x"},
                      {"role": "assistant", "content": "b"}, {"role": "tool", "content": "y"}],
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tool_tok")
    (d / "t.txt").write_text("\n".join(f"what is {i} times {i}? calculator expression 计算 {i * i}" for i in range(80)))
    return train_tokenizer(d / "tok", vocab_size=320, inputs=[d / "t.txt"], show_progress=False)


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.load(tok_dir)


@pytest.fixture(scope="module")
def hf(tok_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


def test_render_with_tools_is_the_hermes_layout(tok):
    text = tok.render_chat(LOOP, tools=TOOLS)
    schemas = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in TOOLS)
    expected = (
        "<|im_start|>system\nYou are a helpful agent.\n\n" + TOOLS_HEAD + schemas + TOOLS_TAIL + "<|im_end|>\n"
        "<|im_start|>user\nWhat is 12*34, and what day is it?<|im_end|>\n"
        "<|im_start|>assistant\nI will use tools.\n<tool_call>\n"
        '{"name": "calculator", "arguments": {"expression": "12*34"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "today", "arguments": {}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n408\n</tool_response>\n<tool_response>\n2026-12-07\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n12*34 = 408; today is 2026-12-07.<|im_end|>\n")
    assert text == expected
    assert "计算" in text  # schemas keep their Unicode (ensure_ascii=False, like transformers' tojson)
    # results apart stay apart: one user turn per run of tool messages
    assert tok.render_chat(CHATS["results apart"]).count("<|im_start|>user\n<tool_response>") == 2
    # no tools: the plain ChatML of before, byte for byte
    assert tok.render_chat(CHATS["no tools"]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"


def test_mask_learns_calls_not_results(tok):
    ids, mask = tok.encode_chat(LOOP, tools=TOOLS)
    learnt = tok.decode([i for i, m in zip(ids, mask) if m])
    assert '"arguments": {"expression": "12*34"}}\n</tool_call>' in learnt
    assert "I will use tools." in learnt and "today is 2026-12-07." in learnt
    assert "408\n" not in learnt and "<tool_response>" not in learnt and "# Tools" not in learnt


@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("name", list(CHATS))
def test_our_ids_equal_transformers_apply_chat_template(tok, hf, name, gen):
    messages = CHATS[name]
    tools = None if name == "no tools" else TOOLS
    ids, _ = tok.encode_chat(messages, add_generation_prompt=gen, tools=tools)
    text = tok.render_chat(messages, add_generation_prompt=gen, tools=tools)
    assert ids == tok.encode(text, allow_special=True)
    assert hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen) == text
    out = hf.apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=gen)
    assert list(out["input_ids"] if hasattr(out, "keys") else out) == ids


def test_thinking_off_in_the_exported_template_matches_the_server_prompt(tok, hf):
    from scratchlm.serve.prompt import chat_prompt_ids

    msgs = [{"role": "user", "content": "What is 2 plus 3?"}]
    for thinking in (True, False):
        out = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, enable_thinking=thinking)
        assert list(out["input_ids"] if hasattr(out, "keys") else out) == chat_prompt_ids(tok, msgs, thinking)


def test_bad_tools_and_calls_are_refused_naming_the_field(tok):
    with pytest.raises(ValueError, match=r"tools\[1\].function.name='a b'"):
        check_tools([CALC, {"type": "function", "function": {"name": "a b"}}])
    with pytest.raises(ValueError, match="listed twice"):
        check_tools([CALC, CALC])
    with pytest.raises(ValueError, match=r"messages\[0\].tool_calls: only assistant"):
        tok.render_chat([{"role": "user", "content": "x", "tool_calls": [{"name": "f", "arguments": {}}]}])
    with pytest.raises(ValueError, match=r"messages\[0\].tool_calls\[0\].arguments must be a dict"):
        tok.render_chat([{"role": "assistant", "tool_calls": [{"name": "f", "arguments": 3}]}])


# ------------------------------------------------------------------------------------------ parser

CASES = [
    # (text, content, [(name, arguments)])
    ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "12*34"}}\n</tool_call>',
     "", [("calculator", '{"expression": "12*34"}')]),
    ('Sure.\n<tool_call>\n{"name": "a", "arguments": {"x": {"y": [1, 2]}}}\n</tool_call>\n'
     '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>\n',
     "Sure.", [("a", '{"x": {"y": [1, 2]}}'), ("b", "{}")]),
    ('<tool_call>{"arguments": {"q": "猫"}, "name": "search"}</tool_call>', "", [("search", '{"q": "猫"}')]),
    ("no call at all: 2 < 3 and <tool", "no call at all: 2 < 3 and <tool", []),
    ("<tool_call>\nnot json\n</tool_call>", "<tool_call>\nnot json\n</tool_call>", []),
    # ran out of tokens inside the arguments: what was written is kept
    ('<tool_call>\n{"name": "f", "arguments": {"a": "x', "", [("f", '{"a": "x')]),
    # the model forgot the outer brace: the arguments stay valid JSON
    ('<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>', "", [("f", '{"a": 1}')]),
    ("<tool_call>\n" + '{"name": "f", "arguments": "{\\"k\\": 1}"}' + "\n</tool_call>", "", [("f", '"{\\"k\\": 1}"')]),
]


@pytest.mark.parametrize("text,content,calls", CASES)
def test_parse_whole_replies(text, content, calls):
    got_content, got = parse_tool_calls(text)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got] == calls
    assert len({c.id for c in got}) == len(got) and all(c.id.startswith("call_") for c in got)


def _reassemble(deltas):
    content, calls = "", {}
    for d in deltas:
        content += d.content
        if d.index is not None:
            c = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.name is not None:
                assert c["name"] is None and c["arguments"] == "", "the name comes first, once"
                c["id"], c["name"] = d.id, d.name
            else:
                assert c["name"] is not None, "argument fragments only after the name"
            c["arguments"] += d.arguments
    return content, [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]


@pytest.mark.parametrize("text,content,calls", CASES)
def test_streamed_deltas_reassemble_to_the_whole_parse_at_every_split(text, content, calls):
    for cut in range(len(text) + 1):
        for cut2 in sorted({cut, min(len(text), cut + 3), min(len(text), cut + 17)}):
            p = ToolCallStream()
            deltas = p.feed(text[:cut]) + p.feed(text[cut:cut2]) + p.feed(text[cut2:]) + p.finish()
            assert _reassemble(deltas) == (content, calls), (cut, cut2)
    p = ToolCallStream()  # one character at a time: the name arrives before any argument text
    deltas = [d for ch in text for d in p.feed(ch)] + p.finish()
    assert _reassemble(deltas) == (content, calls)
    assert not any("<tool_call>" in d.content for d in deltas) or not calls


def test_a_forced_call_prefix_then_the_model_text_parses_as_that_call():
    assert parse_tool_calls(call_prefix("calculator") + '{"expression": "1+2"}}\n</tool_call>')[1][0].arguments \
        == '{"expression": "1+2"}'
    # a format_call round trip
    content, calls = parse_tool_calls(format_call("f", {"x": "é"}))
    assert content == "" and calls[0].name == "f" and json.loads(calls[0].arguments) == {"x": "é"}


def test_final_arguments_drops_only_the_bodys_brace():
    assert final_arguments('{"a": 1}}\n') == '{"a": 1}'
    assert final_arguments('{"a": 1}') == '{"a": 1}'
    assert final_arguments("garbage}") == "garbage"
    assert final_arguments("{{}") == "{{}"


def test_llama_cpp_renders_the_gguf_template_with_tools_as_we_do(tok_dir, tmp_path):
    """The GGUF export carries the same template: llama.cpp's server (jinja on) renders a tool loop, tools listed,
    exactly as render_chat does (the chat ends on the tool results: llama.cpp would continue a final assistant
    message instead of opening a new turn)."""
    xllamacpp = pytest.importorskip("xllamacpp")
    import urllib.request

    from run_util import random_debug_run
    from scratchlm.export.gguf import export_gguf

    tok = Tokenizer.load(tok_dir)
    random_debug_run(tmp_path / "run", tok_dir, f"model.vocab_size={tok.vocab_size}")
    export_gguf(tmp_path / "run", tmp_path / "m.gguf", "f32")
    params = xllamacpp.CommonParams()
    params.model.path = str(tmp_path / "m.gguf")
    params.n_ctx, params.n_parallel, params.warmup, params.use_jinja = 128, 1, False, True
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    server = xllamacpp.Server(params)
    # OpenAI's wire form: arguments as JSON strings
    msgs = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])
                                                    if isinstance(c["function"]["arguments"], dict)
                                                    else c["function"]["arguments"]}} for c in m["tool_calls"]]}
            if m.get("tool_calls") else m for m in LOOP[:-1]]
    req = urllib.request.Request(server.listening_address + "/apply-template",
                                 json.dumps({"messages": msgs, "tools": TOOLS}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        rendered = json.loads(r.read())["prompt"]
    assert rendered == tok.render_chat(msgs, add_generation_prompt=True, tools=TOOLS)
    assert "<tools>\n" + json.dumps(CALC, ensure_ascii=False) in rendered


FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool_", "</tool", '{"name": "f", "arguments": ', '{"name": "g",',
             ' "arguments": ', "{", "}", "}}", " ", "\n", "a", '"', '"x": 1', "，", "<", "/"]


def test_any_text_streamed_in_any_pieces_reassembles_to_the_whole_parse():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    block = st.builds(lambda a, b, c: "<tool_call>\n" + a + b + c, st.sampled_from(FRAGMENTS[4:6]),
                      st.sampled_from(['{"x": 1}', '{"x": {"y": "}"}}', "", "{", '"s"']),
                      st.sampled_from(["}\n</tool_call>", "}</tool_call>", "\n</tool_call>", "}", ""]))
    @hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), block), max_size=16),
                      st.lists(st.integers(0, 120), max_size=10))
    def check(parts, cuts):
        text = "".join(parts)
        content, calls = parse_tool_calls(text)
        bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
        p = ToolCallStream()
        deltas = [d for a, b in zip(bounds, bounds[1:]) for d in p.feed(text[a:b])] + p.finish()
        assert _reassemble(deltas) == (content, [(c.name, c.arguments) for c in calls])
        # and no piece of content is a call's: content deltas concatenate to the whole parse's content
        assert "".join(d.content for d in deltas) == content

    check()



def test_a_weight_0_turn_stays_context_with_tools(tok):
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "old", "weight": 0, "tool_calls": [
        {"name": "today", "arguments": {}}]}, {"role": "tool", "content": "x"}, {"role": "assistant", "content": "new"}]
    ids, mask = tok.encode_chat(chat, tools=TOOLS)
    learnt = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learnt == "new<|im_end|>"
    with pytest.raises(ValueError, match="weight"):
        tok.encode_chat([{"role": "user", "content": "a", "weight": 0}], tools=TOOLS)
