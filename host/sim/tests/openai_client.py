"""Talks to a simulator with the official OpenAI client library and prints
what it understood, one JSON object, for tests/sim.rs to check. Any response
the library cannot parse into its types makes this script fail."""

import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
out = {}

models = client.models.list()
out["models"] = sorted(m.id for m in models.data)

completion = client.completions.create(model="sim-model", prompt="Hello there", max_tokens=5)
out["completion"] = {
    "text": completion.choices[0].text,
    "finish_reason": completion.choices[0].finish_reason,
    "completion_tokens": completion.usage.completion_tokens,
    "served_by": completion.model_extra.get("served_by"),
}

chat = client.chat.completions.create(
    model="adapter-a",
    messages=[{"role": "user", "content": "Say something"}],
    max_tokens=3,
)
out["chat"] = {
    "role": chat.choices[0].message.role,
    "content": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "model": chat.model,
}

pieces = []
for chunk in client.completions.create(model="sim-model", prompt="Hi", max_tokens=4, stream=True):
    pieces.append(chunk.choices[0].text)
out["completion_stream"] = pieces

deltas = []
finish = None
for chunk in client.chat.completions.create(
    model="sim-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
):
    if chunk.choices[0].delta.content:
        deltas.append(chunk.choices[0].delta.content)
    finish = chunk.choices[0].finish_reason or finish
out["chat_stream"] = {"deltas": deltas, "finish_reason": finish}

usage = None
for chunk in client.chat.completions.create(
    model="sim-model",
    messages=[{"role": "user", "content": "Hi"}],
    max_tokens=2,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = {"completion_tokens": chunk.usage.completion_tokens, "choices": len(chunk.choices)}
out["chat_stream_usage"] = usage

response = client.responses.create(model="sim-model", input="Tell me", max_output_tokens=3)
out["response"] = {
    "text": response.output_text,
    "output_tokens": response.usage.output_tokens,
    "model": response.model,
}

kinds = []
deltas = []
for event in client.responses.create(model="adapter-a", input="Tell me", max_output_tokens=2, stream=True):
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
out["response_stream"] = {"types": kinds, "deltas": deltas}

embedding = client.embeddings.create(model="sim-model", input=["one", "two"])
out["embeddings"] = {
    "count": len(embedding.data),
    "dimensions": len(embedding.data[0].embedding),
    "norm": round(sum(x * x for x in embedding.data[0].embedding), 3),
    "prompt_tokens": embedding.usage.prompt_tokens,
}
floats = client.embeddings.create(model="sim-model", input="one", encoding_format="float")
out["embeddings_agree"] = [round(x, 5) for x in floats.data[0].embedding] == [
    round(x, 5) for x in embedding.data[0].embedding
]

try:
    client.completions.create(model="no-such-model", prompt="x")
    out["unknown_model"] = "accepted"
except openai.NotFoundError as error:
    out["unknown_model"] = error.status_code

print(json.dumps(out))
