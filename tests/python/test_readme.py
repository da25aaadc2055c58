"""The README's snippets run, and say what they print.

- The PyTorch snippet runs as written, on whatever device this build and
  machine have (the CPU torch the project installs included); every line
  whose comment starts with `# tensor(...)` prints exactly that.
- The distributed, engine and C++ snippets are excerpts of programs the
  tests run (examples/online_moe.py and examples/engines/*.py in
  test_examples.py, examples/consumer in the install test): every code line
  of each, comments aside, appears in that program, in order.
- The operator table names each op's arguments, in order, with the
  schema's keyword-only marker and defaults.
- The `moe-eplb demo` table is checked against the tool's output by the CLI
  tests (tests/cli_plan/cli_plan_test.sh, case demo), the command-line
  synopsis against each command's --help (tests/cli/cli_test.cpp).
"""
import contextlib
import io
import os
import re

import pytest
import torch

import moe_eplb  # noqa: F401 (loads torch.ops.moe_eplb)

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


def test_operator_table_is_the_schemas():
    rows = re.findall(r"^\| `(\w+)\((.*?)\)(?: -> \((.*?)\))?` \|", read("README.md"), re.M)
    assert [name for name, _, _ in rows] == [
        "update_expert", "update_expert_pruned", "update_expert_counted", "prepare_table",
        "update_expert_prepared"]
    for name, arguments, returns in rows:
        schema = getattr(torch.ops.moe_eplb, name).default._schema
        declared = {argument.name: argument for argument in schema.arguments}
        order = [argument.name for argument in schema.arguments]
        keyword_only, position = False, -1
        for argument in (text.strip() for text in arguments.split(",")):
            if argument == "...":
                if not keyword_only:
                    keyword_only = None  # what it elides may hold the "*": unknown
                continue
            if argument == "*":
                keyword_only = True
                continue
            argument_name, _, default = argument.partition("=")
            argument_name = argument_name.rstrip("?")
            assert argument_name in declared, (name, argument_name)
            assert order.index(argument_name) > position, (name, argument_name, "order")
            position = order.index(argument_name)
            if keyword_only is not None:
                assert declared[argument_name].kwarg_only == keyword_only, (name, argument_name)
            if default:
                assert repr(declared[argument_name].default_value).replace("'", '"') == default, (
                    name, argument_name, declared[argument_name].default_value)
        if returns:
            assert len(schema.returns) == len(returns.split(",")), name


@pytest.mark.parametrize("language", ["python", "cpp"])
def test_every_snippet_is_checked(language):
    # A snippet added to the README needs a test here.
    assert len(blocks(language)) == {"python": 6, "cpp": 1}[language]
