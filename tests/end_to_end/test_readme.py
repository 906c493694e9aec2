"""The README's API example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_api_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, "the README has no Python example"
    exec(compile(blocks[0], str(README), "exec"), {})
    shape, bits = capsys.readouterr().out.split(") ")
    assert shape == "(8, 4, 4, 1"
    assert 0.0 < float(bits) < 1.0  # about log(20) nats over 16 counts: 0.27 bits/dim
