"""The official OpenAI Python client against llmgw, unchanged: JSON and streamed chat,
embeddings, model listing and an error. Prints one line per check; exits non-zero on failure."""

import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["LLMGW_URL"] + "/v1", api_key=os.environ["LLMGW_KEY"])

models = [m.id for m in client.models.list()]
assert "chat-large" in models, models
print("models ok", models)

chat = client.chat.completions.create(
    model="chat-large",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
    max_tokens=5,
)
assert chat.model == "chat-large", chat.model
assert chat.choices[0].message.content, chat
assert chat.usage.completion_tokens == 5, chat.usage
print("chat ok", chat.choices[0].message.content)

raw = client.chat.completions.with_raw_response.create(
    model="chat-small", messages=[{"role": "user", "content": "hi"}], max_tokens=3
)
assert raw.headers.get("x-llmgw-model") == "chat-small", dict(raw.headers)
assert raw.headers.get("x-llmgw-policy-rev"), dict(raw.headers)
print("headers ok")

text = ""
usage = None
stream = client.chat.completions.create(
    model="chat-small",
    messages=[{"role": "user", "content": "stream please"}],
    max_tokens=6,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert len(text.split()) == 6, text
assert usage is not None and usage.completion_tokens == 6, usage
print("stream ok", text)

emb = client.embeddings.create(model="embed", input=["one", "two"])
assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0, emb
print("embeddings ok")

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
    print("error ok", e.code)

print("all ok")
