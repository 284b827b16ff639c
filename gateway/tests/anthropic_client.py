"""The official Anthropic Python client against llmgw, unchanged: messages, streaming, tool use
(JSON and streamed), token counting and errors. The gateway serves `claude-mock` from the mock
provider, whose answers are `max_tokens` words `t0 t1 ...` and whose `tool` fault calls the
first declared tool with {"q": "t0"}. Prints one line per check; exits non-zero on failure."""

import os
import sys

import anthropic

client = anthropic.Anthropic(base_url=os.environ["LLMGW_URL"], api_key=os.environ["LLMGW_KEY"])
MODEL = "claude-mock"
expected = "".join(f"t{i} " for i in range(5))

msg = client.messages.create(
    model=MODEL,
    max_tokens=5,
    system="Be brief.",
    messages=[{"role": "user", "content": "hello"}],
)
assert msg.type == "message" and msg.role == "assistant", msg
assert msg.model == MODEL, msg.model
assert msg.content[0].type == "text" and msg.content[0].text == expected, msg.content
assert msg.stop_reason == "end_turn", msg.stop_reason
assert msg.usage.output_tokens == 5 and msg.usage.input_tokens > 0, msg.usage
print("messages ok", msg.content[0].text)

raw = client.messages.with_raw_response.create(
    model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
)
assert raw.headers.get("x-llmgw-model") == MODEL, dict(raw.headers)
assert raw.headers.get("x-llmgw-provider") == "mock-a", dict(raw.headers)
print("headers ok")

with client.messages.stream(
    model=MODEL, max_tokens=6, messages=[{"role": "user", "content": "stream please"}]
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == "".join(f"t{i} " for i in range(6)), text
assert final.stop_reason == "end_turn", final
assert final.usage.output_tokens == 6, final.usage
print("stream ok", text)

kinds = [e.type for e in client.messages.create(
    model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "x"}], stream=True
)]
assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
# (the client drops `ping` events itself)
assert kinds[1] == "content_block_start" and "message_delta" in kinds, kinds
print("events ok", kinds)

tools = [{
    "name": "lookup",
    "description": "Looks a word up.",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}]
question = {"role": "user", "content": "Look up t0."}
call = client.messages.create(model=MODEL, max_tokens=7, tools=tools, messages=[question])
assert call.stop_reason == "tool_use", call
use = [b for b in call.content if b.type == "tool_use"][0]
assert use.name == "lookup" and use.input == {"q": "t0"}, use
print("tool use ok", use.input)

answer = client.messages.create(
    model=MODEL,
    max_tokens=3,
    tools=tools,
    messages=[
        question,
        {"role": "assistant", "content": call.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "t0 means zero"}]},
    ],
)
assert answer.stop_reason == "end_turn" and answer.content[0].text == "t0 t1 t2 ", answer
print("tool result ok", answer.content[0].text)

with client.messages.stream(model=MODEL, max_tokens=7, tools=tools, messages=[question]) as stream:
    streamed = stream.get_final_message()
use = [b for b in streamed.content if b.type == "tool_use"][0]
assert streamed.stop_reason == "tool_use" and use.input == {"q": "t0"}, streamed
print("streamed tool use ok", use.input)

count = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "count these words"}])
assert count.input_tokens > 0, count
print("count tokens ok", count.input_tokens)

try:
    client.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected NotFoundError from count_tokens")
except anthropic.NotFoundError:
    print("count tokens error ok")

try:
    client.messages.create(model="no-such-model", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    sys.exit("expected NotFoundError")
except anthropic.NotFoundError as e:
    assert e.body["error"]["type"] == "not_found_error", e.body
    print("error ok", e.body["error"]["type"])

try:
    anthropic.Anthropic(base_url=os.environ["LLMGW_URL"], api_key="wrong").messages.create(
        model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "x"}]
    )
    sys.exit("expected AuthenticationError")
except anthropic.AuthenticationError:
    print("auth ok")

print("all ok")
