"""Drives a `kiln serve` image server with the official `openai` Python client.

Usage: python3 tests/openai_client/check_images.py BASE_URL MODEL API_KEY

Plain Python (no pytest) so CI needs only the `openai` package. Each check is a function
named check_*; all run, failures are listed, and the exit code is 1 if any failed.
"""

import base64
import struct
import sys

import openai
from run_checks import expect_bad_request, run_checks

BASE_URL, MODEL, API_KEY = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=API_KEY, max_retries=0)
# kiln's diffusion settings go through the client's extra_body; few steps keep it fast.
FAST = {"num_inference_steps": 2, "seed": 7}


def png_size(data):
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_generate_b64_json():
    r = client.images.generate(
        model=MODEL,
        prompt="a red cat",
        n=2,
        size="32x16",
        response_format="b64_json",
        extra_body=FAST,
    )
    assert len(r.data) == 2, r
    for image in r.data:
        assert png_size(base64.b64decode(image.b64_json)) == (32, 16)
    again = client.images.generate(
        model=MODEL, prompt="a red cat", n=2, size="32x16",
        response_format="b64_json", extra_body=FAST,
    )
    assert [i.b64_json for i in again.data] == [i.b64_json for i in r.data]


def check_url_format_is_a_bad_request():
    expect_bad_request(
        "response_format",
        lambda: client.images.generate(
            model=MODEL, prompt="a cat", response_format="url", extra_body=FAST
        ),
    )


def check_bad_size_is_a_bad_request():
    expect_bad_request(
        "size",
        lambda: client.images.generate(
            model=MODEL, prompt="a cat", size="31x30", response_format="b64_json"
        ),
    )


def check_unknown_model():
    try:
        client.images.generate(model="nope", prompt="a cat", response_format="b64_json")
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("no NotFoundError")


if __name__ == "__main__":
    run_checks(globals())
