"""The public API: what `mixdiff` exports, loaded lazily, each name documented."""

import inspect
import subprocess
import sys

import mixdiff


def test_every_public_name_loads_and_is_documented():
    for name in mixdiff.__all__:
        value = getattr(mixdiff, name)
        assert value is getattr(mixdiff, name)
        if callable(value):
            assert inspect.getdoc(value), f"mixdiff.{name} has no docstring"
    assert "PairedImageFolder" in dir(mixdiff)


def test_importing_mixdiff_loads_no_torch():
    code = "import sys, mixdiff; print('torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error():
    try:
        mixdiff.nothing_here
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
