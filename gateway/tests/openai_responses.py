"""The official OpenAI Python client's Responses API against llmgw, unchanged: text,
multimodal input, instructions, streaming (raw events and the stream helper), function calls
and their outputs, previous_response_id, retrieve and delete. The gateway serves `gpt-mock`
from the mock provider, whose answers are `max_output_tokens` words `t0 t1 ...` and whose
`tool` fault calls the first declared tool with {"q": "t0"}. Prints one line per check; exits
non-zero on failure."""

import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["LLMGW_URL"] + "/v1", api_key=os.environ["LLMGW_KEY"])
MODEL = "gpt-mock"


def words(n):
    return "".join(f"t{i} " for i in range(n))


r = client.responses.create(model=MODEL, input="hello", instructions="Be brief.", max_output_tokens=5)
assert r.id.startswith("resp_") and r.object == "response", r
assert r.status == "completed" and r.model == MODEL, r
assert r.output_text == words(5), r.output_text
assert r.usage.output_tokens == 5 and r.usage.input_tokens > 0, r.usage
print("text ok", r.output_text)

image = client.responses.create(
    model=MODEL,
    max_output_tokens=3,
    input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
    ]}],
)
assert image.output_text == words(3), image
print("multimodal ok")

text, kinds, completed = "", [], None
for event in client.responses.create(model=MODEL, input="stream please", max_output_tokens=6, stream=True):
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type == "response.completed":
        completed = event.response
assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed", kinds
assert text == words(6), text
assert completed.output_text == text and completed.usage.output_tokens == 6, completed
print("stream ok", kinds)

with client.responses.stream(model=MODEL, input="again", max_output_tokens=4) as stream:
    deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    final = stream.get_final_response()
assert deltas == words(4) and final.output_text == words(4), final
print("stream helper ok")

tools = [{
    "type": "function",
    "name": "lookup",
    "description": "Looks a word up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}]
call = client.responses.create(model=MODEL, input="Look up t0.", tools=tools, max_output_tokens=7)
fc = [o for o in call.output if o.type == "function_call"][0]
assert fc.name == "lookup" and json.loads(fc.arguments) == {"q": "t0"}, fc
print("function call ok", fc.arguments)

follow = client.responses.create(
    model=MODEL,
    previous_response_id=call.id,
    tools=tools,
    max_output_tokens=3,
    input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "t0 means zero"}],
)
assert follow.previous_response_id == call.id and follow.output_text == words(3), follow
print("function output ok", follow.output_text)

with client.responses.stream(model=MODEL, input="Look up t0.", tools=tools, max_output_tokens=7) as stream:
    for _ in stream:
        pass
    streamed = stream.get_final_response()
sfc = [o for o in streamed.output if o.type == "function_call"][0]
assert json.loads(sfc.arguments) == {"q": "t0"}, streamed
print("streamed function call ok")

alone = client.responses.create(model=MODEL, input="What did I say?", max_output_tokens=2)
continued = client.responses.create(
    model=MODEL, input="What did I say?", max_output_tokens=2, previous_response_id=r.id
)
# The continuation carries the earlier turn: the upstream read more input.
assert continued.usage.input_tokens > alone.usage.input_tokens, (continued.usage, alone.usage)
print("previous_response_id ok", alone.usage.input_tokens, continued.usage.input_tokens)

got = client.responses.retrieve(r.id)
assert got.id == r.id and got.output_text == r.output_text, got
client.responses.delete(r.id)
try:
    client.responses.retrieve(r.id)
    sys.exit("expected NotFoundError after delete")
except openai.NotFoundError:
    print("retrieve and delete ok")

try:
    client.responses.create(model=MODEL, input="x", previous_response_id="resp_0000")
    sys.exit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.body["param"] == "previous_response_id", e.body
    print("unknown previous response ok")

print("all ok")
