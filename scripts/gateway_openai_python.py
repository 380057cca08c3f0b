#!/usr/bin/env python3
"""The openai Python SDK against a running gateway (examples/gateway).

    cargo run --release --example gateway -- --listen 127.0.0.1:8080 \
        --tenant-rpm 5 --sim-faults false
    python3 scripts/gateway_openai_python.py --base-url http://127.0.0.1:8080/v1 \
        --tenant-rpm 5

A chat completion, a streamed one (with the usage chunk), then a tenant
that spends its quota (the gateway's --tenant-rpm) and is refused: the SDK
raises RateLimitError with the gateway's Retry-After. Exits 1 when any of
it is not what the gateway promises.
"""

import argparse
import sys

import openai


def fail(message):
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument(
        "--tenant-rpm",
        type=int,
        default=5,
        help="the gateway's --tenant-rpm: the last tenant spends it, then is refused",
    )
    args = parser.parse_args()
    print(f"openai {openai.__version__}, gateway at {args.base_url}")

    # Any key names a tenant: the gateway holds the upstream's own key.
    client = openai.OpenAI(base_url=args.base_url, api_key="sk-tenant-a")
    text = "I love this gateway"
    answer = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": f"Text: {text}"}],
        max_tokens=8,
    )
    content = answer.choices[0].message.content
    usage = answer.usage
    print(
        f"completion: {content!r} "
        f"({usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens)"
    )
    if content not in ("positive", "negative", "neutral"):
        fail(f"not a label: {content!r}")

    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Text: this is awful"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if usage is not None:
            fail("a chunk after the usage chunk")
        if chunk.usage is not None:
            usage = chunk.usage
        elif chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    if usage is None:
        fail("the stream ended without its usage chunk")
    print(
        f"stream: {' + '.join(repr(p) for p in pieces)} = {''.join(pieces)!r} "
        f"(usage last: {usage.total_tokens} tokens)"
    )

    # A tenant of its own, and no SDK retries, so that the refusal shows.
    tenant = client.with_options(api_key="sk-tenant-b", max_retries=0)
    for i in range(args.tenant_rpm):
        tenant.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": f"Text: call {i}"}],
            max_tokens=4,
        )
    try:
        tenant.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": "Text: one more"}],
            max_tokens=4,
        )
    except openai.RateLimitError as e:
        code = e.code  # the SDK read it from the body's "error" object
        retry_after = e.response.headers.get("retry-after")
        print(
            f"tenant quota: {args.tenant_rpm} calls answered, the next refused: "
            f"{type(e).__name__} {e.status_code} {code}, Retry-After {retry_after} s"
        )
        if code != "tenant_rate_limit_exceeded" or not retry_after:
            fail("the refusal is not the gateway's tenant 429 with Retry-After")
    else:
        fail(f"call {args.tenant_rpm + 1} of the tenant was not refused")
    print("ok")


if __name__ == "__main__":
    main()
