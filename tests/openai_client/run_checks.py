"""The runner the client check scripts share: every `check_*` function of a script runs,
failures are listed with their tracebacks, and the exit code is 1 if any failed."""

import sys
import traceback

import openai


def expect_bad_request(param: str, call) -> None:
    """`call()` must be refused with a 400 (BadRequestError) naming `param`."""
    try:
        call()
    except openai.BadRequestError as e:
        assert e.body["param"] == param, e.body
    else:
        raise AssertionError("no BadRequestError")


def run_checks(namespace: dict) -> None:
    checks = [(n, f) for n, f in namespace.items() if n.startswith("check_")]
    failed = []
    for name, check in checks:
        try:
            check()
            print(f"ok    {name}")
        except Exception:
            failed.append(name)
            print(f"FAIL  {name}\n{traceback.format_exc()}")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
