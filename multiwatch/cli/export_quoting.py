"""Putting untrusted text (directory names, the roster path, state_dir) into the files
`multiwatch export` writes, so that no value can end its line, its quoting or its meaning.

Each target has its own rules, so each has its own functions:

- systemd (systemd.syntax(7), systemd.service(5), systemd.exec(5)): a line ends at `\\n`,
  `\\r` or NUL, and a line ending in `\\` continues on the next; `%` starts a specifier in
  almost every setting; in ExecStart= `$` starts a variable and words are shell-like quoted
  with C escapes; Environment= takes quoted `NAME=value` words; path lists take quoted words
  but expand no variables, so `$` stays as is there.
- supervisord (Python configparser as supervisor sets it up): a line ends at `\\n` or `\\r`;
  a value is stripped; `;` or `#` after whitespace starts a comment; every value goes through
  `%`-formatting (`%(ENV_HOME)s`), and `%(here)s` is replaced even inside `%%(here)s`;
  `command=` is split with `shlex.split`, `environment=` with a non-POSIX shlex that strips
  the quotes from each value.

What cannot be written safely is refused with a ConfigError naming the value: control
characters (newlines, tabs, escape sequences...), line and paragraph separators, and text
that is not valid UTF-8. They are legal in Linux file names, and `multiwatch run` watches
such directories; only their export is refused.
"""

from __future__ import annotations

import json
import re
import unicodedata

from multiwatch.config import ConfigError

# The roster's instance id pattern (coercers._ID_RE), checked again here: unit file names and
# supervisord section names cannot be quoted.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# A user name systemd's User= takes without a warning, or a numeric uid.
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,30}|[0-9]{1,10}")
# Words that need no quoting in an ExecStart= line or a shell-like command (after `%`/`$`
# are doubled, so they may appear).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%$+=:,./-]+")
_BREAKING_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")  # control, lone surrogate, line/para separator


def _breaks(char: str) -> bool:
    return unicodedata.category(char) in _BREAKING_CATEGORIES


def show(value: str) -> str:
    """`value` quoted for a one-line error message: breaking characters as \\uXXXX."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(f"\\u{ord(c):04x}" if _breaks(c) else c for c in text)


def check_line_safe(value: str, what: str) -> str:
    """`value` unchanged; ConfigError if a character in it could end a configuration line."""
    for char in value:
        if _breaks(char):
            problem = ("is not valid UTF-8" if unicodedata.category(char) == "Cs" else
                       f"holds a control character (U+{ord(char):04X})")
            raise ConfigError(
                f"{what} {show(value)} {problem}: it cannot be written into a configuration "
                "file safely; rename it"
            )
    return value


def check_name(value: str, what: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ConfigError(f"{what} {show(value)}: use letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return value


def check_user(value: str, option: str) -> str:
    if not _USER_RE.fullmatch(value):
        raise ConfigError(f"{option} {show(value)}: not a user name (letters, digits, '_', "
                          "'-', at most 31, not starting with a digit) or a numeric uid")
    return value


# ---------------------------------------------------------------- systemd


def unit_text(value: str, what: str) -> str:
    """Free text in a setting that expands specifiers (Description=): `%` doubled.

    The caller must not end the line with the value: a trailing `\\` continues the line."""
    return check_line_safe(value, what).replace("%", "%%")


def _unit_quoted(value: str) -> str:
    if _PLAIN_WORD.fullmatch(value):
        return value
    # Inside double quotes systemd reads C escapes: only `\` and `"` need one.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_exec_word(value: str, what: str) -> str:
    """One word of an ExecStart= command line: `%` and `$` doubled, quoted if needed."""
    check_line_safe(value, what)
    return _unit_quoted(value.replace("%", "%%").replace("$", "$$"))


def unit_path_word(value: str, what: str) -> str:
    """One path of ReadOnlyPaths=/ReadWritePaths=/StateDirectory=: `%` doubled, quoted if
    needed. These expand no `$`, so a `$` is written as is."""
    check_line_safe(value, what)
    return _unit_quoted(value.replace("%", "%%"))


def unit_environment(name: str, value: str, what: str) -> str:
    """`"NAME=value"` for an Environment= line: specifiers escaped, C-style quoted."""
    check_line_safe(value, what)
    text = f"{name}={value}".replace("%", "%%")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------- supervisord

_COMMENT_AFTER_SPACE = re.compile(r"(\s)([;#])")


def _ini_checked(value: str, what: str) -> str:
    check_line_safe(value, what)
    if "%(here)s" in value:  # supervisord replaces it even inside `%%(here)s`
        raise ConfigError(f"{what} {show(value)} holds %(here)s, which supervisord replaces "
                          "whatever the quoting; rename it")
    return value


def ini_value(value: str, what: str) -> str:
    """A plain supervisord value (a path): `%` doubled.

    Refused when configparser would change it: leading or trailing whitespace (stripped),
    whitespace before `;` or `#` (an inline comment)."""
    _ini_checked(value, what)
    if value != value.strip() or not value:
        raise ConfigError(f"{what} {show(value)} begins or ends with whitespace, which "
                          "supervisord strips; rename it")
    if _COMMENT_AFTER_SPACE.search(value):
        raise ConfigError(f"{what} {show(value)} has whitespace before ';' or '#', which "
                          "supervisord reads as a comment; rename it")
    return value.replace("%", "%%")


def ini_command(argv: list[str], what: str) -> str:
    """A `command=` value that supervisord's `shlex.split` turns back into `argv` exactly."""
    words = []
    for arg in argv:
        _ini_checked(arg, what)
        if _PLAIN_WORD.fullmatch(arg):
            words.append(arg)
            continue
        quoted = "'" + arg.replace("'", "'\"'\"'") + "'"
        # `'a ;b'` would be cut at ` ;` by configparser: `'a '';b'` is the same word to shlex.
        words.append(_COMMENT_AFTER_SPACE.sub(r"\1''\2", quoted))
    return " ".join(words).replace("%", "%%")


def ini_environment(pairs: dict[str, str], what: str) -> str:
    """An `environment=` value supervisord reads back as `pairs` exactly.

    Its parser (a non-POSIX shlex) has no escapes and strips quote characters from both ends
    of each value, so a value is wrapped in the quote it does not contain."""
    items = []
    for name, value in pairs.items():
        label = f"{what} ({name})"
        _ini_checked(value, label)
        quote = '"' if '"' not in value else "'"
        if quote in value or value[:1] in "\"'" or value[-1:] in "\"'" or not value:
            raise ConfigError(f"{label} {show(value)}: supervisord's environment= cannot "
                              "hold it (both quote characters, or one at an end); rename it")
        if _COMMENT_AFTER_SPACE.search(value):
            raise ConfigError(f"{label} {show(value)} has whitespace before ';' or '#', "
                              "which supervisord reads as a comment; rename it")
        items.append(f"{name}={quote}{value}{quote}")
    return ",".join(items).replace("%", "%%")
