"""Requests signed by botocore's SigV4Auth against the mock provider's Bedrock side.

The mock checks signatures with an implementation of its own; botocore is AWS's reference.
A request botocore signed must be accepted, and one changed after signing, or signed with
the wrong secret, refused. Run by gateway/tests/cloud_providers.rs with LLMGW_URL set to the
mock and the mock's keys in the environment.
"""

import json
import os
import urllib.error
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

BASE = os.environ["LLMGW_URL"]
# A model id with characters SigV4 encodes twice in the canonical path.
PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0+ok/converse"
BODY = json.dumps(
    {
        "messages": [{"role": "user", "content": [{"text": "Say something."}]}],
        "inferenceConfig": {"maxTokens": 3},
    }
).encode()


def send(credentials, body=BODY, sent=None):
    """Signs `body` with `credentials` and sends `sent` (the signed body unless given)."""
    request = AWSRequest(
        method="POST",
        url=BASE + PATH,
        data=body,
        headers={"content-type": "application/json"},
    )
    SigV4Auth(credentials, "bedrock", "us-east-1").add_auth(request)
    out = urllib.request.Request(
        BASE + PATH,
        data=body if sent is None else sent,
        headers=dict(request.headers.items()),
        method="POST",
    )
    try:
        with urllib.request.urlopen(out, timeout=10) as resp:
            return resp.status, resp.headers, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.load(e)


def refused(answer, exception):
    status, headers, body = answer
    assert status == 403, (status, body)
    assert headers["x-amzn-errortype"].startswith(exception + ":"), dict(headers)
    assert "message" in body, body


long_term = Credentials(
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
)
temporary = Credentials(
    os.environ["AWS_TEMP_ACCESS_KEY_ID"],
    os.environ["AWS_TEMP_SECRET_ACCESS_KEY"],
    os.environ["AWS_SESSION_TOKEN"],
)

for credentials in (long_term, temporary):
    status, _, body = send(credentials)
    assert status == 200, (status, body)
    assert body["output"]["message"]["content"][0]["text"] == "t0 t1 t2 ", body
    assert body["usage"]["outputTokens"] == 3, body

tampered = BODY.replace(b"maxTokens\": 3", b"maxTokens\": 4")
assert tampered != BODY
refused(send(long_term, sent=tampered), "InvalidSignatureException")
wrong_secret = Credentials(long_term.access_key, long_term.secret_key[:-1] + "X")
refused(send(wrong_secret), "InvalidSignatureException")
no_token = Credentials(temporary.access_key, temporary.secret_key)
refused(send(no_token), "UnrecognizedClientException")
print("all ok")
