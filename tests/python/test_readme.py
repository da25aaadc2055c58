"""The README's snippets run, and say what they print.

- The PyTorch snippet runs as written, on whatever device this build and
  machine have (the CPU torch the project installs included); every line
  whose comment starts with `# tensor(...)` prints exactly that.
- The distributed, engine and C++ snippets are excerpts of programs the
  tests run (examples/online_moe.py and examples/engines/*.py in
  test_examples.py, examples/consumer in the install test): every code line
  of each, comments aside, appears in that program, in order.
- The `moe-eplb demo` table is checked against the tool's output by the CLI
  tests (tests/cli_plan/cli_plan_test.sh, case demo).
"""
import contextlib
import io
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def read(*path):
    with open(os.path.join(ROOT, *path)) as file:
        return file.read()


def blocks(language):
    """The README's fenced blocks of one language, in order."""
    return re.findall(r"^```%s\n(.*?)^```$" % language, read("README.md"), re.S | re.M)


def code_lines(text, comment):
    """Lines without their comments and indentation; blank ones dropped."""
    lines = []
    for line in text.splitlines():
        line = line.split(comment, 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def assert_excerpt(snippet, program, comment, name):
    """Every code line of `snippet` appears in `program`, in order."""
    remaining = code_lines(program, comment)
    for line in code_lines(snippet, comment):
        assert line in remaining, "README %s line not in the program, in order: %r" % (name, line)
        remaining = remaining[remaining.index(line) + 1:]


def test_pytorch_snippet_runs_and_prints_what_it_says():
    snippet = blocks("python")[0]
    assert "moe_eplb.update_expert(" in snippet
    assert snippet.count("# tensor(") == 4
    namespace = {}
    for line in snippet.splitlines():
        code, _, comment = line.partition("#")
        printed = re.search(r"#\s*(tensor\(\[.*?\]\))", line)
        if printed is None:
            exec(line, namespace)  # noqa: S102 (the README's own code)
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code.strip(), "README", "single"), namespace)  # prints the value
        assert " ".join(out.getvalue().split()) == printed.group(1), line


def test_distributed_snippet_is_the_runnable_example():
    snippet = blocks("python")[1]
    assert "EplbRuntime(" in snippet
    assert_excerpt(snippet, read("examples", "online_moe.py"), "#", "distributed")


@pytest.mark.parametrize("index, program", [
    (2, "vllm_eplb.py"), (3, "sglang_eplb.py"), (4, "trtllm_eplb.py"), (5, "vllm_ascend_eplb.py")])
def test_engine_snippets_are_the_runnable_examples(index, program):
    snippet = blocks("python")[index]
    assert "import moe_eplb.engines.%s " % program[:-len("_eplb.py")] in snippet
    assert_excerpt(snippet, read("examples", "engines", program), "#", program)


def test_cpp_snippet_is_the_consumer_program():
    (snippet,) = blocks("cpp")
    assert_excerpt(snippet, read("examples", "consumer", "main.cpp"), "//", "C++")


@pytest.mark.parametrize("language", ["python", "cpp"])
def test_every_snippet_is_checked(language):
    # A snippet added to the README needs a test here.
    assert len(blocks(language)) == {"python": 6, "cpp": 1}[language]
