"""`multiwatch completion bash|zsh` and `multiwatch man`, generated from the parser: every
command and option is there, bash accepts and runs the script, man renders the page."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multiwatch.cli import _parser
from multiwatch.cli.completion import parsers
from tests.support.process import run_cli

COMMANDS = [words for words, _ in parsers(_parser()) if words]
OPTIONS = sorted({option for _, command in parsers(_parser())
                  for action in command._actions for option in action.option_strings})


def _script(shell: str) -> str:
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_parser_walk_finds_the_nested_commands() -> None:
    """The lists the tests below check against hold nested commands and their options."""
    assert ("state", "export") in COMMANDS and ("export", "systemd") in COMMANDS
    assert ("completion",) in COMMANDS and ("man",) in COMMANDS
    assert {"--config", "--tap", "--programs-only", "--http-listen"} <= set(OPTIONS)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_names_every_command_and_option(shell: str) -> None:
    """The bash and zsh scripts mention every command, sub-command and option."""
    script = _script(shell)
    for words in COMMANDS:
        assert words[-1] in script, words
    for option in OPTIONS:
        assert option in script, option
    if shell == "zsh":
        assert script.startswith("#compdef multiwatch")


def test_bash_accepts_the_script_and_completes_with_it(tmp_path: Path) -> None:
    """`bash -n` accepts the script; sourced, it completes `multiwatch st` to the commands
    starting so, `tail --t` to its options, and `-c ro` to a roster file."""
    script = tmp_path / "multiwatch.bash"
    script.write_text(_script("bash"))
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          timeout=30).returncode == 0
    (tmp_path / "roster.yaml").write_text("instances: []\n")

    def complete(*words: str) -> list[str]:
        program = (f"source {script}; COMP_WORDS=({' '.join(words)}); "
                   f"COMP_CWORD={len(words) - 1}; COMP_LINE='{' '.join(words)}'; "
                   "COMP_POINT=${#COMP_LINE}; _shtab_multiwatch multiwatch; "
                   "printf '%s\\n' \"${COMPREPLY[@]}\"")
        result = subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                                cwd=tmp_path, timeout=30)
        assert result.returncode == 0, result.stderr
        return sorted(result.stdout.split())

    assert complete("multiwatch", "st") == sorted(
        words[0] for words in COMMANDS if len(words) == 1 and words[0].startswith("st"))
    assert complete("multiwatch", "tail", "--t") == ["--tap", "--timeout"]
    assert complete("multiwatch", "state", "") == ["backup", "export", "forget-mount"]
    assert "roster.yaml" in complete("multiwatch", "check", "-c", "ro")


def test_man_page_lists_every_command_and_renders() -> None:
    """`multiwatch man` prints roff that man's formatter renders without a warning, naming
    every command and sub-command with its options."""
    result = run_cli("man")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(".TH MULTIWATCH \"1\"")
    if shutil.which("groff"):  # what `man` itself runs
        # ASCII without overstriking (-P-cbou): the words as a reader sees them.
        rendered = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", "-ww", "-rLL=200n"],
                                  input=result.stdout, capture_output=True, text=True,
                                  timeout=30)
        assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
        text = rendered.stdout
    else:  # no formatter here: the roff source, with man(7) escapes undone
        text = result.stdout.replace("\\-", "-").replace("\\fI\\,", "").replace("\\/\\fR", "")
    assert "NAME" in text and "multiwatch - watch many directories" in text
    for words in COMMANDS:
        assert f"multiwatch {' '.join(words)}" in text, words
    for option in OPTIONS:
        assert option in text, option


def test_completion_for_an_unknown_shell_is_a_usage_error() -> None:
    """`multiwatch completion fish`: exit 2 naming the shells there are."""
    result = run_cli("completion", "fish")
    assert result.returncode == 2
    assert "bash" in result.stderr and "zsh" in result.stderr


@pytest.mark.parametrize("command, package", [("completion bash", "shtab"),
                                              ("man", "argparse-manpage")])
def test_a_missing_generator_says_what_to_install(command: str, package: str) -> None:
    """Installed without its generator library (pip --no-deps): exit 1 naming the package
    to install, no traceback."""
    module = {"shtab": "shtab", "argparse-manpage": "argparse_manpage"}[package]
    program = (f"import sys; sys.modules[{module!r}] = None; from multiwatch.cli import main; "
               f"sys.exit(main({command.split()!r}))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert f"-m pip install {package}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_readme_recipe_installs_completion_and_man_page(tmp_path: Path) -> None:
    """The README's lines, run as they are in an empty home: each file lands where it says,
    and `man multiwatch` shows the page (they wrote into directories that did not exist)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    intro = "Shell completion and the manual page come from"
    recipe = readme.split(intro, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    home = tmp_path / "home"
    home.mkdir()
    (home / ".local" / "bin").mkdir(parents=True)  # a user's usual PATH entry
    path = f"{home / '.local' / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin"
    lines = [line for line in recipe.splitlines()
             if not (line.startswith("man ") and not shutil.which("man"))]
    result = subprocess.run(["bash", "-e", "-c", "\n".join(lines)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path,
                            env={"HOME": str(home), "PATH": path, "MANPAGER": "cat",
                                 "MANWIDTH": "80"})
    assert result.returncode == 0, result.stderr
    assert "_shtab_multiwatch" in (
        home / ".local/share/bash-completion/completions/multiwatch").read_text()
    assert (home / ".zfunc" / "_multiwatch").read_text().startswith("#compdef multiwatch")
    assert (home / ".local/share/man/man1/multiwatch.1").read_text().startswith(".TH")
    if shutil.which("man"):
        assert "MULTIWATCH(1)" in result.stdout, result.stdout[:500]
