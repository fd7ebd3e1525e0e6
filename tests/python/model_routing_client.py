"""Calls a Gateway that routes by model with the official OpenAI client, as
an application would, and prints what each call came back with (one JSON
object) for tests/src/models.rs to check: which simulator served it
(`served_by`), the model the answer names, and the errors the gateway gave.
Any answer the library cannot parse makes this script fail."""

import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
out = {}


def served(answer):
    return {"served_by": answer.model_extra.get("served_by"), "model": answer.model}


for model in ["llama-3-70b", "qwen-2.5", "llama-3-70b-sql-lora"]:
    calls = {}
    calls["completion"] = served(client.completions.create(model=model, prompt="Hello", max_tokens=2))
    calls["chat"] = served(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=2
        )
    )
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=3, stream=True
        )
    )
    calls["chat_stream"] = {
        "served_by": sorted({c.model_extra.get("served_by") for c in chunks}),
        "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    }
    chunks = list(client.completions.create(model=model, prompt="Hello", max_tokens=3, stream=True))
    calls["completion_stream"] = {
        "served_by": sorted({c.model_extra.get("served_by") for c in chunks}),
        "text": "".join(c.choices[0].text for c in chunks if c.choices),
    }
    calls["response"] = served(client.responses.create(model=model, input="Hello", max_output_tokens=2))
    events = list(client.responses.create(model=model, input="Hello", max_output_tokens=2, stream=True))
    calls["response_stream"] = {
        "served_by": sorted({e.response.model_extra.get("served_by") for e in events if hasattr(e, "response")}),
        "types": [e.type for e in events],
    }
    calls["embeddings"] = served(client.embeddings.create(model=model, input=["a", "b"]))
    out[model] = calls

# A 300 KB prompt: the gateway reads the body for the model, the picker reads
# it whole again, the server counts its tokens (4 bytes each).
big = client.completions.create(model="llama-3-70b", prompt="x" * 300_000, max_tokens=1)
out["big_prompt"] = {"served_by": big.model_extra.get("served_by"), "prompt_tokens": big.usage.prompt_tokens}

# A forged X-Gateway-Model-Name does not steer: the body decides.
forged = client.completions.create(
    model="qwen-2.5", prompt="Hello", max_tokens=1, extra_headers={"X-Gateway-Model-Name": "llama-3-70b"}
)
out["forged_header"] = served(forged)

out["models"] = sorted(m.id for m in client.models.list().data)

try:
    client.completions.create(model="gpt-unknown", prompt="Hello", max_tokens=1)
    out["unknown_model"] = "served"
except openai.NotFoundError as error:
    out["unknown_model"] = {"status": error.status_code, "code": error.code, "message": error.message}

print(json.dumps(out))
